"""Converting songs: one frozen base, per-singer adapters, chunked conversion, remix.

``python -m ai_singer.infer songs=PATH singer=NAME [key=value ...]`` (Hydra, ``conf/infer.yaml``).

A song is a folder holding a vocal stem ``vocals.*`` plus any number of accompaniment stems (every other
audio file), or a single vocal file. For each song, ``<paths.output>/<song>/`` receives the converted
vocal (``vocals.<format>``, mono), the remix (``mix.<format>``) and ``report.json``; the batch writes
``<paths.output>/batch_report.json``. Outputs have the source vocal's sample rate and exact length.

Conversion of one vocal (:meth:`Converter.convert_vocal`):

1. The mono vocal is sliced on silence (``chunk``); the pieces are split where the singer changes
   (``sections``). Everything outside the pieces is written as exact zeros.
2. Each piece is converted with ``chunk.context_s`` of neighbouring audio on both sides: resampled to the
   model rate and to 16 kHz, F0 (``f0`` group) + voiced mask + interpolation, transposition, pitch
   correction (``snap_to_scale``), content features aligned to the model frames, frame volume. Pieces run
   through the model in padded batches of ``chunk.batch_size``; only one batch of intermediates exists at
   a time (the whole song is held only as the source and the output at the source rate, plus one small F0
   array per piece).
3. Pieces are overlap-added with linear crossfades over the context (abutting pieces, e.g. a long phrase
   split in two or a change of singer, blend over ``2 * context_s``), resampled back to the source rate.
4. A gate derived from the source keeps every rest silent: where the source stays below
   ``chunk.threshold_db`` for longer than ``2 * chunk.gate_hold_s`` the output is exactly 0.

Singers share one base in memory: the base is loaded once; for each singer in turn a copy receives the
adapter, which is merged into its weights (zero inference overhead); the copy serves every following
song by the same singer and is dropped when another singer's is needed, so at most the base plus one
merged copy are resident whatever the number of singers.
The architecture always comes from the base artifact's own config.

This module imports audio, features, model, adapters, checkpoint, mix and sections only — never the
training code, the losses or the discriminator (a test checks it).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from ai_singer.atomic import atomic_folder, atomic_write_json, remove_stale_temporaries
from ai_singer.audio import AUDIO_SUFFIXES, AudioError, SliceConfig, audio_info, frame_db, load_audio, resample, \
    slice_on_silence, to_mono, write_audio
from ai_singer.device import DeviceError, pick_device
from ai_singer.errors import UserError
from ai_singer.features.content import align_to_frames, encode_audio
from ai_singer.features.pitch import F0_EXTRACTORS, SCALES, choose_transpose, extract_f0, interpolate_unvoiced, \
    key_to_pitch_class, snap_to_scale, transpose
from ai_singer.features.volume import frame_rms
from ai_singer.mix import MixSettings, highpass, match_loudness, mix_stem_files
from ai_singer.retrieval import blend
from ai_singer.sections import Section, SectionsError, assign_singers, parse_sections
from ai_singer.values import as_bool, as_float, as_int, plain_name

log = logging.getLogger(__name__)

#: Stem name of the vocal in a song folder (``vocals.wav``, ``vocals.flac``, ...).
VOCAL_STEM = "vocals"
#: Names of a song folder's own sections file (used when ``sections`` is not set).
SONG_SECTIONS_FILES = ("sections.txt",)
#: Content encoders run at this rate.
CONTENT_SAMPLE_RATE = 16000
#: The converted vocal stem should end within this many dB of the source's level; a report warns if not.
LOUDNESS_TOLERANCE_DB = 1.0
#: transpose beyond this many semitones (3 octaves) either way leaves the range of any voice: refused.
MAX_TRANSPOSE_SEMITONES = 36.0
#: A warning when the transposed source's p05-p95 range reaches this many semitones beyond the singer's.
RANGE_MARGIN_SEMITONES = 3.0


class InferError(UserError):
    """Bad input for conversion: ``str()`` is ``"{what}: {reason}"`` (``what``: a file, song or setting)."""

    def __init__(self, what: str | os.PathLike, reason: str, fix: str | None = None):
        self.what = str(what)
        super().__init__(what, reason, fix)


# --------------------------------------------------------------------------------------------------
# Settings (defaults mirror conf/infer.yaml; a test checks they agree)
# --------------------------------------------------------------------------------------------------

@dataclass
class ChunkSettings:
    """How the vocal is cut, batched and joined (``chunk`` in ``conf/infer.yaml``). Seconds / dB.

    threshold_db:       a 10 ms frame quieter than this is silence (slicing and the rest gate).
    min_silence_s:      only silences at least this long split the vocal into pieces.
    max_silence_kept_s: silence kept at each side of a piece.
    max_length_s:       longer phrases are split at their quietest frame (bounds memory per piece).
    context_s:          audio converted on each side of a piece; joins crossfade over twice this.
    batch_size:         at most this many pieces per model call (padded to the longest) ...
    batch_seconds:      ... and at most this much padded audio per call: the model's activation memory
                        grows with it (on CPU roughly 20-40 MB per second of audio for small/base).
    gate_hold_s:        the rest gate opens this long before and closes this long after the source.
    gate_ramp_s:        length of the gate's linear fades.
    """

    threshold_db: float = -50.0
    min_silence_s: float = 0.3
    max_silence_kept_s: float = 0.1
    max_length_s: float = 15.0
    context_s: float = 0.1
    batch_size: int = 4
    batch_seconds: float = 30.0
    gate_hold_s: float = 0.05
    gate_ramp_s: float = 0.01

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"chunk.batch_size must be >= 1, got {self.batch_size}")
        if self.context_s < 0 or self.gate_hold_s < 0 or self.gate_ramp_s < 0:
            raise ValueError("chunk.context_s, gate_hold_s and gate_ramp_s must be >= 0")

    def slice_config(self) -> SliceConfig:
        """The slicer settings: nothing is dropped for being short (``min_length_s=0``)."""
        return SliceConfig(threshold_db=self.threshold_db, min_length_s=0.0, min_silence_s=self.min_silence_s,
                           max_silence_kept_s=self.max_silence_kept_s, hop_s=0.01, max_length_s=self.max_length_s)


@dataclass
class PitchCorrectionSettings:
    """Snap the (transposed) F0 toward ``key``/``scale`` by ``strength`` (0 = off, 1 = hard tune).
    The key is the key of the output, i.e. after transposition."""

    key: str = "C"
    scale: str = "major"
    strength: float = 0.0

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
class F0Settings:
    """The ``f0`` config group (``ai_singer.features.pitch.extract_f0``)."""

    method: str = "harvest"
    f0_min: float = 50.0
    f0_max: float = 1100.0

    def __post_init__(self) -> None:
        if self.method not in F0_EXTRACTORS:
            raise InferError(f"f0.method={self.method!r}", "unknown F0 method",
                             f"use one of {', '.join(sorted(F0_EXTRACTORS))}")
        if not 0.0 < self.f0_min < self.f0_max:
            raise InferError(f"f0.f0_min={self.f0_min:g} f0.f0_max={self.f0_max:g}", "need 0 < f0_min < f0_max")


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
    """

    transpose: float | str = 0.0
    auto_transpose_step: int = 12
    noise_scale: float = 0.35
    seed: int = 0
    retrieval_ratio: float = 0.0
    retrieval_neighbours: int = 8
    highpass_hz: float = 40.0
    f0: F0Settings = field(default_factory=F0Settings)
    pitch_correction: PitchCorrectionSettings = field(default_factory=PitchCorrectionSettings)
    chunk: ChunkSettings = field(default_factory=ChunkSettings)
    mix: MixSettings = field(default_factory=MixSettings)

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

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what was meant."""
        found = []
        correction = self.pitch_correction
        if correction.strength == 0 and (correction.key, correction.scale) != ("C", "major"):
            found.append(f"pitch_correction.key={correction.key} scale={correction.scale} is set but "
                         "pitch_correction.strength is 0, so no pitch correction is applied (set strength 0..1)")
        return found


def _build(cls, values: Mapping[str, Any] | None, group: str):
    """``cls(**values)`` recursively for nested dataclasses; an unknown key is an error naming the group."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InferError(f"config {group}", f"unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
            else fields[name].default
        key = f"{group}.{name}" if group else name
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = _build(type(default), value, key)
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


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def settings_from_config(cfg: Any) -> ConvertSettings:
    """The typed conversion settings from a composed ``conf/infer.yaml`` (typos are errors)."""
    values = {name: _plain(cfg[name]) for name in ("transpose", "auto_transpose_step", "noise_scale", "seed",
                                                   "retrieval_ratio", "retrieval_neighbours", "highpass_hz", "f0",
                                                   "pitch_correction", "chunk", "mix") if name in cfg}
    return _build(ConvertSettings, values, "")


