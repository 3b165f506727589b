"""Converting songs: ``python -m ai_singer.infer songs=PATH singer=NAME [key=value ...]`` (Hydra,
``conf/infer.yaml``; = ``ai-singer convert``).

This module holds the conversion settings (built from the config and checked, every value and every sections
file of the batch, before any model loads: :func:`check_batch`) and the entry point. The work is done by

- :mod:`ai_singer.convert`: the :class:`Converter` (base + adapters -> converted vocal);
- :mod:`ai_singer.songs`: finding songs, per-song outputs written together, resuming, the batch report
  (:func:`run_batch`);
- :mod:`ai_singer.mix`: the rest gate, loudness match, remix and limiter.

Their public names are re-exported here (``from ai_singer.infer import Converter, ConvertSettings, ...``).
None of these modules imports the training code, the losses or the discriminator (a test checks it).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ai_singer.audio import AudioError, SliceConfig, audio_info
from ai_singer.bundle import locate_path
from ai_singer.convert import (CONTENT_SAMPLE_RATE, RANGE_MARGIN_SEMITONES, Converter, InferError, VocalConversion,
                               _Piece, auto_transpose_semitones, available_singers, prepare_f0, resolve_base_dir,
                               singer_dir, singers_listing)
from ai_singer.device import pick_device, widen_cpu_kernel_cache
from ai_singer.errors import UserError
from ai_singer.features.f0_settings import F0Settings
from ai_singer.features.pitch import SCALES, key_to_pitch_class
from ai_singer.mix import MixSettings, apply_rest_gate, rest_gate
from ai_singer.refine import RefineSettings
from ai_singer.sections import SectionsError, parse_sections
from ai_singer.singer_spec import parse_singer_spec
from ai_singer.songs import (LOUDNESS_TOLERANCE_DB, SONG_SECTIONS_FILES, VOCAL_STEM, BatchResult, Song, SongResult,
                             convert_song, find_songs, finished_song, read_song_folder, run_batch, sections_warnings,
                             song_resume_key, write_batch_report)
from ai_singer.values import as_bool, as_float, as_int, plain

__all__ = [  # the settings and entry point, and the names of convert/songs/mix that callers import from here
    "AudioError", "BatchResult", "CONTENT_SAMPLE_RATE", "ChunkSettings", "ConvertSettings", "Converter", "F0Settings",
    "InferError", "LOUDNESS_TOLERANCE_DB", "MAX_TRANSPOSE_SEMITONES", "PitchCorrectionSettings",
    "RANGE_MARGIN_SEMITONES", "SONG_SECTIONS_FILES", "SectionsError", "Song", "SongResult", "VOCAL_STEM",
    "VocalConversion", "_Piece", "apply_rest_gate", "auto_transpose_semitones", "available_singers", "check_batch",
    "convert_song", "find_songs", "finished_song", "limit_allocator_retention", "main", "prepare_f0",
    "read_song_folder", "resolve_base_dir", "rest_gate", "run_batch", "run_cli", "sections_warnings",
    "settings_from_config", "singer_dir", "song_resume_key", "write_batch_report",
]

log = logging.getLogger(__name__)

#: ``precision``: the SingerVAE's arithmetic during conversion.
PRECISIONS = ("auto", "fp32", "bf16_decoder", "bf16")
#: ``engine``: what runs the SingerVAE (:meth:`ai_singer.convert.Converter.onnx_singer`).
ENGINES = ("auto", "torch", "onnx")
#: ``decoder_layout``: how torch lays out the NSF-HiFiGAN decoder's upsampling stages
#: (:mod:`ai_singer.model.channels_last`).
DECODER_LAYOUTS = ("auto", "channels_last", "plain")
#: transpose beyond this many semitones (3 octaves) either way leaves the range of any voice: refused.
MAX_TRANSPOSE_SEMITONES = 36.0


# --------------------------------------------------------------------------------------------------
# Settings: the values live in conf/infer.yaml and conf/f0 only (settings_from_config builds them)
# --------------------------------------------------------------------------------------------------

@dataclass
class ChunkSettings:
    """How the vocal is cut, batched and joined (``chunk`` in ``conf/infer.yaml``). Seconds / dB.

    threshold_db:       a 10 ms frame quieter than this is silence (slicing and the rest gate).
    min_silence_s:      only silences at least this long split the vocal into pieces.
    max_silence_kept_s: silence kept at each side of a piece.
    max_length_s:       longer phrases are split at their quietest frame (bounds memory per piece).
    context_s:          audio converted on each side of a piece; joins crossfade over twice this.
    batch_size:         at most this many pieces per model call (padded to the longest) ..., or ``"auto"``:
                        ``auto_batch_size`` of the device type (:meth:`batch_size_for`).
    batch_seconds:      ... and at most this much padded audio per call: the model's activation memory
                        grows with it (on CPU roughly 20-40 MB per second of audio for small/base).
    decode_window_s:    the decoder runs over windows this long (+ its receptive field on each side: the same
                        audio); 0 = a whole piece at once; ``"auto"``: ``auto_decode_window_s`` of the device type
                        (of the engine for ``onnx``).
    auto_batch_size, auto_decode_window_s: what ``auto`` means per device type (keys ``cpu`` and ``cuda``;
                        another accelerator takes the ``cuda`` entry); ``auto_decode_window_s`` also has an ``onnx``
                        entry, for the ONNX Runtime engine (on the CPU).
    prior_frames_multiple: the prior encoder and flow run over each batch of pieces zero-padded (masked: the
                        same audio) to a multiple of this many frames, so a song's pieces share a few tensor
                        lengths and a CPU's conv library reuses its prepared kernels; 1 = no padding.
    piece_frames_multiple: each piece is converted over a multiple of this many frames: its window is extended
                        with the source's following audio (silence past the end), converted, and cut back, so the
                        decoder's windows (:func:`~ai_singer.model.decoder.decode_windows`, multiples of
                        :data:`~ai_singer.model.decoder.LAST_WINDOW_MULTIPLE` frames) take a few lengths over a song
                        and a CPU keeps one set of prepared kernels per length; 1 = the window as it is.
    gate_hold_s:        the rest gate opens this long before and closes this long after the source.
    gate_ramp_s:        length of the gate's linear fades.
    """

    threshold_db: float
    min_silence_s: float
    max_silence_kept_s: float
    max_length_s: float
    context_s: float
    batch_size: int | str
    batch_seconds: float
    decode_window_s: float | str
    auto_batch_size: dict[str, float]
    auto_decode_window_s: dict[str, float]
    prior_frames_multiple: int
    piece_frames_multiple: int
    gate_hold_s: float
    gate_ramp_s: float

    def __post_init__(self) -> None:
        for name, keys in (("auto_batch_size", {"cpu", "cuda"}), ("auto_decode_window_s", {"cpu", "cuda", "onnx"})):
            missing = sorted(keys - set(getattr(self, name)))
            if missing:
                raise ValueError(f"chunk.{name} needs an entry for {missing} (device types cpu and cuda"
                                 + (", the onnx engine)" if "onnx" in keys else ")"))
        if min(self.auto_batch_size.values()) < 1 or any(v != int(v) for v in self.auto_batch_size.values()):
            raise ValueError(f"chunk.auto_batch_size must hold whole numbers >= 1, got {self.auto_batch_size}")
        if min(self.auto_decode_window_s.values()) < 0:
            raise ValueError(f"chunk.auto_decode_window_s must be >= 0, got {self.auto_decode_window_s}")
        if self.batch_size != "auto":
            self.batch_size = as_int(self.batch_size, "chunk.batch_size", minimum=1)
        if self.decode_window_s != "auto":
            self.decode_window_s = as_float(self.decode_window_s, "chunk.decode_window_s", minimum=0.0)
        self.prior_frames_multiple = as_int(self.prior_frames_multiple, "chunk.prior_frames_multiple", minimum=1)
        self.piece_frames_multiple = as_int(self.piece_frames_multiple, "chunk.piece_frames_multiple", minimum=1)
        if self.context_s < 0 or self.gate_hold_s < 0 or self.gate_ramp_s < 0:
            raise ValueError("chunk.context_s, gate_hold_s and gate_ramp_s must be >= 0")

    def batch_size_for(self, device_type: str) -> int:
        """Pieces per model call on a device of this type (``"cpu"``, ``"cuda"``, ...)."""
        if self.batch_size == "auto":
            return int(self.auto_batch_size["cpu" if device_type == "cpu" else "cuda"])
        return int(self.batch_size)

    def decode_window_s_for(self, device_type: str, engine: str = "torch") -> float:
        """Seconds per decoder window on a device of this type (0 = whole pieces) with this engine (``torch`` or
        ``onnx``)."""
        if self.decode_window_s == "auto":
            key = "onnx" if engine == "onnx" else "cpu" if device_type == "cpu" else "cuda"
            return float(self.auto_decode_window_s[key])
        return float(self.decode_window_s)

    def slice_config(self) -> SliceConfig:
        """The slicer settings: nothing is dropped for being short (``min_length_s=0``)."""
        return SliceConfig(threshold_db=self.threshold_db, min_length_s=0.0, min_silence_s=self.min_silence_s,
                           max_silence_kept_s=self.max_silence_kept_s, hop_s=0.01, max_length_s=self.max_length_s)


@dataclass
class PitchCorrectionSettings:
    """Snap the (transposed) F0 toward ``key``/``scale`` by ``strength`` (0 = off, 1 = hard tune).
    The key is the key of the output, i.e. after transposition."""

    key: str
    scale: str
    strength: float

    def __post_init__(self) -> None:
        try:
            key_to_pitch_class(str(self.key))
        except ValueError:
            raise InferError(f"pitch_correction.key={self.key!r}", "not a key",
                             "use a note name A-G with an optional # or b, e.g. C, F#, Bb") from None
        if self.scale not in SCALES:
            raise InferError(f"pitch_correction.scale={self.scale!r}", "unknown scale",
                             f"use one of {', '.join(SCALES)}")
        if not 0.0 <= self.strength <= 1.0:
            raise InferError(f"pitch_correction.strength={self.strength:g}", "must be within 0..1 (0 = off)")


@dataclass
class ConvertSettings:
    """Everything that shapes one conversion (the non-path part of ``conf/infer.yaml``).

    transpose:           semitones (a number) or ``"auto"``: a multiple of ``auto_transpose_step`` (12 =
                         whole octaves, which keeps the song's key against its accompaniment; 1 =
                         semitones) chosen from the singer's F0 median and p05-p95 range (adapter stats)
                         and the source's median; medians within 3/4 of a step (9 semitones) are not
                         transposed (:func:`ai_singer.features.pitch.choose_transpose`); report.json's
                         ``transpose_auto`` records the decision and its reason.
    noise_scale:         sampling temperature of the prior (0 = deterministic).
    seed:                torch seed for the sampling noise (the same settings give the same output).
    retrieval_ratio:     0..1, how far each content frame moves toward the singer's own features (its
                         retrieval index, see :mod:`ai_singer.retrieval`); 0 = off.
    retrieval_neighbours: index entries averaged per frame.
    highpass_hz:         cutoff of the zero-phase high-pass (4th-order Butterworth, run forward and backward)
                         on the converted vocal: removes the DC offset and sub-sonic rumble the model can
                         produce (the bundled base put sub-40 Hz energy 25 dB above the source's); 0 = off.
    precision:           ``fp32``; ``bf16_decoder``: the decoder's residual-block convolutions in bfloat16, their
                         residual sums and the rest of the model in fp32 (most of the model's time; ~1.6x faster on
                         CPUs with AVX512-BF16 or AMX); ``bf16``: the whole SingerVAE under bfloat16 autocast (faster
                         still; the audio differs more); ``auto``: ``bf16_decoder`` where torch runs the model on
                         such a CPU, else ``fp32`` (:func:`ai_singer.convert.resolve_precision`). BENCHMARKS.md
                         measures them.
    engine:              ``torch``, ``onnx`` (the singer's ONNX export, ``ai-singer export``, run by ONNX Runtime on
                         the CPU; the same audio up to float rounding) or ``auto`` (the export when the singer has
                         a current one and the conversion runs fp32 on the CPU with ``decoder_layout=plain``, else
                         torch, whose channels-last decoder is the faster on a CPU).
    decoder_layout:      ``channels_last``: torch runs the NSF-HiFiGAN decoder's upsampling stages as 2-D convolutions
                         in channels-last memory format, the layout a CPU's convolution library computes in (the same
                         arithmetic and audio up to float rounding; ~2.6x faster decoder with ``bf16_decoder``, ~1.3x
                         with fp32, on the CPUs measured; :mod:`ai_singer.model.channels_last`); ``plain``: as
                         ``[B, C, T]`` 1-D convolutions; ``auto``: ``channels_last`` on a CPU, ``plain`` on a GPU.
                         Adapters that cannot be merged (e.g. ``peft=adapter``) and ``merge=False`` run ``plain``.
    refine:              each piece's latent moved toward the source's words by a Whisper encoder
                         (:class:`ai_singer.refine.RefineSettings`; ``steps: 0`` = off); torch engine only.
    """

    transpose: float | str
    auto_transpose_step: int
    noise_scale: float
    seed: int
    retrieval_ratio: float
    retrieval_neighbours: int
    highpass_hz: float
    precision: str
    engine: str
    decoder_layout: str
    f0: F0Settings
    pitch_correction: PitchCorrectionSettings
    chunk: ChunkSettings
    mix: MixSettings
    refine: RefineSettings

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.retrieval_ratio) <= 1.0:
            raise ValueError(f"retrieval_ratio must be within 0..1, got {self.retrieval_ratio}")
        if not 0.0 <= float(self.highpass_hz) < 1000.0:
            raise ValueError(f"highpass_hz must be within 0..1000 Hz (0 = off), got {self.highpass_hz}")
        if int(self.retrieval_neighbours) < 1:
            raise ValueError(f"retrieval_neighbours must be >= 1, got {self.retrieval_neighbours}")
        if self.transpose != "auto":
            try:
                self.transpose = as_float(self.transpose, "transpose")
            except UserError as error:
                raise InferError(error.where, f"{error.reason}; give semitones or 'auto'") from None
            if abs(self.transpose) > MAX_TRANSPOSE_SEMITONES:
                raise InferError(f"transpose={self.transpose:g}",
                                 f"more than {MAX_TRANSPOSE_SEMITONES:g} semitones (3 octaves) leaves the range of "
                                 "any voice", "give -12 or 12 for an octave, or transpose=auto")
        if self.noise_scale < 0:
            raise InferError(f"noise_scale={self.noise_scale:g}", "must be >= 0 (0 = deterministic)")
        if self.auto_transpose_step < 1:
            raise ValueError(f"auto_transpose_step must be >= 1, got {self.auto_transpose_step}")
        if self.precision not in PRECISIONS:
            raise InferError(f"precision={self.precision!r}", "unknown precision", f"use one of {', '.join(PRECISIONS)}")
        if self.engine not in ENGINES:
            raise InferError(f"engine={self.engine!r}", "unknown engine", f"use one of {', '.join(ENGINES)}")
        if self.refine.enabled and self.engine == "onnx":
            raise InferError(f"refine.steps={self.refine.steps} with engine=onnx",
                             "the refinement needs gradients through the torch model",
                             "use engine=torch (or auto), or refine.steps=0")
        # the refinement hears each piece (with its context on both sides) through Whisper's encoder, which
        # takes at most 30 s; leave a second for the piece's rounding up to chunk.piece_frames_multiple
        piece_s = self.chunk.max_length_s + 2 * (self.chunk.context_s + self.chunk.max_silence_kept_s)
        if self.refine.enabled and piece_s > 29.0:
            raise InferError(f"chunk.max_length_s={self.chunk.max_length_s:g} with refine.steps={self.refine.steps}",
                             f"pieces up to {piece_s:g} s with their context, and the refinement's Whisper encoder "
                             "hears at most 30 s", "use chunk.max_length_s<=28, or refine.steps=0")
        if self.decoder_layout not in DECODER_LAYOUTS:
            raise InferError(f"decoder_layout={self.decoder_layout!r}", "unknown decoder layout",
                             f"use one of {', '.join(DECODER_LAYOUTS)}")

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what was meant."""
        found = []
        correction = self.pitch_correction
        from ai_singer.config import conf_file

        as_written = conf_file("infer")["pitch_correction"]  # conf/'s key and scale: changed ones mean something
        if correction.strength == 0 and (correction.key, correction.scale) != (as_written["key"], as_written["scale"]):
            found.append(f"pitch_correction.key={correction.key} scale={correction.scale} is set but "
                         "pitch_correction.strength is 0, so no pitch correction is applied (set strength 0..1)")
        return found


