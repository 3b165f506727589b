"""The training dataset: clips of the processed manifest, random crops, the ``Batch`` dataclass, collate.

Each item reads one clip's audio (only the cropped range, with soundfile) and its feature file (only
the cropped frames, with safetensors' lazy slices). Nothing heavy is computed per item: the linear
spectrogram the posterior encoder needs is computed per batch on the training device
(``ai_singer.features.spectrogram``), never cached here.

Crops are a pure function of ``(seed, epoch, clip index)`` so that a resumed run sees exactly the
batches an uninterrupted run would have seen, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from safetensors import safe_open
from torch.utils.data import Dataset, DistributedSampler

from ai_singer.manifest import ManifestError, read_manifest

FEATURE_KEYS = ("content", "f0", "voiced", "volume")


@dataclass(frozen=True)
class ClipRecord:
    """One manifest entry with its paths resolved against the manifest's folder."""

    singer: str
    audio: Path
    features: Path
    n_frames: int
    split: str


def read_clips(manifest_path: str | Path) -> list[ClipRecord]:
    """Every clip of a ``manifest.jsonl`` (``ManifestError`` naming the file when missing or malformed)."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    return [ClipRecord(singer=e.singer, audio=root / e.audio, features=root / e.features, n_frames=e.n_frames,
                       split=e.split) for e in read_manifest(manifest_path)]


@dataclass
class Batch:
    """A padded batch. ``T`` = frames of the longest item, ``H`` = hop length.

    content [B, D, T] float32, f0 [B, T] Hz (unvoiced gaps interpolated), voiced [B, T] float 0/1,
    volume [B, T] linear RMS, wav [B, 1, T*H], lengths [B] valid frames, speaker_ids [B] long,
    spec [B, n_fft//2+1, T] linear magnitude or ``None`` until the trainer computes it on its device.
    Padding is zero everywhere.
    """

    content: torch.Tensor
    f0: torch.Tensor
    voiced: torch.Tensor
    volume: torch.Tensor
    wav: torch.Tensor
    lengths: torch.Tensor
    speaker_ids: torch.Tensor
    spec: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on ``device``."""
        moved = {
            field.name: (value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value)
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }
        return Batch(**moved)

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])


@dataclass
class Item:
    """One (cropped) clip. content [T, D] float32, f0/voiced/volume [T], wav [T*H]."""

    content: torch.Tensor
    f0: torch.Tensor
    voiced: torch.Tensor
    volume: torch.Tensor
    wav: torch.Tensor
    speaker_id: int