# --------------------------------------------------------------------------------------------------
# Songs on disk
# --------------------------------------------------------------------------------------------------

@dataclass
class Song:
    """One song to convert: its vocal, its accompaniment stems and (optionally) a sections file."""

    name: str
    vocal: Path | None
    accompaniment: list[Path] = field(default_factory=list)
    sections: Path | None = None
    folder: Path | None = None
    problem: str | None = None  # why the song cannot be converted (reported, not raised, in a batch)


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                  and not p.name.startswith("."))


def read_song_folder(folder: Path) -> Song:
    """A song folder: ``vocals.*`` is the vocal, every other audio file an accompaniment stem."""
    files = _audio_files(folder)
    vocals = [p for p in files if p.stem.lower() == VOCAL_STEM]
    sections = next((folder / name for name in SONG_SECTIONS_FILES if (folder / name).is_file()), None)
    song = Song(name=folder.name, vocal=None, folder=folder, sections=sections,
                accompaniment=[p for p in files if p.stem.lower() != VOCAL_STEM])
    if not vocals:
        song.problem = (f"no vocal stem: expected a file named {VOCAL_STEM}.* "
                        f"({', '.join(s.lstrip('.') for s in AUDIO_SUFFIXES)}) in {folder}; "
                        f"found {[p.name for p in files] or 'no audio files'}")
    elif len(vocals) > 1:
        song.problem = f"several vocal stems {[p.name for p in vocals]} in {folder}: keep exactly one"
    else:
        song.vocal = vocals[0]
    return song