def _build(cls, values: Mapping[str, Any] | None, group: str):
    """``cls(**values)`` recursively for nested dataclasses; an unknown or a missing key is an error naming
    the group (the values come from conf/, never from defaults in code)."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InferError(f"config {group}", f"unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    missing = sorted(set(fields) - set(values))
    if missing:
        raise InferError(f"config {group or 'infer'}", f"missing key(s) {missing}",
                         "conf/infer.yaml and conf/f0 hold every setting")
    kwargs = {}
    for name, value in values.items():
        key = f"{group}.{name}" if group else name
        if dataclasses.is_dataclass(types[name]) and isinstance(value, Mapping):
            value = _build(types[name], value, key)
        else:
            value = _typed(value, str(fields[name].type), key)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise InferError(f"config {group or 'infer'}", str(error)) from error


def _typed(value: Any, annotation: str, key: str) -> Any:
    """``value`` checked against a field's annotation (``float``, ``int``, ``bool``, ``str``, ``dict[str, float]``);
    other annotations pass through (their class checks them). A wrong type is an InferError naming ``key``."""
    try:
        if annotation == "float":
            return as_float(value, key)
        if annotation == "int":
            return as_int(value, key)
        if annotation == "bool":
            return as_bool(value, key)
        if annotation == "str":
            if isinstance(value, (Mapping, list, tuple)):
                raise UserError(f"{key}={value}", "expected a single value")
            return str(value)
        if annotation == "dict[str, float]":
            if not isinstance(value, Mapping):
                raise UserError(f"{key}={value}", "expected a mapping of names to numbers, e.g. {drums: -3}")
            return {str(k): as_float(v, f"{key}.{k}") for k, v in value.items()}
    except UserError as error:
        raise InferError(error.where, error.reason, error.fix) from None
    return value


def settings_from_config(cfg: Any) -> ConvertSettings:
    """The typed conversion settings from a composed ``conf/infer.yaml`` (typos are errors)."""
    values = {f.name: plain(cfg[f.name]) for f in dataclasses.fields(ConvertSettings) if f.name in cfg}
    return _build(ConvertSettings, values, "")


def check_batch(cfg: Any) -> tuple[ConvertSettings, list[Song], dict[str, list[str]]]:
    """Every setting of a composed ``conf/infer.yaml`` and every sections file of the batch, checked before
    anything loads: raises InferError / SectionsError / DeviceError (UserErrors: one line, exit 2) for the
    first mistake. Returns the settings, the songs and, by song name, warnings for its report.json (settings
    that do nothing, sections after the song's end); the batch-wide ones are also logged."""
    import soundfile as sf

    settings = settings_from_config(cfg)
    as_int(cfg.seed, "seed")
    as_bool(cfg.overwrite, "overwrite")
    as_bool(cfg.progress, "progress")
    file_format = {"wav": "WAV", "flac": "FLAC"}[settings.mix.format]
    if not sf.check_format(file_format, settings.mix.subtype):
        raise InferError(f"mix.subtype={settings.mix.subtype!r}", f"cannot be written as {settings.mix.format}",
                         "use PCM_16 or PCM_24 (wav and flac), or FLOAT (wav)")
    pick_device(str(cfg.device))
    if cfg.get("songs") in (None, "", "???"):
        raise InferError("songs", "set songs=PATH (a song folder, a folder of songs, or a vocal file)")
    paths = cfg.paths
    singer = cfg.get("singer") or None
    if singer is not None:
        try:
            names = parse_singer_spec(str(singer), "singer").names  # a name, or a blend alice:0.6,bob:0.4
        except UserError as error:
            raise InferError(error.where, error.reason, error.fix) from None
        for name in names:
            singer_dir(name, paths.singers)  # an unknown singer stops the batch before anything else
    songs = find_songs(str(locate_path(str(cfg.songs))))  # the user's, else a bundled example song
    if singer is None and not cfg.get("sections") and not any(song.sections for song in songs):
        raise InferError("singer", "set singer=<name>; available singers: "
                                   + singers_listing(paths.singers))
    batch_warnings = settings.warnings()
    for warning in batch_warnings:
        log.warning("%s", warning)
    song_warnings: dict[str, list[str]] = {}
    for song in songs:
        song_warnings[song.name] = list(batch_warnings)
        sections_file = Path(str(cfg.sections)) if cfg.get("sections") else song.sections
        if sections_file is None:
            continue
        sections = parse_sections(sections_file)
        for name in sorted({name for section in sections for name in parse_singer_spec(section.singer).names}):
            try:
                singer_dir(name, paths.singers)
            except InferError as error:
                raise InferError(f"{sections_file}", f"names singer {name!r}: {error.reason}") from None
        if song.vocal is not None and not song.problem:
            try:
                info = audio_info(song.vocal)
            except AudioError:  # an unreadable vocal fails that song only, when its turn comes
                continue
            song_warnings[song.name] += sections_warnings(sections, info.frames / info.sample_rate)
    return settings, songs, song_warnings


def run_cli(cfg: Any) -> int:
    """The command's body: run the batch, print the summary, return the exit code (0 all ok or already done,
    1 some songs failed). A user's mistake that stops everything is raised (a UserError:
    :func:`ai_singer.conf_dir.run_hydra_app` reports it, exit code 2)."""
    result = run_batch(cfg)
    print(result.summary())
    return result.exit_code


def limit_allocator_retention(threshold_bytes: int = 16 << 20) -> bool:
    """On glibc, serve allocations of ``threshold_bytes`` and more with mmap (returned to the system when
    freed) instead of letting the threshold grow: without this, glibc keeps the freed per-piece
    activations of the content encoder and the model, and a 10-minute song peaked at 2.9 GB instead of
    1.6 GB (BENCHMARKS.md, measured with a 1 MiB threshold and a tiny model). 16 MiB, not 1: every allocation
    served by mmap is page-faulted in afresh, and with model=base's decoder activations a 1 MiB threshold made a
    90 s vocal convert 1.7x slower (267k page faults a second) for no lower peak; at 16 MiB it costs ~5 %.
    Process-wide, so only the command-line entry calls it; skipped when ``MALLOC_MMAP_THRESHOLD_`` is set or
    the C library is not glibc. Returns whether it was applied."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold_bytes)))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def quote_singer_blend(argv: list[str]) -> list[str]:
    """``singer=alice:0.6,bob:0.4`` as Hydra reads it unambiguously (``singer='alice:0.6,bob:0.4'``): unquoted,
    Hydra takes the commas for a sweep and refuses. Left alone with ``-m``/``--multirun`` (a sweep over singers
    is then meant) and when already quoted or a list."""
    if any(arg in ("-m", "--multirun") for arg in argv):
        return list(argv)
    quoted = []
    for arg in argv:
        key, equals, value = arg.partition("=")
        if equals and key.lstrip("+~") == "singer" and "," in value and value[:1] not in ("'", '"', "["):
            arg = f"{key}='{value}'"
        quoted.append(arg)
    return quoted


def main() -> None:
    """``python -m ai_singer.infer songs=PATH singer=NAME [overrides]`` (Hydra)."""
    from ai_singer.conf_dir import run_hydra_app

    limit_allocator_retention()
    widen_cpu_kernel_cache()
    sys.argv[1:] = quote_singer_blend(sys.argv[1:])
    run_hydra_app("infer", run_cli)


if __name__ == "__main__":
    main()