class ManifestDataset(Dataset):
    """Clips of one split of a processed manifest.

    ``singers`` keeps only those singers (a name that has no clip in this split is an error).
    ``speakers`` is the list of names in speaker-embedding order (default: every singer of the
    manifest, all splits, sorted); ``speaker_ids`` follow it. ``max_frames`` crops longer clips to a
    random window of that many frames with the matching audio; the crop depends only on
    ``(seed, epoch, index)`` (see ``set_epoch``).
    """

    def __init__(self, manifest_path: str | Path, split: str = "train", singers: Sequence[str] | None = None,
                 max_frames: int | None = None, speakers: Sequence[str] | None = None, hop_length: int | None = None,
                 seed: int = 0):
        self.manifest_path = Path(manifest_path)
        records = read_clips(self.manifest_path)
        if not records:
            raise ManifestError(self.manifest_path, "manifest has no clips")
        self.speakers = list(speakers) if speakers is not None else sorted({r.singer for r in records})
        self.speaker_index = {name: i for i, name in enumerate(self.speakers)}
        if singers is not None:
            wanted = list(singers)
            known = {r.singer for r in records}
            for name in wanted:
                if name not in known:
                    raise ManifestError(self.manifest_path, f"singer {name!r} has no clips (singers in the manifest: "
                                                           f"{', '.join(sorted(known))})")
            records = [r for r in records if r.singer in set(wanted)]
        self.records = [r for r in records if r.split == split]
        if singers is not None and split == "train":
            have = {r.singer for r in self.records}
            missing = [name for name in singers if name not in have]
            if missing:
                raise ManifestError(self.manifest_path, f"singer(s) {', '.join(map(repr, missing))} have no "
                                                       f"{split!r} clips")
        unknown = sorted({r.singer for r in self.records} - set(self.speaker_index))
        if unknown and singers is None:
            raise ManifestError(self.manifest_path, f"singer(s) {unknown} are not in the speaker list {self.speakers}")
        self.split = split
        self.max_frames = max_frames
        self.hop_length = hop_length
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Choose the crops of this epoch (call before creating the epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def crop_start(self, index: int, epoch: int | None = None) -> int:
        """First frame of the crop of clip ``index`` in ``epoch`` (default: the current epoch; 0 when no
        crop is needed)."""
        n_frames = self.records[index].n_frames
        if self.max_frames is None or n_frames <= self.max_frames:
            return 0
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), index])
        return int(rng.integers(0, n_frames - self.max_frames + 1))

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        """``dataset[index]`` crops for the current epoch; ``dataset[(index, epoch)]`` (what
        ``ResumableSampler(with_epoch=True)`` yields) for that epoch, so persistent DataLoader workers
        need no ``set_epoch``."""
        index, epoch = (key if isinstance(key, tuple) else (key, None))
        record = self.records[index]
        start = self.crop_start(index, epoch)
        stop = record.n_frames if self.max_frames is None else min(record.n_frames, start + self.max_frames)
        features, metadata = self._read_features(record, start, stop)
        hop = self.hop_length if self.hop_length is not None else int(metadata.get("hop_length", 0))
        if hop <= 0:
            raise ManifestError(record.features, "metadata lacks hop_length")
        wav, _ = sf.read(record.audio, start=start * hop, stop=stop * hop, dtype="float32", always_2d=True)
        if wav.shape[0] != (stop - start) * hop:
            raise ManifestError(record.audio, f"expected {(stop - start) * hop} samples for frames {start}..{stop} "
                                             f"(n_frames {record.n_frames} x hop {hop}), read {wav.shape[0]}")
        speaker_id = self.speaker_index.get(record.singer, 0)
        return Item(content=features["content"], f0=features["f0"], voiced=features["voiced"],
                    volume=features["volume"], wav=torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1))),
                    speaker_id=speaker_id)

    def clip_audio(self) -> Iterator[tuple[np.ndarray, int]]:
        """Each clip's whole audio, mono float32 [S], with its sample rate, in manifest order."""
        for record in self.records:
            wav, rate = sf.read(record.audio, dtype="float32", always_2d=True)
            yield np.ascontiguousarray(wav.mean(axis=1)), int(rate)

    def all_content(self) -> torch.Tensor:
        """The content features of every frame of every clip, concatenated: float32 [N, D]."""
        parts = [self._read_features(record, 0, record.n_frames)[0]["content"] for record in self.records]
        if not parts:
            raise ManifestError(self.manifest_path, "no clips to read content features from")
        return torch.cat(parts)

    def _read_features(self, record: ClipRecord, start: int, stop: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        if not record.features.is_file():
            raise ManifestError(record.features, "feature file listed in the manifest is missing")
        out: dict[str, torch.Tensor] = {}
        try:
            with safe_open(record.features, framework="pt") as handle:
                metadata = handle.metadata() or {}
                keys = set(handle.keys())
                missing = [k for k in FEATURE_KEYS if k not in keys]
                if missing:
                    raise ManifestError(record.features, f"feature file lacks {missing}")
                for key in FEATURE_KEYS:
                    sliced = handle.get_slice(key)
                    frames = sliced.get_shape()[0]
                    if frames != record.n_frames:
                        raise ManifestError(record.features, f"{key!r} has {frames} frames, the manifest says "
                                                            f"{record.n_frames}")
                    out[key] = sliced[start:stop].float()
        except ManifestError:
            raise
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise ManifestError(record.features, f"unreadable feature file ({error})") from error
        return out, metadata


def collate(items: Sequence[Item]) -> Batch:
    """Pad items to the longest one (zeros) and stack them into a ``Batch`` (see its shapes)."""
    if not items:
        raise ValueError("collate needs at least one item")
    lengths = torch.tensor([item.f0.shape[0] for item in items], dtype=torch.long)
    max_frames = int(lengths.max())
    hop = items[0].wav.shape[0] // max(int(items[0].f0.shape[0]), 1)
    batch_size, dim = len(items), items[0].content.shape[1]
    content = torch.zeros(batch_size, dim, max_frames)
    f0 = torch.zeros(batch_size, max_frames)
    voiced = torch.zeros(batch_size, max_frames)
    volume = torch.zeros(batch_size, max_frames)
    wav = torch.zeros(batch_size, 1, max_frames * hop)
    for i, item in enumerate(items):
        n = item.f0.shape[0]
        content[i, :, :n] = item.content.T
        f0[i, :n] = item.f0
        voiced[i, :n] = item.voiced
        volume[i, :n] = item.volume
        wav[i, 0, : item.wav.shape[0]] = item.wav
    speaker_ids = torch.tensor([item.speaker_id for item in items], dtype=torch.long)
    return Batch(content=content, f0=f0, voiced=voiced, volume=volume, wav=wav, lengths=lengths,
                 speaker_ids=speaker_ids)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled per epoch with ``seed + epoch``, sharded by rank) that can start
    part-way through an epoch: ``set_position(epoch, skip)`` drops this rank's first ``skip`` indices
    of that epoch, so a resumed run continues with the very next batch. With ``with_epoch=True`` it
    yields ``(index, epoch)`` pairs for ``ManifestDataset``."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 with_epoch: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0
        self.with_epoch = with_epoch

    def set_position(self, epoch: int, skip: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.skip:]
        if self.with_epoch:
            return iter([(index, self.epoch) for index in indices])
        return iter(indices)

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)
