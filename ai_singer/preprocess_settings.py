"""Preprocess settings: the typed dataclasses of ``conf/preprocess.yaml`` and :func:`settings_from_config`, the one
builder that reads and checks them (a typo in a key or a value out of range is a :class:`PreprocessError` naming the
setting) before any audio is read. :meth:`PreprocessSettings.output_hash` says which settings change what is
written for a source. :mod:`ai_singer.preprocess` runs what these describe.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ai_singer.audio import SliceConfig
from ai_singer.bundle import locate_path
from ai_singer.errors import UserError
from ai_singer.features.f0_settings import F0Settings
from ai_singer.values import as_bool, as_float, as_int

#: Bump when a code change alters what preprocess writes: every source is redone on the next run.
PIPELINE_VERSION = 1


class PreprocessError(UserError):
    """The stage cannot start (missing input folder, no singer folders, bad settings). Built from one message
    ``"<setting or path>: <reason>"``."""

    def __init__(self, message: str, fix: str | None = None):
        where, sep, reason = str(message).partition(": ")
        super().__init__(*((where, reason) if sep else ("preprocess", str(message))), fix)


# ------------------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class FramingSettings:
    """The model's framing (``conf/audio``): clips are written at ``sample_rate`` and features have one
    frame per ``hop_length`` samples."""

    sample_rate: int
    hop_length: int


@dataclass(frozen=True)
class LoudnessSettings:
    """``conf/loudness``: see ``ai_singer.audio.normalize_loudness``."""

    target_lufs: float
    peak_dbfs: float


@dataclass(frozen=True)
class ContentSettings:
    """``conf/content``: encoder ``name`` (a key of ``CONTENT_ENCODERS``), local weights ``path``, and the
    encoder's own keyword arguments (layer, final_proj, device, ...)."""

    name: str
    path: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitSettings:
    """``conf/split``: the deterministic train/val split (see ``ai_singer.manifest.assign_splits``)."""

    val_fraction: float
    min_val_clips: int
    seed: int


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything the stage needs, read from the Hydra config by :func:`settings_from_config`."""

    raw: Path
    processed: Path
    framing: FramingSettings
    slicer: SliceConfig
    loudness: LoudnessSettings
    f0: F0Settings
    content: ContentSettings
    split: SplitSettings
    num_workers: int
    split_seconds: float  # with workers, longer sources are sliced first and shared among them in pieces
    min_clip_seconds: float
    min_voiced_fraction: float
    pitch_plots: bool
    progress: bool
    singers: tuple[str, ...] | None   # singer folders to include (None = all)
    exclude_singers: tuple[str, ...]  # singer folders to leave out

    def output_hash(self) -> str:
        """Hash of every setting that changes what is written for a source (not workers, split_seconds, the
        train/val split, plots)."""
        relevant = {
            "pipeline_version": PIPELINE_VERSION,
            "framing": dataclasses.asdict(self.framing),
            "slicer": dataclasses.asdict(self.slicer),
            "loudness": dataclasses.asdict(self.loudness),
            "f0": self.f0.identity(),
            "content": {"name": self.content.name, "path": str(locate_path(self.content.path).resolve()),
                        "options": {k: v for k, v in sorted(self.content.options.items()) if k != "device"},
                        "weights": _folder_fingerprint(locate_path(self.content.path))},
            "min_clip_seconds": self.min_clip_seconds,
            "min_voiced_fraction": self.min_voiced_fraction,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(node: Any) -> dict:
    """An OmegaConf node (or a mapping) as a plain resolved dict."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(node)


def _build(cls, values: Mapping[str, Any], group: str):
    """``cls(**values)`` with a clear error naming the config group on an unknown or missing key."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PreprocessError(f"conf/{group}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise PreprocessError(f"conf/{group}: {error}") from error


def _fraction(value: Any, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PreprocessError(f"{key}={value!r}: expected a number between 0 and 1") from None
    if not 0.0 <= number <= 1.0:
        raise PreprocessError(f"{key}={value!r}: expected a number between 0 and 1")
    return number


def settings_from_config(cfg: Any) -> PreprocessSettings:
    """Read the composed ``conf/preprocess.yaml`` into typed settings (a typo in a key is an error)."""
    audio = _plain(cfg.audio)
    content = _plain(cfg.content)
    if content.get("name") is None or content.get("path") is None:
        raise PreprocessError("conf/content: needs 'name' and 'path' (content=synth for the bundled encoder, "
                              "content=hubert content.path=DIR for ContentVec/HuBERT weights; content=from_base "
                              "is for inference only)")
    name, path = content.pop("name"), content.pop("path")
    singers = cfg.singers
    if singers is not None and (isinstance(singers, str) or not hasattr(singers, "__iter__")):
        raise PreprocessError(f"singers={singers!r}: expected a list of singer folder names, e.g. singers=[alice,bob]")
    exclude = cfg.exclude_singers or []
    if isinstance(exclude, str) or not hasattr(exclude, "__iter__"):
        raise PreprocessError(f"exclude_singers={exclude!r}: expected a list of singer folder names, "
                              f"e.g. exclude_singers=[carol]")
    return PreprocessSettings(
        raw=Path(str(cfg.paths.raw)), processed=Path(str(cfg.paths.processed)),
        framing=FramingSettings(sample_rate=int(audio["sample_rate"]), hop_length=int(audio["hop_length"])),
        slicer=_build(SliceConfig, _plain(cfg.slicer), "slicer"),
        loudness=_build(LoudnessSettings, _plain(cfg.loudness), "loudness"),
        f0=_build(F0Settings, _plain(cfg.f0), "f0"),
        content=ContentSettings(name=str(name), path=str(path), options=content),
        split=_build(SplitSettings, _plain(cfg.split), "split"),
        num_workers=as_int(cfg.num_workers, "num_workers", minimum=0),
        split_seconds=as_float(cfg.split_seconds, "split_seconds", above=0.0),
        min_clip_seconds=as_float(cfg.min_clip_seconds, "min_clip_seconds", minimum=0.0),
        min_voiced_fraction=_fraction(cfg.min_voiced_fraction, "min_voiced_fraction"),
        pitch_plots=as_bool(cfg.pitch_plots, "pitch_plots"), progress=as_bool(cfg.progress, "progress"),
        singers=None if singers is None else tuple(str(name) for name in singers),
        exclude_singers=tuple(str(name) for name in exclude),
    )


def _folder_fingerprint(folder: Path) -> list:
    """Names, sizes and mtimes of the files in the content-encoder folder (cheap; no hashing of GBs)."""
    if not folder.is_dir():
        return []
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in folder.iterdir() if p.is_file())
