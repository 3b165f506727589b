"""The processed dataset's index files: ``manifest.jsonl`` (one clip per line, with its train/val split)
and ``stats.json`` (framing, content encoder and per-singer statistics).

Preprocess writes them; training reads the manifest, inference reads the per-singer F0 median from the
stats to transpose automatically. The formats are fixed in ``docs/architecture.md``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ai_singer.atomic import atomic_write_json, atomic_write_text
from ai_singer.errors import UserError

MANIFEST_NAME = "manifest.jsonl"
STATS_NAME = "stats.json"
STATS_FORMAT_VERSION = 1
SPLITS = ("train", "val")


class ManifestError(UserError):
    """A manifest or stats file that cannot be read; ``str()`` names the file, the line and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        super().__init__(path, reason)


@dataclass(frozen=True)
class ManifestEntry:
    """One clip of the processed dataset. ``audio``/``features`` are relative to the manifest's folder,
    ``source`` is relative to ``paths.raw``."""

    singer: str
    audio: str
    features: str
    seconds: float
    n_frames: int
    split: str
    source: str
    f0_median_hz: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "ManifestEntry":
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in obj]
        if missing:
            raise ValueError(f"missing keys {missing}")
        entry = cls(singer=str(obj["singer"]), audio=str(obj["audio"]), features=str(obj["features"]),
                    seconds=float(obj["seconds"]), n_frames=int(obj["n_frames"]), split=str(obj["split"]),
                    source=str(obj["source"]), f0_median_hz=float(obj["f0_median_hz"]))
        if entry.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {entry.split!r}")
        return entry


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry]) -> None:
    """Write ``entries`` as JSON lines, atomically (a reader never sees a half-written manifest)."""
    lines = [json.dumps(entry.to_json(), ensure_ascii=False, sort_keys=True) for entry in entries]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_manifest(path: str | os.PathLike, split: str | None = None,
                  singers: Sequence[str] | None = None) -> list[ManifestEntry]:
    """Read a manifest, optionally keeping one ``split`` and/or some ``singers``.

    Raises ManifestError naming the file (and line) when it is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, "manifest not found; run `python -m ai_singer.preprocess` first")
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = ManifestEntry.from_json(json.loads(line))
            except (ValueError, TypeError) as error:
                raise ManifestError(path, f"line {line_no}: {error}") from error
            if split is not None and entry.split != split:
                continue
            if singers is not None and entry.singer not in singers:
                continue
            entries.append(entry)
    return entries


# --------------------------------------------------------------------------------------------- split

def split_score(clip_key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for a clip: it depends only on the clip's key and the
    seed, never on the order of processing or on the other clips."""
    digest = hashlib.sha256(f"{seed}:{clip_key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign_splits(clips_by_singer: dict[str, Sequence[str]], val_fraction: float, min_val_clips: int,
                  seed: int) -> dict[str, str]:
    """Give every clip key ``"train"`` or ``"val"``; returns ``{clip_key: split}``.

    A clip is in val when its ``split_score`` is below ``val_fraction``. A singer with at least two clips
    gets at least ``min_val_clips`` val clips (the lowest scores) but always keeps at least one training
    clip; a singer with a single clip trains on it. The same clips give the same split on every run.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if min_val_clips < 0:
        raise ValueError(f"min_val_clips must be >= 0, got {min_val_clips}")
    splits: dict[str, str] = {}
    for singer, keys in clips_by_singer.items():
        ranked = sorted(keys, key=lambda key: (split_score(key, seed), key))
        n_val = sum(split_score(key, seed) < val_fraction for key in ranked)
        if len(ranked) >= 2:
            n_val = min(max(n_val, min_val_clips), len(ranked) - 1)
        else:
            n_val = 0
        for rank, key in enumerate(ranked):
            splits[key] = "val" if rank < n_val else "train"
    return splits


# --------------------------------------------------------------------------------------------- stats

@dataclass(frozen=True)
class SingerStats:
    """Per-singer statistics; the F0 values are over voiced frames only (Hz)."""

    clips: int
    seconds: float
    f0_median_hz: float
    f0_p05_hz: float
    f0_p95_hz: float
    f0_min_hz: float
    f0_max_hz: float


def singer_stats(clip_seconds: Sequence[float], voiced_f0_hz: np.ndarray) -> SingerStats:
    """Statistics of one singer from their clips' durations and all their voiced F0 values
    (``voiced_f0_hz`` float [n_voiced_frames], every value > 0)."""
    f0 = np.asarray(voiced_f0_hz, dtype=np.float64)
    if f0.size == 0:
        raise ValueError("a singer needs at least one voiced frame for F0 statistics")
    p05, median, p95 = np.percentile(f0, [5.0, 50.0, 95.0])
    return SingerStats(clips=len(clip_seconds), seconds=round(float(sum(clip_seconds)), 3),
                       f0_median_hz=round(float(median), 3), f0_p05_hz=round(float(p05), 3),
                       f0_p95_hz=round(float(p95), 3), f0_min_hz=round(float(f0.min()), 3),
                       f0_max_hz=round(float(f0.max()), 3))


@dataclass(frozen=True)
class DatasetStats:
    """Everything in ``stats.json``."""

    sample_rate: int
    hop_length: int
    content_encoder_name: str
    content_dim: int
    f0_method: str
    singers: dict[str, SingerStats] = field(default_factory=dict)
    #: The rest of the encoder's identity; ``None`` = unknown (stats written before these were recorded).
    content_encoder_path: str | None = None
    content_layer: int | None = None
    content_final_proj: bool | None = None

    @property
    def content_encoder(self) -> dict:
        """``{name, dim, path, layer, final_proj}`` as stats.json and a base's config.yaml record them."""
        return {"name": self.content_encoder_name, "dim": self.content_dim, "path": self.content_encoder_path,
                "layer": self.content_layer, "final_proj": self.content_final_proj}

    def to_json(self) -> dict:
        return {
            "format_version": STATS_FORMAT_VERSION,
            "sample_rate": self.sample_rate,
            "hop_length": self.hop_length,
            "content_encoder": self.content_encoder,
            "f0_method": self.f0_method,
            "singers": {name: dataclasses.asdict(stats) for name, stats in sorted(self.singers.items())},
        }

    @classmethod
    def from_json(cls, obj: dict) -> "DatasetStats":
        if obj.get("format_version") != STATS_FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {obj.get('format_version')!r} "
                             f"(expected {STATS_FORMAT_VERSION})")
        encoder = obj["content_encoder"]
        path, layer, final_proj = encoder.get("path"), encoder.get("layer"), encoder.get("final_proj")
        if final_proj is not None and not isinstance(final_proj, bool):
            raise ValueError(f"content_encoder.final_proj must be true, false or null, not {final_proj!r}")
        return cls(sample_rate=int(obj["sample_rate"]), hop_length=int(obj["hop_length"]),
                   content_encoder_name=str(encoder["name"]),
                   content_dim=int(encoder["dim"]), f0_method=str(obj["f0_method"]),
                   singers={name: SingerStats(**values) for name, values in obj["singers"].items()},
                   content_encoder_path=None if path is None else str(path),
                   content_layer=None if layer is None else int(layer), content_final_proj=final_proj)


def write_stats(path: str | os.PathLike, stats: DatasetStats) -> None:
    """Write ``stats.json`` atomically."""
    atomic_write_json(path, stats.to_json())


def read_stats(path: str | os.PathLike) -> DatasetStats:
    """Read ``stats.json``; ManifestError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, "stats.json not found; run `python -m ai_singer.preprocess` first")
    try:
        return DatasetStats.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as error:
        raise ManifestError(path, f"malformed stats: {error}") from error


def group_by_singer(entries: Iterable[ManifestEntry]) -> dict[str, list[ManifestEntry]]:
    """``{singer: [entries]}`` in manifest order."""
    grouped: dict[str, list[ManifestEntry]] = defaultdict(list)
    for entry in entries:
        grouped[entry.singer].append(entry)
    return dict(grouped)