def find_songs(path: str | os.PathLike) -> list[Song]:
    """Songs under ``path``: a single audio file (a vocal alone), a song folder (it holds ``vocals.*``), or
    a folder of songs (every sub-folder is a song folder; loose audio files are vocals alone).

    Raises InferError when ``path`` does not exist or holds no songs.
    """
    root = Path(path)
    if not root.exists():
        raise InferError(root, "songs path does not exist")
    if root.is_file():
        if root.suffix.lower() not in AUDIO_SUFFIXES:
            raise InferError(root, f"not an audio file (expected one of {', '.join(AUDIO_SUFFIXES)})")
        return [Song(name=root.stem, vocal=root)]
    if any(p.stem.lower() == VOCAL_STEM for p in _audio_files(root)):
        return [read_song_folder(root)]
    songs = [read_song_folder(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    songs += [Song(name=p.stem, vocal=p) for p in _audio_files(root)]
    if not songs:
        raise InferError(root, "no songs found: give a song folder (with vocals.*), a folder of song folders, "
                               "or an audio file")
    names = [song.name for song in songs]
    for song in songs:
        if names.count(song.name) > 1:
            song.problem = song.problem or f"two songs are named {song.name!r} (a folder and a file?); rename one"
    return songs


# --------------------------------------------------------------------------------------------------
# Artifacts: base, singers, content encoder
# --------------------------------------------------------------------------------------------------

def available_singers(singers_dir: str | os.PathLike) -> list[str]:
    """Names of the singer folders under ``singers_dir`` that hold an adapter artifact."""
    root = Path(singers_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "adapter.yaml").is_file())


def singer_dir(name: str, singers_dir: str | os.PathLike) -> Path:
    """``<singers_dir>/<name>``, or InferError listing the singers that exist."""
    folder = Path(singers_dir) / name
    if not (folder / "adapter.yaml").is_file():
        known = available_singers(singers_dir)
        listing = ", ".join(known) if known else f"none (no adapter.yaml under {Path(singers_dir)}/*/)"
        raise InferError(f"singer {name!r}", f"unknown singer: no adapter at {folder}. Available singers: {listing}")
    return folder


def resolve_base_dir(base: str | None, adapter_base_name: str | None, pretrain_dir: str | os.PathLike) -> Path:
    """The base artifact folder: ``base`` (a path, or a name under ``pretrain_dir``) or else the base the
    adapter names. Raises InferError when it is missing."""
    name = base or adapter_base_name
    if not name:
        raise InferError("base", "no base given and the adapter does not name one: set base=<name or folder>")
    candidates = [Path(name), Path(pretrain_dir) / name]
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise InferError(f"base {name!r}", f"no base artifact (config.yaml + generator.safetensors) at "
                                       f"{' or '.join(str(c) for c in candidates)}")


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
    in source samples; ``n_frames`` model frames cover the window; ``f0_raw`` from the first pass."""

    start: int
    end: int
    singer: str
    window_start: int
    window_end: int
    n_frames: int = 0
    f0_raw: np.ndarray | None = None


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
        from ai_singer import checkpoint
        from ai_singer.model import SingerVAE, SingerVAEConfig

        self.settings = settings
        self.singers_dir = Path(singers_dir)
        try:
            self.device = pick_device(device)
        except DeviceError as error:
            raise InferError(error.where, error.reason) from error
        self.merge = merge
        self.base_dir = Path(base_dir)
        try:
            self.base = checkpoint.load_base(self.base_dir)
            config = SingerVAEConfig.from_dict(self.base.model_config)  # the architecture of the base itself
            model = SingerVAE(config)
            checkpoint.load_state_strict(model, self.base.generator_state,
                                         self.base_dir / checkpoint.BASE_GENERATOR_FILE)
        except (checkpoint.ArtifactError, ValueError, TypeError) as error:
            raise InferError(self.base_dir, f"cannot load the base: {error}") from error
        model.remove_weight_norm()
        self.model = model.to(self.device).eval()
        self.base.generator_state = {}  # the weights now live in the model
        self.sample_rate, self.hop = int(config.sample_rate), int(config.hop_length)
        self._adapters: dict[str, Any] = {}
        self._indexes: dict[str, torch.Tensor | None] = {}
        #: the last singer's model (name, model, g): songs in a row by one singer reuse it
        self._singer_cache: tuple[str, torch.nn.Module, torch.Tensor] | None = None
        if content_encoder is None:
            content_encoder = self._load_content_encoder(content)
        else:
            self._check_content_settings(dict(content or {}), content_encoder)
        if int(content_encoder.dim) != int(config.content_dim):
            raise InferError(f"content encoder {content_encoder.name!r} at {getattr(content_encoder, 'path', '?')}",
                             f"gives {content_encoder.dim}-dim features but the base {self.base_dir} expects "
                             f"{config.content_dim}; use the encoder folder/layer/final_proj the base was trained with")
        self.content_encoder = content_encoder

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
                                        f"to the working directory {Path.cwd()}); run from the folder it was "
                                        f"trained in or set content.path=DIR") from error

    # ---------------------------------------------------------------------------------- singers
    def adapter(self, name: str):
        """The adapter artifact of ``name`` (cached), checked against this base."""
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

    def retrieval_index(self, name: str) -> torch.Tensor | None:
        """``name``'s retrieval index ``[K, D]`` (cached), or None when the singer has none."""
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
        from ai_singer import adapters

        adapter = self.adapter(name)
        model = copy.deepcopy(self.model)
        peft = adapter.config.get("peft") or {"method": adapter.method}
        try:
            adapters.load_adapter_state(model, peft, adapter.tensors)
        except ValueError as error:
            raise InferError(adapter.path, f"adapter does not fit the base: {error}") from error
        if self.merge:
            adapters.merge_adapters(model)
        model = model.to(self.device).eval()
        g = adapter.tensors["singer_embedding"].to(self.device, torch.float32).reshape(1, -1)
        self._singer_cache = (name, model, g)
        yield model, g

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
    def _window_model_audio(self, mono: np.ndarray, sr: int, piece: _Piece) -> np.ndarray:
        """The piece's window at the model rate, zero-padded to ``n_frames * hop`` samples."""
        window = resample(mono[piece.window_start: piece.window_end], sr, self.sample_rate)
        n_frames = max(1, math.ceil(window.shape[0] / self.hop))
        piece.n_frames = n_frames
        return np.pad(window, (0, n_frames * self.hop - window.shape[0]))

    def convert_vocal(self, mono: np.ndarray, sr: int, singer: str | None, sections: list[Section] | None = None,
                      progress: Callable[[int], Any] | None = None, on_plan: Callable[[int], Any] | None = None
                      ) -> VocalConversion:
        """Convert a mono vocal (float32 ``[samples]`` at ``sr``) to ``singer`` (or per ``sections``).

        Returns the converted vocal, float32 ``[samples]`` with the same length and rate, exactly 0 in the
        rests and wherever no singer is assigned. ``on_plan(n_pieces)`` is called once the vocal is cut and
        ``progress(n)`` after each batch (for progress bars).
        """
        settings, chunk = self.settings, self.settings.chunk
        timings: dict[str, float] = {}
        warnings: list[str] = []
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
            pieces.append(_Piece(start, end, name, window_start, window_end))
        for name in sorted({p.singer for p in pieces}):
            self.adapter(name)  # unknown singer / wrong base: fail before the slow part
        timings["slice_s"] = time.perf_counter() - started
        if on_plan:
            on_plan(len(pieces))

        # Pass 1: F0 of every piece (small arrays), for the source median and later the model.
        started = time.perf_counter()
        for piece in pieces:
            audio = self._window_model_audio(mono, sr, piece)
            piece.f0_raw = extract_f0(audio, self.sample_rate, self.hop, piece.n_frames, method=settings.f0.method,
                                      f0_min=settings.f0.f0_min, f0_max=settings.f0.f0_max)
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
        noise = torch.Generator().manual_seed(int(settings.seed))
        for name in sorted({p.singer for p in pieces}):
            mine = sorted((p for p in pieces if p.singer == name), key=lambda p: p.n_frames)  # little padding
            index = None
            if settings.retrieval_ratio > 0:
                index = self.retrieval_index(name)
                if index is None:
                    warnings.append(f"retrieval_ratio={settings.retrieval_ratio:g}: singer {name!r} has no retrieval "
                                    "index (fine-tune it again to make one); converted without retrieval")
            with self.singer_model(name) as (model, g):
                for batch in self._batches(mine):
                    converted = self._convert_batch(model, g, mono, sr, batch, semitones[name], timings, noise,
                                                    index=index)
                    for piece, audio in zip(batch, converted):
                        self._overlap_add(output, weight_sum, audio, piece, context)
                    if progress:
                        progress(len(batch))
        np.divide(output, weight_sum, out=output, where=weight_sum > 0)
        self.apply_rest_gate(output, mono, sr)
        timings["total_s"] = sum(timings.values())
        return VocalConversion(audio=output, sample_rate=sr, pieces=len(pieces), transpose=semitones,
                               source_f0_median_hz=source_median, timings=timings, warnings=warnings,
                               transpose_decisions=decisions)

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
        """Consecutive groups of ``pieces`` (sorted by length) with at most ``chunk.batch_size`` pieces and
        at most ``chunk.batch_seconds`` of padded audio each (a longer piece goes alone)."""
        chunk, batch = self.settings.chunk, []
        seconds_per_frame = self.hop / self.sample_rate
        for piece in pieces:
            longest = max([piece.n_frames] + [p.n_frames for p in batch])
            if batch and (len(batch) + 1 > chunk.batch_size
                          or (len(batch) + 1) * longest * seconds_per_frame > chunk.batch_seconds):
                yield batch
                batch = []
            batch.append(piece)
        if batch:
            yield batch

    @torch.inference_mode()
    def _convert_batch(self, model: torch.nn.Module, g: torch.Tensor, mono: np.ndarray, sr: int,
                       batch: list[_Piece], semitones: float, timings: dict[str, float],
                       noise: torch.Generator | None = None, index: torch.Tensor | None = None) -> list[np.ndarray]:
        """Convert a batch of pieces; returns each window's audio at the source rate, exact length. With a
        retrieval ``index`` the content moves ``retrieval_ratio`` of the way toward the singer's own."""
        started = time.perf_counter()
        inputs = []
        for piece in batch:
            audio = self._window_model_audio(mono, sr, piece)
            wav16k = resample(mono[piece.window_start: piece.window_end], sr, CONTENT_SAMPLE_RATE)
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
        lengths = torch.tensor([p.n_frames for p in batch], dtype=torch.long)
        device = self.device
        wav = model.infer(content_t.to(device), f0_t.to(device), voiced_t.to(device), volume_t.to(device),
                          g.expand(size, -1), lengths=lengths.to(device), noise_scale=self.settings.noise_scale,
                          generator=noise)
        wav = wav.float().cpu().numpy()[:, 0]
        timings["model_s"] += time.perf_counter() - started
        results = []
        for row, piece in enumerate(batch):
            window = wav[row, : piece.n_frames * self.hop]
            at_source = resample(window, self.sample_rate, sr) if sr != self.sample_rate else window
            at_source = highpass(at_source, sr, self.settings.highpass_hz)  # DC and sub-sonic rumble
            length = piece.window_end - piece.window_start
            at_source = at_source[:length] if at_source.shape[0] >= length else \
                np.pad(at_source, (0, length - at_source.shape[0]))
            results.append(np.ascontiguousarray(at_source, dtype=np.float32))
        return results

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


_GATE_HOP_S = 0.01
_BLOCK = 1 << 20


def _active_frames(mono: np.ndarray, sr: int, threshold_db: float, hold_s: float) -> tuple[np.ndarray, int]:
    """Per 10 ms frame: the source is at or above ``threshold_db`` there, widened by ``hold_s`` on both
    sides. Returns (bool [frames], hop samples). Computed block by block (no whole-song temporaries)."""
    hop = max(1, int(round(_GATE_HOP_S * sr)))
    block = hop * max(1, _BLOCK // hop)
    active = np.concatenate([frame_db(mono[start: start + block], hop) >= threshold_db
                             for start in range(0, mono.shape[0], block)] or [np.zeros(0, bool)])
    hold = int(math.ceil(hold_s * sr / hop))
    if hold and active.any():
        active = np.convolve(active.astype(np.float32), np.ones(2 * hold + 1, np.float32), mode="same") > 0.5
    return active, hop


def rest_gate(mono: np.ndarray, sr: int, threshold_db: float, hold_s: float, ramp_s: float,
              start: int = 0, stop: int | None = None, frames: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """The rest gate, float32 ``[stop - start]`` in [0, 1], for samples ``[start, stop)`` of ``mono``.

    1 where the source sings (10 ms frames at or above ``threshold_db``, widened by ``hold_s``), exactly 0 in
    the rests, with linear fades of ``ramp_s`` centred on the edges of the widened region. The fades
    reach at most ``ramp_s / 2`` beyond it, so wherever the source stays below the threshold for longer
    than ``2 * hold_s + ramp_s`` the middle of that rest is exactly 0.
    """
    active, hop = frames if frames is not None else _active_frames(mono, sr, threshold_db, hold_s)
    n_samples = mono.shape[0]
    stop = n_samples if stop is None else stop
    ramp = max(1, int(round(ramp_s * sr)))
    half = ramp // 2
    # Samples [start - half, stop - half + ramp) of the widened mask, as a running sum over ``ramp``.
    lo, hi = start - half, stop - half + ramp - 1
    index = np.arange(lo, hi)
    inside = (index >= 0) & (index < n_samples)
    mask = np.zeros(index.shape[0], dtype=np.float32)
    frame_index = np.clip(index // hop, 0, max(len(active) - 1, 0))
    if len(active):
        mask[inside] = active[frame_index[inside]]
    if ramp == 1:
        return mask
    csum = np.concatenate([[0.0], np.cumsum(mask, dtype=np.float64)])
    return ((csum[ramp:] - csum[:-ramp]) / ramp).astype(np.float32)


def apply_rest_gate(output: np.ndarray, mono: np.ndarray, sr: int, threshold_db: float, hold_s: float,
                    ramp_s: float) -> None:
    """``output *= rest_gate(mono, ...)`` block by block (bounded temporary memory)."""
    frames = _active_frames(mono, sr, threshold_db, hold_s)
    for start in range(0, output.shape[0], _BLOCK):
        stop = min(start + _BLOCK, output.shape[0])
        output[start:stop] *= rest_gate(mono, sr, threshold_db, hold_s, ramp_s, start, stop, frames)


# --------------------------------------------------------------------------------------------------
# Songs and batches
# --------------------------------------------------------------------------------------------------

@dataclass
class SongResult:
    """How one song went: ``status`` ``ok``, ``skipped`` (already converted with the same singer and settings)
    or ``failed`` (with ``reason``), output files, report."""

    song: str
    status: str
    reason: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchResult:
    songs: list[SongResult]
    report_path: Path | None = None

    @property
    def failed(self) -> list[SongResult]:
        return [song for song in self.songs if song.status not in ("ok", "skipped")]

    @property
    def skipped(self) -> list[SongResult]:
        return [song for song in self.songs if song.status == "skipped"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        done = len(self.songs) - len(self.failed) - len(self.skipped)
        lines = [f"converted {done} of {len(self.songs)} song(s)"
                 + (f", {len(self.skipped)} already done (skipped; overwrite=true redoes them)" if self.skipped else "")]
        for song in self.songs:
            if song.status == "ok":
                lines.append(f"  ok      {song.song}: {song.outputs.get('mix', '')}")
            elif song.status == "skipped":
                lines.append(f"  skipped {song.song}: {song.outputs.get('mix', '')}")
            else:
                lines.append(f"  FAILED  {song.song}: {song.reason}")
        if self.report_path:
            lines.append(f"batch report: {self.report_path}")
        return "\n".join(lines)


def _settings_report(settings: ConvertSettings) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(settings), default=str))


def convert_song(converter: Converter, song: Song, output_dir: Path, singer: str | None,
                 sections_path: str | os.PathLike | None = None, chunk_progress: Any = None,
                 resume_key: str | None = None, extra_warnings: list[str] | None = None) -> SongResult:
    """Convert one song into ``output_dir/<song>/`` (vocal stem, mix, report.json). The three are written
    into a temporary folder beside it that then replaces the song's folder: a song folder always holds a
    complete conversion (the old one or the new one), never a mix of both. ``resume_key`` is recorded in
    report.json (see :func:`song_resume_key`). Raises on bad input (InferError, AudioError, SectionsError);
    :func:`run_batch` turns that into a failed entry."""
    settings = converter.settings
    if song.problem:
        raise InferError(f"song {song.name!r}", song.problem)
    started = time.perf_counter()
    info = audio_info(song.vocal)
    for stem in song.accompaniment:
        audio_info(stem)  # unreadable stems fail before the long part
    sections_file = Path(sections_path) if sections_path else song.sections
    sections = parse_sections(sections_file) if sections_file else None
    source, sr = load_audio(song.vocal)
    mono = to_mono(source)
    del source
    n_samples = int(mono.shape[0])
    load_s = time.perf_counter() - started

    def on_plan(total: int) -> None:
        if chunk_progress is not None:
            chunk_progress.reset(total=total)
            chunk_progress.set_description(song.name)

    conversion = converter.convert_vocal(mono, sr, singer, sections, on_plan=on_plan,
                                         progress=chunk_progress.update if chunk_progress is not None else None)
    warnings = list(extra_warnings or []) + list(conversion.warnings)

    started = time.perf_counter()
    mix = settings.mix
    vocal = conversion.audio
    loudness = {"vocal_loudness_match_db": 0.0}
    if mix.match_loudness:  # to the source's level; the limiter takes the peaks that would exceed its ceiling
        vocal, matched = match_loudness(vocal, mono, sr, mix.limiter)
        loudness = {"vocal_loudness_match_db": matched.gain_db,
                    "vocal_limiter_reduction_db": matched.limiter_reduction_db,
                    "vocal_level_vs_source_db": matched.level_difference_db}
        if matched.level_difference_db is not None and abs(matched.level_difference_db) > LOUDNESS_TOLERANCE_DB:
            why = ("mix.limiter is off, so the gain stopped where the stem's peak reaches 0 dBFS"
                   if not mix.limiter.enabled else "even with its peaks limited to mix.limiter.ceiling_db")
            warnings.append(f"the converted vocal stem is {matched.level_difference_db:+.1f} dB from the source "
                            f"vocal's level ({why}); loudness match applied {matched.gain_db:+.1f} dB")
    song_dir = output_dir / song.name
    vocal_path = song_dir / f"vocals.{mix.format}"
    mix_path = song_dir / f"mix.{mix.format}"
    with atomic_folder(song_dir) as writing:
        write_audio(writing / vocal_path.name, vocal, sr, subtype=mix.subtype)
        del mono  # only the vocal and one block of a stem at a time while mixing
        mixed = mix_stem_files(vocal, sr, song.accompaniment, mix)
        write_audio(writing / mix_path.name, mixed.audio if mixed.audio.shape[0] > 1 else mixed.audio[0], sr,
                    subtype=mix.subtype)
        warnings += mixed.warnings
        mix_s = time.perf_counter() - started
        report = _song_report(converter, song, singer, info, sr, n_samples, conversion, sections, sections_file,
                              loudness, mixed, vocal_path, mix_path, vocal, load_s, mix_s, warnings, resume_key)
        atomic_write_json(writing / "report.json", report)
    return SongResult(song=song.name, status="ok", outputs={"vocals": str(vocal_path), "mix": str(mix_path),
                                                             "report": str(song_dir / "report.json")},
                      report=report)


def _song_report(converter: Converter, song: Song, singer: str | None, info: Any, sr: int, n_samples: int,
                 conversion: VocalConversion, sections: list[Section] | None, sections_file: Path | None,
                 loudness: dict[str, Any], mixed: Any, vocal_path: Path, mix_path: Path, vocal: np.ndarray,
                 load_s: float, mix_s: float, warnings: list[str], resume_key: str | None) -> dict[str, Any]:
    """The song's report.json."""
    settings = converter.settings

    timings = {"load_s": load_s, **conversion.timings, "mix_write_s": mix_s}
    timings["total_s"] = load_s + conversion.timings["total_s"] + mix_s
    report = {
        "song": song.name,
        "source": {"vocal": str(song.vocal), "accompaniment": [str(p) for p in song.accompaniment],
                   "sample_rate": sr, "channels": info.channels, "samples": n_samples,
                   "seconds": n_samples / sr, "f0_median_hz": conversion.source_f0_median_hz},
        "base": {"path": str(converter.base_dir), "sha256": getattr(converter.base, "sha256", None)},
        "singer": singer,
        "sections": ([{"start_s": s.start_s, "end_s": None if math.isinf(s.end_s) else s.end_s, "singer": s.singer}
                      for s in sections] if sections else None),
        "sections_file": str(sections_file) if sections_file else None,
        "transpose_semitones": conversion.transpose,
        "transpose_auto": conversion.transpose_decisions or None,
        "pieces": conversion.pieces,
        "settings": _settings_report(settings),
        "device": str(converter.device),
        "adapters": "merged" if converter.merge else "unmerged",
        "mix": {**loudness, "vocal_gain_db": mixed.vocal_gain_db,
                "stem_gains_db": mixed.stem_gains_db, "limiter_reduction_db": mixed.limiter_reduction_db,
                "channels": int(mixed.audio.shape[0])},
        "outputs": {"vocals": str(vocal_path), "mix": str(mix_path), "sample_rate": sr,
                    "samples": int(vocal.shape[0])},
        "timings": timings,
        "real_time_factor": timings["total_s"] / max(n_samples / sr, 1e-9),
        "warnings": warnings,
        "resume_key": resume_key,
    }
    return report


def _file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def song_resume_key(song: Song, settings: ConvertSettings, singer: str | None, sections_file: Path | None,
                    singers_dir: str | os.PathLike, base: str | None, adapter_digests: dict[str, str],
                    content: Any = None) -> str | None:
    """A hash of what shapes the song's outputs: its source files (path, size, modification time), the
    conversion settings, the default singer, the sections file's bytes, the ``base`` and ``content`` settings
    and the bytes of every adapter involved (``adapter_digests`` caches them by singer). None when it cannot
    be known (a song with a problem, an unknown singer): such a song is never skipped."""
    import hashlib

    if song.problem or song.vocal is None:
        return None
    try:
        singers = {singer} if singer else set()
        sections_bytes = b""
        if sections_file is not None:
            sections_bytes = Path(sections_file).read_bytes()
            singers |= {section.singer for section in parse_sections(sections_file)}
        for name in sorted(singers):
            if name not in adapter_digests:
                folder = singer_dir(name, singers_dir)
                adapter_digests[name] = hashlib.sha256("".join(
                    _file_digest(folder / file) for file in ("adapter.yaml", "adapter.safetensors",
                                                             "retrieval.safetensors") if (folder / file).is_file()
                ).encode()).hexdigest()
        sources = []
        for path in [song.vocal, *song.accompaniment]:
            stat = Path(path).stat()
            sources.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    except (OSError, InferError, SectionsError):
        return None
    record = {"sources": sources, "settings": _settings_report(settings), "singer": singer, "base": base,
              "content": _plain(content) if content is not None else None,
              "sections": hashlib.sha256(sections_bytes).hexdigest() if sections_file else None,
              "adapters": {name: adapter_digests[name] for name in sorted(singers)}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def finished_song(song_dir: Path, resume_key: str | None) -> dict[str, str] | None:
    """The outputs of a complete conversion in ``song_dir`` made with ``resume_key``, else None."""
    if resume_key is None:
        return None
    try:
        report = json.loads((song_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("resume_key") != resume_key:
        return None
    outputs = report.get("outputs") or {}
    names = [Path(str(outputs.get(key, ""))).name for key in ("vocals", "mix")]
    if not all(names) or not all((song_dir / name).is_file() for name in names):
        return None
    return {"vocals": str(song_dir / names[0]), "mix": str(song_dir / names[1]), "report": str(song_dir / "report.json")}


def write_batch_report(path: Path, results: list[SongResult], total: int) -> None:
    """``batch_report.json`` (atomically): every song handled so far and a summary; ``total`` songs in the batch."""
    atomic_write_json(path, {
        "songs": [{"song": r.song, "status": r.status, "reason": r.reason, "outputs": r.outputs} for r in results],
        "summary": {"total": len(results), "ok": sum(r.status == "ok" for r in results),
                    "failed": sum(r.status not in ("ok", "skipped") for r in results),
                    "skipped": sum(r.status == "skipped" for r in results),
                    "remaining": total - len(results)},
    })


def sections_warnings(sections: list[Section], song_seconds: float) -> list[str]:
    """Sections that cannot take effect: those starting at or after the end of the song."""
    return [f"sections: {s.start_s:g}-{'end' if math.isinf(s.end_s) else f'{s.end_s:g}'} s ({s.singer}) starts after "
            f"the song's end ({song_seconds:.2f} s) and is unused" for s in sections if s.start_s >= song_seconds]


def check_batch(cfg: Any) -> tuple[ConvertSettings, list[Song], dict[str, list[str]]]:
    """Every setting of a composed ``conf/infer.yaml`` and every sections file of the batch, checked before
    anything loads: raises InferError / SectionsError / DeviceError (UserErrors: one line, exit 2) for the
    first mistake. Returns the settings, the songs and, by song name, warnings for its report.json (settings
    that do nothing, sections after the song's end); the batch-wide ones are also logged."""
    import soundfile as sf

    settings = settings_from_config(cfg)
    as_int(cfg.get("seed", 0), "seed")
    as_bool(cfg.get("overwrite", False), "overwrite")
    as_bool(cfg.get("progress", True), "progress")
    file_format = {"wav": "WAV", "flac": "FLAC"}[settings.mix.format]
    if not sf.check_format(file_format, settings.mix.subtype):
        raise InferError(f"mix.subtype={settings.mix.subtype!r}", f"cannot be written as {settings.mix.format}",
                         "use PCM_16 or PCM_24 (wav and flac), or FLOAT (wav)")
    pick_device(str(cfg.get("device", "auto")))
    if cfg.get("songs") in (None, "", "???"):
        raise InferError("songs", "set songs=PATH (a song folder, a folder of songs, or a vocal file)")
    paths = cfg.paths
    singer = cfg.get("singer") or None
    if singer is not None:
        try:
            plain_name(singer, "singer")
        except UserError as error:
            raise InferError(error.where, error.reason, error.fix) from None
        singer_dir(str(singer), paths.singers)  # an unknown singer stops the batch before anything else
    songs = find_songs(str(cfg.songs))
    if singer is None and not cfg.get("sections") and not any(song.sections for song in songs):
        raise InferError("singer", "set singer=<name>; available singers: "
                                   + (", ".join(available_singers(paths.singers)) or "none"))
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
        for name in sorted({section.singer for section in sections}):
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


def run_batch(cfg: Any, converter: Converter | None = None) -> BatchResult:
    """Convert every song of ``cfg.songs`` (a composed ``conf/infer.yaml``). A song that fails is recorded
    with its reason and the batch goes on; ``batch_report.json`` is rewritten after each song. A song whose
    output folder holds a complete conversion with the same sources, singer(s) and settings is skipped unless
    ``overwrite=true`` (so an interrupted batch resumes where it stopped), and the leftovers of a killed run
    are removed first. The base is loaded only when a song needs converting. Raises InferError for problems
    that stop everything (no songs, unknown singer, missing base, content encoder mismatch)."""
    from tqdm.auto import tqdm

    settings, songs, song_warnings = check_batch(cfg)
    singer = cfg.get("singer") or None
    paths = cfg.paths

    def load_converter() -> Converter:
        base_name = None
        if singer is not None:
            from ai_singer import checkpoint

            try:
                base_name = checkpoint.load_adapter(singer_dir(str(singer), paths.singers)).config.get("base_name")
            except checkpoint.ArtifactError as error:
                raise InferError(f"singer {singer!r}", f"cannot load the adapter: {error}") from error
        base_dir = resolve_base_dir(cfg.get("base"), base_name, paths.pretrain)
        content = cfg.get("content")
        return Converter(base_dir, None if content is None else _plain(content), settings, paths.singers,
                         device=str(cfg.device))

    output_dir = Path(str(paths.output))
    for leftover in remove_stale_temporaries(output_dir) + [
            path for song in songs for path in remove_stale_temporaries(output_dir / song.name)]:
        log.info("removed %s, left by a conversion that was killed", leftover)
    overwrite = as_bool(cfg.get("overwrite", False), "overwrite")
    progress = as_bool(cfg.get("progress", True), "progress")
    report_path = output_dir / "batch_report.json"
    adapter_digests: dict[str, str] = {}
    results: list[SongResult] = []
    with tqdm(total=len(songs), desc="songs", unit="song", disable=not progress, position=0) as song_bar, \
            tqdm(total=0, desc="chunks", unit="chunk", disable=not progress, position=1, leave=False) as chunk_bar:
        for song in songs:
            song_bar.set_postfix_str(song.name)
            sections_file = Path(str(cfg.sections)) if cfg.get("sections") else song.sections
            key = song_resume_key(song, settings, singer, sections_file, paths.singers, cfg.get("base"),
                                  adapter_digests, cfg.get("content"))
            done = None if overwrite else finished_song(output_dir / song.name, key)
            if done is not None:
                results.append(SongResult(song=song.name, status="skipped", outputs=done,
                                          reason="already converted with this singer and these settings"))
            else:
                if converter is None:
                    converter = load_converter()
                try:
                    results.append(convert_song(converter, song, output_dir, singer, cfg.get("sections"), chunk_bar,
                                                resume_key=key, extra_warnings=song_warnings.get(song.name, [])))
                except (UserError, ValueError) as error:  # bad input of this song: reported, the batch goes on
                    results.append(SongResult(song=song.name, status="failed", reason=str(error)))
                except Exception as error:  # an unexpected failure of one song must not stop the batch
                    log.debug("song %s failed", song.name, exc_info=True)
                    results.append(SongResult(song=song.name, status="failed",
                                              reason=f"{type(error).__name__}: {error} "
                                                     f"({traceback.extract_tb(error.__traceback__)[-1].name})"))
            write_batch_report(report_path, results, len(songs))
            song_bar.update(1)
    return BatchResult(songs=results, report_path=report_path)


def run_cli(cfg: Any) -> int:
    """The command's body: run the batch, print the summary, return the exit code (0 all ok or already done,
    1 some songs failed). A user's mistake that stops everything is raised (a UserError:
    :func:`ai_singer.conf_dir.run_hydra_app` reports it, exit code 2)."""
    result = run_batch(cfg)
    print(result.summary())
    return result.exit_code


def limit_allocator_retention(threshold_bytes: int = 1 << 20) -> bool:
    """On glibc, serve allocations of ``threshold_bytes`` and more with mmap (returned to the system when
    freed) instead of letting the threshold grow: without this, glibc keeps the freed per-piece
    activations of the content encoder and the model, and a 10-minute song peaked at 2.9 GB instead of
    1.6 GB (BENCHMARKS.md). Process-wide, so only the command-line entry calls it; skipped when
    ``MALLOC_MMAP_THRESHOLD_`` is set or the C library is not glibc. Returns whether it was applied."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold_bytes)))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def main() -> None:
    """``python -m ai_singer.infer songs=PATH singer=NAME [overrides]`` (Hydra)."""
    from ai_singer.conf_dir import run_hydra_app

    limit_allocator_retention()
    run_hydra_app("infer", run_cli)


if __name__ == "__main__":
    main()
