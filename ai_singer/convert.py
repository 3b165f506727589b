"""The Converter: one frozen base (+ its content encoder) and per-singer adapters turn a vocal into a singer's
voice (:meth:`Converter.convert_vocal`).

1. The mono vocal is sliced on silence (``chunk``); the pieces are split where the singer changes
   (``sections``). Everything outside the pieces is written as exact zeros.
2. Each piece is converted with ``chunk.context_s`` of neighbouring audio on both sides: resampled to the
   model rate and to 16 kHz, F0 (``f0`` group) + voiced mask + interpolation, transposition, pitch
   correction (``snap_to_scale``), content features aligned to the model frames, frame volume. Pieces run
   through the model in padded batches of ``chunk.batch_size`` (``auto``: one piece per call on a CPU,
   several on a GPU), the decoder over windows of ``chunk.decode_window_s`` (``auto``: 2 s on a CPU, where
   cache-sized tensors are faster; the same audio either way); only one batch of intermediates exists at
   a time (the whole song is held only as the source and the output at the source rate, plus one small F0
   array per piece). Each piece's sampling noise comes from its own generator, seeded by ``seed`` and the
   piece's position: a piece converts the same whatever the batching.
3. Pieces are overlap-added with linear crossfades over the context (abutting pieces, e.g. a long phrase
   split in two or a change of singer, blend over ``2 * context_s``), resampled back to the source rate.
4. A gate derived from the source keeps every rest silent (:func:`ai_singer.mix.apply_rest_gate`): where the
   source stays below ``chunk.threshold_db`` for longer than ``2 * chunk.gate_hold_s`` the output is exactly 0.

Singers share one base in memory: the base is loaded once; for each singer in turn a copy receives the
adapter, which is merged into its weights (zero inference overhead); the copy serves every following
song by the same singer and is dropped when another singer's is needed, so at most the base plus one
merged copy are resident whatever the number of singers.
The architecture always comes from the base artifact's own config.

Imports audio, features, model, adapters, blend, checkpoint, mix, retrieval and sections only — never the training
code, the losses or the discriminator (a test checks it). The settings (:class:`ai_singer.infer.ConvertSettings`)
are built and checked in :mod:`ai_singer.infer`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import torch

from ai_singer.audio import resample, slice_on_silence
from ai_singer.blend import blend_adapters
from ai_singer.device import DeviceError, computes_bfloat16_natively, pick_device
from ai_singer.errors import UserError
from ai_singer.features.content import align_to_frames, encode_audio
from ai_singer.features.pitch import choose_transpose, extract_f0, interpolate_unvoiced, snap_to_scale, transpose
from ai_singer.features.volume import frame_rms
from ai_singer.mix import apply_rest_gate, highpass
from ai_singer.model.decoder import round_up_to_multiple
from ai_singer.refine import LatentRefiner
from ai_singer.retrieval import blend
from ai_singer.sections import Section, assign_singers
from ai_singer.singer_spec import parse_singer_spec

if TYPE_CHECKING:
    from ai_singer.infer import ConvertSettings, PitchCorrectionSettings

log = logging.getLogger(__name__)

#: Content encoders run at this rate.
CONTENT_SAMPLE_RATE = 16000
#: A warning when the transposed source's p05-p95 range reaches this many semitones beyond the singer's.
RANGE_MARGIN_SEMITONES = 3.0


class InferError(UserError):
    """Bad input for conversion: ``str()`` is ``"{what}: {reason}"`` (``what``: a file, song or setting)."""

    def __init__(self, what: str | os.PathLike, reason: str, fix: str | None = None):
        self.what = str(what)
        super().__init__(what, reason, fix)


# --------------------------------------------------------------------------------------------------
# Artifacts: base, singers, content encoder
# --------------------------------------------------------------------------------------------------

def available_singers(singers_dir: str | os.PathLike) -> list[str]:
    """Names of the singer folders under ``singers_dir`` that hold an adapter artifact."""
    root = Path(singers_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "adapter.yaml").is_file())


def singers_listing(singers_dir: str | os.PathLike) -> str:
    """The singers a name can pick, for messages: ``alto, tenor; bundled: example`` (bundled ones that a
    singer of the user's shadows left out), or ``none (...)``."""
    from ai_singer.bundle import SINGERS, bundled

    own = available_singers(singers_dir)
    bundled_dir = bundled(SINGERS)
    extra = [name for name in available_singers(bundled_dir) if name not in own] if bundled_dir is not None else []
    if bundled_dir is not None and bundled_dir.resolve() == Path(singers_dir).absolute().resolve():
        extra = []
    parts = ([", ".join(own)] if own else []) + ([f"bundled: {', '.join(extra)}"] if extra else [])
    return "; ".join(parts) or f"none (no adapter.yaml under {Path(singers_dir)}/*/)"


def singer_dir(name: str, singers_dir: str | os.PathLike) -> Path:
    """The adapter folder of singer ``name``: ``<singers_dir>/<name>``, else the bundled ``singers/<name>``
    (:mod:`ai_singer.bundle`); InferError listing the singers that exist when neither holds an adapter."""
    from ai_singer.atomic import restore_set_aside
    from ai_singer.bundle import SINGERS, locate, lookup_order

    restore_set_aside(Path(singers_dir) / name)  # an export killed in the middle of its swap: the old one back
    folder = locate(name, singers_dir, SINGERS, accept=lambda path: (path / "adapter.yaml").is_file())
    if folder is None:
        tried = " or ".join(str(path) for path in lookup_order(name, singers_dir, SINGERS))
        raise InferError(f"singer {name!r}", f"unknown singer: no adapter at {tried}. "
                                             f"Available singers: {singers_listing(singers_dir)}")
    return folder


def resolve_base_dir(base: str | None, adapter_base_name: str | None, pretrain_dir: str | os.PathLike) -> Path:
    """The base artifact folder: ``base`` (a path, or a name under ``pretrain_dir``) or else the base the
    adapter names; each the user's first, then the bundled copy (:mod:`ai_singer.bundle`). Raises InferError
    when it is missing."""
    from ai_singer.bundle import PRETRAIN, lookup_order

    name = base or adapter_base_name
    if not name:
        raise InferError("base", "no base given and the adapter does not name one: set base=<name or folder>")
    candidates: list[Path] = []
    for path in lookup_order(name) + lookup_order(name, pretrain_dir, PRETRAIN):
        if path not in candidates:
            candidates.append(path)
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise InferError(f"base {name!r}", f"no base artifact (config.yaml + generator.safetensors) at "
                                       f"{' or '.join(str(c) for c in candidates)}")


def load_base_model(base_dir: Path) -> tuple[Any, Any]:
    """The base artifact of ``base_dir`` and its generator (a SingerVAE built from the base's own config, loaded
    strictly, weight norm removed, in eval mode, on the CPU); InferError when it cannot be loaded. The artifact's
    ``generator_state`` is emptied (the weights live in the model)."""
    from ai_singer import checkpoint
    from ai_singer.model import SingerVAE, SingerVAEConfig

    try:
        base = checkpoint.load_base(base_dir)
        model = SingerVAE(SingerVAEConfig.from_dict(base.model_config))  # the architecture of the base itself
        checkpoint.load_state_strict(model, base.generator_state, base_dir / checkpoint.BASE_GENERATOR_FILE)
    except (checkpoint.ArtifactError, ValueError, TypeError) as error:
        raise InferError(base_dir, f"cannot load the base: {error}") from error
    model.remove_weight_norm()
    base.generator_state = {}
    return base, model.eval()


def with_adapter(model: torch.nn.Module, adapter: Any, merge: bool = True) -> torch.nn.Module:
    """A copy of the base ``model`` carrying ``adapter`` (an AdapterArtifact), merged into the weights unless
    ``merge`` is False; InferError when the adapter does not fit the base."""
    from ai_singer import adapters

    model = copy.deepcopy(model)
    peft = adapter.config.get("peft") or {"method": adapter.method}
    try:
        adapters.load_adapter_state(model, peft, adapter.tensors)
    except ValueError as error:
        raise InferError(adapter.path, f"adapter does not fit the base: {error}") from error
    if merge:
        adapters.merge_adapters(model)
    return model


def resolve_precision(precision: str, device: torch.device, engine: str) -> str:
    """The ``precision`` setting as the model runs it: ``auto`` is ``bf16_decoder`` where torch runs the model on a
    CPU that computes bfloat16 natively (:func:`~ai_singer.device.computes_bfloat16_natively`; not with
    ``engine=onnx``, which runs fp32), else ``fp32``; other values as given."""
    if precision != "auto":
        return precision
    return "bf16_decoder" if engine != "onnx" and computes_bfloat16_natively(device) else "fp32"


def auto_transpose_semitones(singer_median_hz: float, source_median_hz: float, step: int = 12) -> float:
    """The medians-only form of :func:`ai_singer.features.pitch.choose_transpose` (no range check)."""
    return choose_transpose(np.array([source_median_hz]), singer_median_hz, step=step).semitones


def prepare_f0(f0_raw: np.ndarray, semitones: float, correction: PitchCorrectionSettings
               ) -> tuple[np.ndarray, np.ndarray]:
    """The model's F0 inputs from raw extractor output ``[n]`` (Hz, 0 = unvoiced): gaps interpolated,
    transposed, then pulled toward the scale. Returns (f0 float32 [n], voiced bool [n])."""
    filled, voiced = interpolate_unvoiced(f0_raw)
    shifted = transpose(filled, semitones)
    if correction.strength > 0:
        shifted = snap_to_scale(shifted, correction.key, correction.scale, correction.strength)
    return np.asarray(shifted, dtype=np.float32), voiced


@dataclass
class _Piece:
    """One chunk of the vocal: core ``[start, end)`` and converted window ``[window_start, window_end)``
    in source samples; the model converts ``[window_start, model_end)`` (``model_end`` >= ``window_end``: the
    window extended to a multiple of ``chunk.piece_frames_multiple`` frames), ``n_frames`` model frames, of which
    the window's are kept; ``f0_raw`` from the first pass."""

    start: int
    end: int
    singer: str
    window_start: int
    window_end: int
    model_end: int = 0
    n_frames: int = 0
    f0_raw: np.ndarray | None = None
    #: the source window ``[window_start, model_end)`` at 16 kHz, kept while the piece converts with ``refine``
    source16k: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.model_end = max(self.model_end, self.window_end)


@dataclass
class VocalConversion:
    """The converted vocal (float32 ``[samples]`` at the source rate) and what was done."""

    audio: np.ndarray
    sample_rate: int
    pieces: int
    transpose: dict[str, float]
    source_f0_median_hz: float | None
    timings: dict[str, float]
    warnings: list[str]
    #: per singer, how transpose=auto decided (TransposeDecision fields); empty for a fixed transpose
    transpose_decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per singer, what ran the model: ``torch`` or ``onnx`` (the ``engine`` setting)
    engines: dict[str, str] = field(default_factory=dict)
    #: with ``refine``: pieces refined and the mean Whisper L1 to the source before / after (:mod:`ai_singer.refine`);
    #: with a voice print also the mean L1 of the pieces' average state to it (``speaker_l1_before`` / ``_after``)
    refine: dict[str, float] | None = None


class Converter:
    """A loaded base (+ content encoder) that converts vocals for any of its singers.

    Args:
        base_dir: the base artifact folder (``pretrain/<name>/``).
        content: the ``content`` config group: ``name``, ``path``, ``layer``, ``final_proj``, ``device``;
            ``None`` values (``conf/content/from_base.yaml``) or a ``None`` group take the settings the base
            records; given values are checked against the base (InferError on a mismatch).
        settings: conversion settings.
        singers_dir: where ``<name>/adapter.{yaml,safetensors}`` live.
        device: ``auto``, ``cpu``, ``cuda``...
        merge: merge adapters into a copy of the base (default) or run them unmerged (for comparison).
    """

    def __init__(self, base_dir: str | os.PathLike, content: Mapping[str, Any] | None, settings: ConvertSettings,
                 singers_dir: str | os.PathLike, device: str = "auto", merge: bool = True,
                 content_encoder: Any | None = None):
        self.settings = settings
        self.singers_dir = Path(singers_dir)
        try:
            self.device = pick_device(device)
        except DeviceError as error:
            raise InferError(error.where, error.reason) from error
        self.merge = merge
        #: the precision the model runs at (``precision`` with ``auto`` resolved for this device and engine)
        self.precision = resolve_precision(settings.precision, self.device, settings.engine)
        self.base_dir = Path(base_dir)
        self.base, model = load_base_model(self.base_dir)
        config = model.config
        self.model = model.to(self.device).eval()
        self.sample_rate, self.hop = int(config.sample_rate), int(config.hop_length)
        self._adapters: dict[str, Any] = {}
        self._indexes: dict[str, torch.Tensor | None] = {}
        self._voice_prints: dict[str, torch.Tensor | None] = {}
        self._voice_print_problems: dict[str, str] = {}
        #: the last singer's model (name, model, g, its decoder's prepared upsampling stages or None): songs in a
        #: row by one singer reuse it
        self._singer_cache: tuple[str, torch.nn.Module, torch.Tensor, Any] | None = None
        #: the last singer's ONNX export (name, OnnxSinger or None when that singer converts with torch)
        self._onnx_cache: tuple[str, Any] | None = None
        if content_encoder is None:
            content_encoder = self._load_content_encoder(content)
        else:
            self._check_content_settings(dict(content or {}), content_encoder)
        if int(content_encoder.dim) != int(config.content_dim):
            raise InferError(f"content encoder {content_encoder.name!r} at {getattr(content_encoder, 'path', '?')}",
                             f"gives {content_encoder.dim}-dim features but the base {self.base_dir} expects "
                             f"{config.content_dim}; use the encoder folder/layer/final_proj the base was trained with")
        self.content_encoder = content_encoder
        #: the refinement toward the source's words (``refine.steps`` > 0), else None
        self.refiner = LatentRefiner(settings.refine, self.sample_rate) if settings.refine.enabled else None
        if self.refiner is not None:
            self.refiner.words  # noqa: B018 - load now: a missing encoder fails before any song is read
        self._refine_stats: list[dict[str, float]] = []

    # ---------------------------------------------------------------------------- content encoder
    def _recorded_encoder(self) -> dict:
        """The base's ``content_encoder`` record (``None`` values = not recorded, e.g. an older base)."""
        from ai_singer.features.content import normalize_encoder_record

        return normalize_encoder_record(self.base.config.get("content_encoder") or {})

    def _check_content_settings(self, content: dict, encoder: Any = None) -> None:
        """Settings given explicitly (``content=<group>``, ``content.layer=...``) or the encoder built from
        them must be the encoder the base was trained with: name, dim, layer and final_proj are compared
        where both sides are known (the dim against the base's model right after loading)."""
        from ai_singer.features.content import describe_encoder, encoder_mismatches

        given = {key: content.get(key) for key in ("name", "layer", "final_proj")}
        if encoder is not None:
            given = {**{k: v for k, v in describe_encoder(encoder).items() if v is not None},
                     **{k: v for k, v in given.items() if v is not None}}
        recorded = self._recorded_encoder()
        mismatches = encoder_mismatches(recorded, given, keys=("name", "layer", "final_proj"))  # dim: checked after
        if mismatches:
            shown = ", ".join(f"{key}={value}" for key, value in recorded.items() if value is not None)
            raise InferError(f"content encoder {given.get('name') or recorded['name']!r}",
                             f"differs from the one the base {self.base_dir} was trained with (base vs given: "
                             f"{', '.join(mismatches)}); the base records {shown}. Leave content at its default "
                             f"(from_base) to use it, or select a matching group / content.layer=...")

    def _load_content_encoder(self, content: Mapping[str, Any] | None):
        """Build the content encoder: the base's recorded settings, each replaced by a value given in
        ``content`` (a ``conf/content`` group; ``None`` values mean "as recorded") after checking it."""
        from ai_singer.features.content import ContentEncoderMissing, load_content_encoder

        content = {key: value for key, value in dict(content or {}).items() if value is not None}
        self._check_content_settings(content)
        recorded = self._recorded_encoder()
        name = content.pop("name", None) or recorded["name"]
        path = content.pop("path", None)
        from_base = path is None
        if from_base:
            path = recorded["path"]
        if not name or not path:
            raise InferError(f"base {self.base_dir}", "its config.yaml does not record the content encoder's "
                             + ("name" if not name else "path") + " (made by an older version); select the encoder "
                             "it was trained with: content=<group> (e.g. content=hubert content.path=DIR)")
        for key in ("layer", "final_proj"):
            if key not in content and recorded[key] is not None:
                content[key] = recorded[key]
        try:
            return load_content_encoder(str(name), path, **content)
        except ContentEncoderMissing as error:
            if not from_base:
                raise
            raise ContentEncoderMissing(error.path, f"{error.reason}; the base {self.base_dir} was trained with "
                                        f"this content encoder (content_encoder.path in its config.yaml, relative "
                                        f"to the working directory {Path.cwd()}, else to the bundled files); run "
                                        f"from the folder it was trained in or set content.path=DIR",
                                        hint=error.hint) from error

    # ---------------------------------------------------------------------------------- singers
    def adapter(self, name: str):
        """The adapter artifact of ``name`` (cached), checked against this base. ``name`` may be a blend,
        ``alice:0.6,bob:0.4`` (:mod:`ai_singer.singer_spec`): the parents' adapters blended in memory
        (:func:`ai_singer.blend.blend_adapters`; InferError when they cannot be blended exactly)."""
        spec = parse_singer_spec(name, "singer")
        if spec.is_blend:
            if name not in self._adapters:
                parents = [self.adapter(parent) for parent in spec.names]
                self._adapters[name] = blend_adapters(parents, spec.weights, spec.names, where=f"singer={name!r}")
            return self._adapters[name]
        if spec.names[0] != name:  # "alice:1"
            return self.adapter(spec.names[0])
        if name not in self._adapters:
            from ai_singer import checkpoint

            folder = singer_dir(name, self.singers_dir)
            try:
                adapter = checkpoint.load_adapter(folder)
                checkpoint.check_adapter_base(adapter, self.base)
            except checkpoint.AdapterBaseMismatch as error:
                raise InferError(f"singer {name!r}", f"adapter for another base: {error}") from error
            except checkpoint.ArtifactError as error:
                raise InferError(f"singer {name!r}", f"cannot load the adapter: {error}") from error
            if "singer_embedding" not in adapter.tensors:
                raise InferError(folder, "adapter.safetensors has no singer_embedding")
            self._adapters[name] = adapter
        return self._adapters[name]

    def voice_print(self, name: str) -> torch.Tensor | None:
        """``name``'s voice print [width] for the refinement (:mod:`ai_singer.voice_print`; a blend's is the weighted
        mean of its parents'), cached; None when ``refine.speaker_weight`` is 0, or when the singer has none or one
        taken with another encoder than ``refine.encoder`` (the reason is kept for the song's warnings)."""
        if name in self._voice_prints:
            return self._voice_prints[name]
        settings = self.settings.refine
        found = None
        if float(settings.speaker_weight) > 0:
            from ai_singer.voice_print import parent_prints

            spec = parse_singer_spec(name, "singer")
            try:
                prints = parent_prints([self.adapter(parent).path for parent in spec.names], spec.names, spec.weights)
            except ValueError as error:
                raise InferError(f"singer {name!r}", str(error),
                                 "fine-tune the singer again, or take its voice print again "
                                 "(ai-singer voice-print NAME --data DATASET)") from error
            if prints.missing:
                self._voice_print_problems[name] = (
                    f"refine.speaker_weight={settings.speaker_weight:g}: singer "
                    f"{', '.join(repr(m) for m in prints.missing)} has no voice print (fine-tuned before singers kept "
                    "one); refined toward the source's words only (ai-singer voice-print NAME --data DATASET takes one)")
            elif prints.encoders != [settings.encoder]:
                self._voice_print_problems[name] = (
                    f"refine.speaker_weight={settings.speaker_weight:g}: singer {name!r} has a voice print taken with "
                    f"{', '.join(e for e in prints.encoders if e != settings.encoder)}, not with refine.encoder="
                    f"{settings.encoder}; refined toward the source's words only (ai-singer voice-print NAME --data "
                    "DATASET takes one again)")
            else:
                found = prints.blended.mean
        self._voice_prints[name] = found
        return found

    def retrieval_index(self, name: str) -> torch.Tensor | None:
        """``name``'s retrieval index ``[K, D]`` (cached), or None when the singer has none."""
        if name not in self._indexes and "blend" in self.adapter(name).config:
            self._indexes[name] = None  # a blend has no features of its own to retrieve
        if name not in self._indexes:
            from ai_singer import retrieval

            try:
                index = retrieval.load_index(self.adapter(name).path)
            except ValueError as error:
                raise InferError(f"singer {name!r}", str(error)) from error
            if index is not None and index.shape[1] != self.content_encoder.dim:
                raise InferError(f"singer {name!r}", f"retrieval index has {index.shape[1]}-dim features, the "
                                                     f"content encoder gives {self.content_encoder.dim}")
            self._indexes[name] = index
        return self._indexes[name]

    @contextlib.contextmanager
    def singer_model(self, name: str) -> Iterator[tuple[torch.nn.Module, torch.Tensor]]:
        """A model carrying ``name``'s adapter and that singer's vector ``g [1, gin]``.

        A copy of the base receives the adapter (merged into the weights unless ``merge=False``). That copy
        is kept for the next song by the same singer and dropped before another singer's copy is made, so
        at most one singer's copy is alive at a time."""
        if self._singer_cache is not None and self._singer_cache[0] == name:
            yield self._singer_cache[1], self._singer_cache[2]
            return
        self._singer_cache = None  # free the previous singer's copy before making the next
        adapter = self.adapter(name)
        model = with_adapter(self.model, adapter, self.merge).to(self.device).eval()
        g = adapter.tensors["singer_embedding"].to(self.device, torch.float32).reshape(1, -1)
        self._singer_cache = (name, model, g, self._prepare_decoder_stages(model))
        yield model, g

    def decoder_layout(self) -> str:
        """``decoder_layout`` as torch runs it: ``auto`` is ``channels_last`` on a CPU, ``plain`` elsewhere."""
        layout = self.settings.decoder_layout
        if layout == "auto":
            return "channels_last" if self.device.type == "cpu" else "plain"
        return layout

    def _prepare_decoder_stages(self, model: torch.nn.Module) -> Any:
        """The singer model's decoder stages in channels-last layout (:mod:`ai_singer.model.channels_last`) when
        :meth:`decoder_layout` asks for it and the decoder allows it (an NSF-HiFiGAN decoder whose adapters are
        merged), else None (the decoder's own stages run)."""
        if self.decoder_layout() != "channels_last" or self.precision == "bf16":
            return None  # bf16 runs the whole model under autocast, which the prepared stages do not follow
        from ai_singer.model.channels_last import ChannelsLastUpsampling

        block_dtype = torch.bfloat16 if self.precision == "bf16_decoder" else None
        return ChannelsLastUpsampling.prepare(model.decoder, block_dtype)

    @contextlib.contextmanager
    def singer_runner(self, name: str) -> Iterator[Callable[..., np.ndarray]]:
        """What runs the model for singer ``name``: ``run(inputs, pieces, window_frames) -> wav`` float32
        [B, L] (L >= each piece's ``n_frames * hop``), ``inputs`` one (content [T, D], f0, voiced, volume [T]) per
        piece. The ONNX export when ``engine`` selects it (:meth:`onnx_singer`), else the torch model of
        :meth:`singer_model`."""
        onnx = self.onnx_singer(name)
        if onnx is not None:
            yield lambda inputs, pieces, window_frames: self._run_onnx(onnx, inputs, pieces, window_frames)
            return
        voice_print = self.voice_print(name) if self.refiner is not None else None
        with self.singer_model(name) as (model, g):
            stages = self._singer_cache[3]  # singer_model keeps (name, model, g, stages) while it is in use
            yield lambda inputs, pieces, window_frames: self._run_torch(model, g, inputs, pieces, window_frames,
                                                                        stages, voice_print)

    def _run_torch(self, model: torch.nn.Module, g: torch.Tensor, inputs: list[tuple[np.ndarray, ...]],
                   batch: list[_Piece], window_frames: int, decoder_stages: Any = None,
                   voice_print: torch.Tensor | None = None) -> np.ndarray:
        """The pieces padded into one batch through the torch model (see :meth:`singer_runner`); ``decoder_stages``:
        its decoder's prepared upsampling stages (see :meth:`_prepare_decoder_stages`) or None; ``voice_print``: the
        singer's, for the refinement (:meth:`voice_print`)."""
        longest = max(p.n_frames for p in batch)
        size, dim = len(batch), inputs[0][0].shape[1]
        content_t = torch.zeros(size, dim, longest)
        f0_t, voiced_t, volume_t = (torch.zeros(size, longest) for _ in range(3))
        for row, (content, f0, voiced, volume) in enumerate(inputs):
            n = content.shape[0]
            content_t[row, :, :n] = torch.from_numpy(np.ascontiguousarray(content.T, dtype=np.float32))
            f0_t[row, :n] = torch.from_numpy(f0)
            voiced_t[row, :n] = torch.from_numpy(voiced.astype(np.float32))
            volume_t[row, :n] = torch.from_numpy(volume)
        if self.refiner is not None:
            return self._run_refined(model, g, (content_t, f0_t, voiced_t, volume_t), batch, voice_print)
        lengths = torch.tensor([p.n_frames for p in batch], dtype=torch.long)
        device = self.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            wav = model.infer(content_t.to(device), f0_t.to(device), voiced_t.to(device), volume_t.to(device),
                              g.expand(size, -1), lengths=lengths.to(device), noise_scale=self.settings.noise_scale,
                              generator=[self.piece_generator(piece) for piece in batch],
                              decode_window_frames=window_frames,
                              prior_frames_multiple=self.settings.chunk.prior_frames_multiple,
                              decoder_block_dtype=torch.bfloat16 if self.precision == "bf16_decoder" else None,
                              decoder_stages=decoder_stages)
        return wav.float().cpu().numpy()[:, 0]

    def _run_refined(self, model: torch.nn.Module, g: torch.Tensor, padded: tuple[torch.Tensor, ...],
                     batch: list[_Piece], voice_print: torch.Tensor | None = None) -> np.ndarray:
        """The pieces one at a time through :class:`~ai_singer.refine.LatentRefiner` (fp32, the torch model);
        ``padded``: (content [B, D, T], f0, voiced, volume [B, T]) as :meth:`_run_torch` batches them;
        ``voice_print``: the singer's mean encoder state [width] or None."""
        wav = np.zeros((len(batch), max(p.n_frames for p in batch) * self.hop), dtype=np.float32)
        for row, piece in enumerate(batch):
            n = piece.n_frames
            content, f0, voiced, volume = (x[row: row + 1, ..., :n].to(self.device) for x in padded)
            audio, stats = self.refiner.convert(model, content, f0, voiced, volume, g.reshape(1, -1).to(self.device),
                                                piece.source16k, self.piece_generator(piece),
                                                self.settings.noise_scale, voice_print)
            self._refine_stats.append(stats)
            wav[row, : n * self.hop] = audio.float().cpu().numpy()[0, 0, : n * self.hop]
        return wav

    def _run_onnx(self, onnx: Any, inputs: list[tuple[np.ndarray, ...]], batch: list[_Piece],
                  window_frames: int) -> np.ndarray:
        """The pieces one by one through the ONNX export (see :meth:`singer_runner`)."""
        wav = np.zeros((len(batch), max(p.n_frames for p in batch) * self.hop), dtype=np.float32)
        for row, (piece, (content, f0, voiced, volume)) in enumerate(zip(batch, inputs)):
            wav[row, : piece.n_frames * self.hop] = onnx.convert(
                content.T, f0, voiced.astype(np.float32), volume, self.settings.noise_scale,
                self.piece_generator(piece), window_frames)
        return wav

    def onnx_singer(self, name: str) -> Any:
        """Singer ``name``'s ONNX export (an :class:`ai_singer.onnx_singer.OnnxSinger`, cached for the next song)
        when ``engine`` selects it, else None. ``auto``: the export when one fits (fp32 on the CPU with
        ``decoder_layout=plain``, adapters merged, made from this base and the singer's current adapter), else torch
        (whose channels-last decoder is the faster on a CPU: BENCHMARKS.md); ``onnx``: the export, InferError naming
        the fix when none fits; ``torch``: None."""
        if self._onnx_cache is not None and self._onnx_cache[0] == name:
            return self._onnx_cache[1]
        self._onnx_cache = None
        engine = self.settings.engine
        if engine == "torch":
            return None
        from ai_singer import onnx_singer

        problem, fix, folder = None, "or engine=torch", None
        if self.refiner is not None:
            problem = "refine runs with torch only"
        elif self.device.type != "cpu":
            problem = f"ONNX Runtime runs on the CPU here, the device is {self.device}"
        elif self.precision != "fp32":
            problem = f"precision={self.precision} runs with torch only" + (
                " (precision=auto chose it: faster on this CPU than the fp32 export; precision=fp32 uses the export)"
                if self.settings.precision == "auto" else "")
        elif engine == "auto" and self.decoder_layout() == "channels_last":
            problem = ("decoder_layout=channels_last: torch is faster on the CPU than the fp32 export "
                       "(decoder_layout=plain or engine=onnx uses the export)")
        elif not self.merge:
            problem = "unmerged adapters run with torch only"
        elif parse_singer_spec(name).is_blend:
            problem, fix = "a blend has no export", f"save it as a singer (ai-singer blend {name} out=NAME), export " \
                                                     "that (ai-singer export singer=NAME), or use engine=torch"
        else:
            folder = singer_dir(parse_singer_spec(name).names[0], self.singers_dir) / onnx_singer.EXPORT_DIR
            fix = f"make one with `ai-singer export singer={name}`, or use engine=torch"
            try:
                problem = onnx_singer.stale_reason(onnx_singer.read_export(folder), self.base.sha256,
                                                   self.adapter(name).tensors_sha256())
            except onnx_singer.OnnxExportError as error:
                problem = error.reason
        if problem is None:
            runner = onnx_singer.OnnxSinger(folder)
        elif engine == "onnx":
            raise InferError(f"engine=onnx for singer {name!r}", f"cannot run: {problem}"
                             + (f" ({folder})" if folder is not None else ""), fix)
        else:
            log.info("engine=auto: singer %s converts with torch (%s)", name, problem)
            runner = None
        self._onnx_cache = (name, runner)
        return runner

    def singer_f0_median(self, name: str) -> float | None:
        stats = self.adapter(name).config.get("stats") or {}
        value = stats.get("f0_median_hz")
        return float(value) if value else None

    def singer_f0_range(self, name: str) -> tuple[float, float] | None:
        """The singer's p05-p95 F0 range (Hz) from its adapter stats, or None when not recorded."""
        stats = self.adapter(name).config.get("stats") or {}
        low, high = stats.get("f0_p05_hz"), stats.get("f0_p95_hz")
        return (float(low), float(high)) if low and high else None

    # ---------------------------------------------------------------------------------- convert
    def _model_end(self, window_start: int, window_end: int, n_samples: int, sr: int) -> int:
        """Where the model's input for the window ``[window_start, window_end)`` (source samples at ``sr``) ends:
        the window extended to a multiple of ``chunk.piece_frames_multiple`` model frames, at most to the end of
        the vocal (:meth:`_window_model_audio` pads the rest with silence)."""
        multiple = self.settings.chunk.piece_frames_multiple
        frames = round_up_to_multiple(max(1, math.ceil((window_end - window_start) * self.sample_rate / sr / self.hop)),
                                      multiple)
        return min(n_samples, max(window_end, window_start + math.ceil(frames * self.hop * sr / self.sample_rate)))

    def _window_model_audio(self, mono: np.ndarray, sr: int, piece: _Piece) -> np.ndarray:
        """The model's input for the piece, ``mono[window_start:model_end]`` at the model rate, zero-padded to
        ``n_frames * hop`` samples (``n_frames``: a multiple of ``chunk.piece_frames_multiple``)."""
        window = resample(mono[piece.window_start: piece.model_end], sr, self.sample_rate)
        multiple = self.settings.chunk.piece_frames_multiple
        n_frames = round_up_to_multiple(max(1, math.ceil(window.shape[0] / self.hop)), multiple)
        piece.n_frames = n_frames
        return np.pad(window, (0, n_frames * self.hop - window.shape[0]))

    def convert_vocal(self, mono: np.ndarray, sr: int, singer: str | None, sections: list[Section] | None = None,
                      progress: Callable[[int], Any] | None = None, on_plan: Callable[[int], Any] | None = None,
                      on_stage: Callable[[str, int], Any] | None = None
                      ) -> VocalConversion:
        """Convert a mono vocal (float32 ``[samples]`` at ``sr``) to ``singer`` (or per ``sections``).

        Returns the converted vocal, float32 ``[samples]`` with the same length and rate, exactly 0 in the
        rests and wherever no singer is assigned. ``on_plan(n_pieces)`` is called once the vocal is cut and
        ``progress(n)`` after each batch (for progress bars). With ``on_stage``, both passes report:
        ``on_stage("F0", n_pieces)`` before the F0 of every piece is extracted (``progress(1)`` after each
        piece: minutes for a long song) and ``on_stage("convert", n_pieces)`` before the model runs.
        """
        settings, chunk = self.settings, self.settings.chunk
        timings: dict[str, float] = {}
        warnings: list[str] = []
        self._refine_stats = []
        n_samples = mono.shape[0]
        started = time.perf_counter()

        ranges = slice_on_silence(mono, sr, chunk.slice_config())
        plan = assign_singers(ranges, sr, sections, singer)
        if any(s is None for _, _, s in plan):
            warnings.append("parts of the vocal have no singer (not in the sections file and no default "
                            "singer=): they are left silent")
        context = int(round(chunk.context_s * sr))
        min_window = max(int(0.05 * sr), 2 * math.ceil(self.hop * sr / self.sample_rate))
        pieces: list[_Piece] = []
        for start, end, name in plan:
            if name is None:
                continue
            window_start, window_end = max(0, start - context), min(n_samples, end + context)
            if window_end - window_start < min_window:
                warnings.append(f"a {1000 * (end - start) / sr:.0f} ms sound at {start / sr:.2f} s is too short to "
                                "convert and is left silent")
                continue
            pieces.append(_Piece(start, end, name, window_start, window_end,
                                 self._model_end(window_start, window_end, n_samples, sr)))
        for name in sorted({p.singer for p in pieces}):
            self.adapter(name)  # unknown singer / wrong base: fail before the slow part
            if settings.engine == "onnx":
                self.onnx_singer(name)  # no usable export: likewise
        timings["slice_s"] = time.perf_counter() - started
        if on_plan:
            on_plan(len(pieces))

        # Pass 1: F0 of every piece (small arrays), for the source median and later the model.
        started = time.perf_counter()
        if on_stage:
            on_stage("F0", len(pieces))
        for piece in pieces:
            audio = self._window_model_audio(mono, sr, piece)
            piece.f0_raw = extract_f0(audio, self.sample_rate, self.hop, piece.n_frames, settings.f0)
            if on_stage and progress:
                progress(1)
        voiced_f0 = [p.f0_raw[p.f0_raw > 0] for p in pieces]
        voiced_f0 = np.concatenate(voiced_f0) if voiced_f0 else np.zeros(0)
        source_median = float(np.median(voiced_f0)) if voiced_f0.size else None
        timings["f0_s"] = time.perf_counter() - started

        semitones: dict[str, float] = {}
        decisions: dict[str, dict[str, Any]] = {}
        for name in sorted({p.singer for p in pieces}):
            if settings.transpose == "auto":
                singer_median = self.singer_f0_median(name)
                if singer_median is None:
                    raise InferError(f"singer {name!r}", "transpose=auto needs the adapter's stats.f0_median_hz, "
                                                         "which this adapter lacks; give transpose in semitones")
                if source_median is None:
                    warnings.append("transpose=auto: the source has no voiced frames; not transposed")
                decision = choose_transpose(voiced_f0, singer_median, self.singer_f0_range(name),
                                            settings.auto_transpose_step)
                semitones[name] = decision.semitones
                decisions[name] = dataclasses.asdict(decision)
                log.info("transpose=auto for singer %s: %+g semitones (%s)", name, decision.semitones, decision.reason)
            else:
                semitones[name] = float(settings.transpose)
            warning = self._range_warning(name, [p for p in pieces if p.singer == name], semitones[name])
            if warning:
                warnings.append(warning)

        # Pass 2: content + model, singer by singer, batch by batch; overlap-add into the output.
        output = np.zeros(n_samples, dtype=np.float32)
        weight_sum = np.zeros(n_samples, dtype=np.float32)
        timings["content_s"] = timings["model_s"] = 0.0
        engines: dict[str, str] = {}
        if on_stage:
            on_stage("convert", len(pieces))
        for name in sorted({p.singer for p in pieces}):
            mine = sorted((p for p in pieces if p.singer == name), key=lambda p: p.n_frames)  # little padding
            index = None
            if settings.retrieval_ratio > 0:
                index = self.retrieval_index(name)
                if index is None:
                    warnings.append(f"retrieval_ratio={settings.retrieval_ratio:g}: singer {name!r} has no retrieval "
                                    "index (fine-tune it again to make one); converted without retrieval")
            if self.refiner is not None and self.voice_print(name) is None and name in self._voice_print_problems:
                warnings.append(self._voice_print_problems[name])
            with self.singer_runner(name) as run:
                engines[name] = "torch" if self.onnx_singer(name) is None else "onnx"
                for batch in self._batches(mine):
                    converted = self._convert_batch(run, mono, sr, batch, semitones[name], timings, index=index,
                                                    engine=engines[name])
                    for piece, audio in zip(batch, converted):
                        self._overlap_add(output, weight_sum, audio, piece, context)
                    if progress:
                        progress(len(batch))
        np.divide(output, weight_sum, out=output, where=weight_sum > 0)
        self.apply_rest_gate(output, mono, sr)
        timings["total_s"] = sum(timings.values())
        refine = None
        if self.refiner is not None:
            refine = {"pieces": len(self._refine_stats), **{
                key: float(np.mean([stats[key] for stats in self._refine_stats])) if self._refine_stats else None
                for key in ("content_l1_before", "content_l1_after")}}
            pulled = [stats for stats in self._refine_stats if "speaker_l1_before" in stats]  # singers with a print
            if pulled:
                refine.update({key: float(np.mean([stats[key] for stats in pulled]))
                               for key in ("speaker_l1_before", "speaker_l1_after")})
        return VocalConversion(audio=output, sample_rate=sr, pieces=len(pieces), transpose=semitones,
                               source_f0_median_hz=source_median, timings=timings, warnings=warnings,
                               transpose_decisions=decisions, engines=engines, refine=refine)

    def _range_warning(self, name: str, pieces: list[_Piece], semitones: float) -> str | None:
        """A warning when the transposed source's p05-p95 F0 range reaches more than
        :data:`RANGE_MARGIN_SEMITONES` beyond ``name``'s recorded p05-p95 range (adapter stats), else None."""
        singer_range = self.singer_f0_range(name)
        voiced = [p.f0_raw[p.f0_raw > 0] for p in pieces if p.f0_raw is not None]
        voiced = np.concatenate(voiced) if voiced else np.zeros(0)
        if singer_range is None or voiced.size == 0:
            return None
        low, high = np.percentile(voiced, [5, 95]) * 2.0 ** (semitones / 12.0)
        below = 12.0 * math.log2(singer_range[0] / low)
        above = 12.0 * math.log2(high / singer_range[1])
        if max(below, above) <= RANGE_MARGIN_SEMITONES:
            return None
        side = f"{above:.1f} semitones above" if above >= below else f"{below:.1f} semitones below"
        return (f"transposed by {semitones:+g} semitones, the source's p05-p95 range ({low:.0f}-{high:.0f} Hz) reaches "
                f"{side} singer {name!r}'s recorded range ({singer_range[0]:.0f}-{singer_range[1]:.0f} Hz): expect "
                "strained or unnatural notes; another transpose (or transpose=auto) may fit better")

    def _batches(self, pieces: list[_Piece]) -> Iterator[list[_Piece]]:
        """Consecutive groups of ``pieces`` (sorted by length) with at most ``chunk.batch_size`` pieces (for
        this device) and at most ``chunk.batch_seconds`` of padded audio each (a longer piece goes alone)."""
        chunk, batch = self.settings.chunk, []
        batch_size = chunk.batch_size_for(self.device.type)
        seconds_per_frame = self.hop / self.sample_rate
        for piece in pieces:
            longest = max([piece.n_frames] + [p.n_frames for p in batch])
            if batch and (len(batch) + 1 > batch_size
                          or (len(batch) + 1) * longest * seconds_per_frame > chunk.batch_seconds):
                yield batch
                batch = []
            batch.append(piece)
        if batch:
            yield batch

    @torch.inference_mode()
    def _convert_batch(self, run: Callable[..., np.ndarray], mono: np.ndarray, sr: int,
                       batch: list[_Piece], semitones: float, timings: dict[str, float],
                       index: torch.Tensor | None = None, engine: str = "torch") -> list[np.ndarray]:
        """Convert a batch of pieces; returns each window's audio at the source rate, exact length. With a
        retrieval ``index`` the content moves ``retrieval_ratio`` of the way toward the singer's own. ``engine``:
        what ``run`` is (``torch`` or ``onnx``), for the decoder windows' length."""
        started = time.perf_counter()
        inputs = []
        for piece in batch:
            audio = self._window_model_audio(mono, sr, piece)
            wav16k = resample(mono[piece.window_start: piece.model_end], sr, CONTENT_SAMPLE_RATE)
            if self.refiner is not None:
                piece.source16k = wav16k
            content = encode_audio(self.content_encoder, wav16k)
            if content.shape[0] == 0:
                content = np.zeros((1, self.content_encoder.dim), dtype=np.float32)
            if index is not None:  # frame by frame, so before alignment repeats frames: fewer to search
                content = blend(torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32)), index,
                                self.settings.retrieval_ratio, self.settings.retrieval_neighbours).numpy()
            content = align_to_frames(content, piece.n_frames, self.hop, self.sample_rate)
            f0, voiced = prepare_f0(piece.f0_raw, semitones, self.settings.pitch_correction)
            volume = frame_rms(audio, self.hop)
            inputs.append((content, f0, voiced, volume))
        timings["content_s"] += time.perf_counter() - started

        started = time.perf_counter()
        window_s = self.settings.chunk.decode_window_s_for(self.device.type, engine)
        window_frames = int(round(window_s * self.sample_rate / self.hop))
        wav = run(inputs, batch, window_frames)
        timings["model_s"] += time.perf_counter() - started
        results = []
        for row, piece in enumerate(batch):
            piece.source16k = None
            window = wav[row, : piece.n_frames * self.hop]
            at_source = resample(window, self.sample_rate, sr) if sr != self.sample_rate else window
            at_source = highpass(at_source, sr, self.settings.highpass_hz)  # DC and sub-sonic rumble
            length = piece.window_end - piece.window_start
            at_source = at_source[:length] if at_source.shape[0] >= length else \
                np.pad(at_source, (0, length - at_source.shape[0]))
            results.append(np.ascontiguousarray(at_source, dtype=np.float32))
        return results

    def piece_generator(self, piece: _Piece) -> torch.Generator:
        """The sampling noise's generator for one piece: seeded by ``seed`` and the piece's first sample, so
        the noise does not depend on the batching or on the other pieces."""
        # torch's CPU generator keeps 32 bits of a seed: mix both numbers into 32 well-spread bits
        mixed = np.random.SeedSequence([int(self.settings.seed) % (1 << 32), piece.window_start]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(mixed))

    @staticmethod
    def _overlap_add(output: np.ndarray, weight_sum: np.ndarray, audio: np.ndarray, piece: _Piece,
                     context: int) -> None:
        """Add a converted window with a trapezoid weight: linear ramps over ``2 * context`` around the
        core's edges, so abutting pieces crossfade linearly (their weights sum to 1)."""
        index = np.arange(piece.window_start, piece.window_end, dtype=np.float64) + 0.5
        rise = max(1, (piece.start - piece.window_start) + context)
        fall = max(1, (piece.window_end - piece.end) + context)
        weight = np.minimum((index - piece.window_start) / rise, (piece.window_end - index) / fall)
        weight = np.clip(weight, 0.0, 1.0).astype(np.float32)
        output[piece.window_start: piece.window_end] += audio * weight
        weight_sum[piece.window_start: piece.window_end] += weight

    def apply_rest_gate(self, output: np.ndarray, mono: np.ndarray, sr: int) -> None:
        """Multiply ``output`` in place by the rest gate of the source ``mono`` (see :func:`rest_gate`)."""
        chunk = self.settings.chunk
        apply_rest_gate(output, mono, sr, chunk.threshold_db, chunk.gate_hold_s, chunk.gate_ramp_s)
