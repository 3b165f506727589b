"""A singer's voice print: the mean of a Whisper encoder's hidden states over its training clips.

Whisper's encoder states carry the speaker along with the words: averaged over a few seconds they name a voice
about as well as log-mel statistics do (BENCHMARKS.md "Content encoders: speaker leakage"). A fine-tuned singer
keeps that average, taken with the encoder that refines conversions (``refine.encoder``, Whisper tiny.en by
default), as ``singers/<name>/voice_print.safetensors``. At conversion the refinement (:mod:`ai_singer.refine`)
pulls the time-averaged states of each converted piece toward it (``refine.speaker_weight``) while it pulls the
frame-by-frame states toward the source's words: the words come from the source, the average from the singer.

The file holds one float32 tensor ``mean`` [width]; its metadata name the encoder, the number of clips and frames
averaged; ``adapter.yaml`` records the same with the file's sha256 (:func:`ai_singer.checkpoint.save_adapter`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VOICE_PRINT_FILE = "voice_print.safetensors"
MEAN_KEY = "mean"
#: Whisper hears at most 30 s; longer clips are averaged window by window.
WINDOW_SECONDS = 28.0


@dataclass
class VoicePrint:
    """mean: float32 [width]; encoder: the ``refine.encoder`` string it was taken with; clips, frames: how much
    audio it averages (encoder frames, 50 per second)."""

    mean: torch.Tensor
    encoder: str
    clips: int
    frames: int


def compute_voice_print(encoder_path: str, clips: Iterable[tuple[np.ndarray, int]]) -> VoicePrint:
    """The mean Whisper encoder state over every frame of ``clips`` ((mono float32 audio [S], sample rate) each).

    ``encoder_path``: a faster-whisper folder or ``wheel:tiny.en`` / ``wheel:base``. Raises ValueError when no clip
    gives a frame."""
    from ai_singer.content_loss import ContentLoss

    words = ContentLoss(encoder_path, 16000)
    total, frames, count = None, 0, 0
    with torch.inference_mode():
        for audio, rate in clips:
            audio = np.asarray(audio, dtype=np.float32).reshape(-1)
            window = int(WINDOW_SECONDS * rate)
            for start in range(0, len(audio), window):
                part = audio[start: start + window]
                if len(part) < rate // 10:  # under 0.1 s: too short to say anything about a voice
                    continue
                states = words.features(torch.from_numpy(np.ascontiguousarray(part)).reshape(1, -1),
                                        sample_rate=rate)[0]                    # [F, width]
                total = states.sum(0) if total is None else total + states.sum(0)
                frames += states.shape[0]
            count += 1
    if total is None:
        raise ValueError("no audio of at least 0.1 s to take a voice print from")
    return VoicePrint(mean=(total / frames).float(), encoder=str(encoder_path), clips=count, frames=frames)


def save_voice_print(directory: str | os.PathLike, voice_print: VoicePrint) -> Path:
    """Write ``<directory>/voice_print.safetensors`` atomically; returns it."""
    from safetensors.torch import save_file

    from ai_singer.atomic import atomic_path

    path = Path(directory) / VOICE_PRINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"encoder": voice_print.encoder, "clips": str(voice_print.clips), "frames": str(voice_print.frames)}
    with atomic_path(path) as tmp:
        save_file({MEAN_KEY: voice_print.mean.detach().float().contiguous().cpu()}, str(tmp), metadata=metadata)
    return path


def load_voice_print(directory: str | os.PathLike) -> VoicePrint | None:
    """The voice print in ``directory``, or None when the singer has none (fine-tuned without one, or before
    they existed). Raises ValueError naming the file when it is unreadable."""
    path = Path(directory) / VOICE_PRINT_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            mean = handle.get_tensor(MEAN_KEY) if MEAN_KEY in handle.keys() else None
    except Exception as error:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"{path}: not a readable voice print ({error})") from error
    if mean is None or mean.ndim != 1 or not metadata.get("encoder"):
        raise ValueError(f"{path}: no [width] tensor {MEAN_KEY!r} with its encoder named in the metadata")
    return VoicePrint(mean=mean.float(), encoder=metadata["encoder"], clips=int(metadata.get("clips", 0)),
                      frames=int(metadata.get("frames", 0)))


def blend_voice_prints(prints: list[tuple[VoicePrint, float]]) -> VoicePrint:
    """The weighted mean of voice prints taken with one encoder (a blend of singers); ValueError otherwise."""
    encoders = {vp.encoder for vp, _ in prints}
    if len(encoders) != 1:
        raise ValueError(f"voice prints taken with different encoders: {sorted(encoders)}")
    total = sum(float(w) for _, w in prints)
    mean = sum(vp.mean * (float(w) / total) for vp, w in prints)
    return VoicePrint(mean=mean, encoder=encoders.pop(), clips=sum(vp.clips for vp, _ in prints),
                      frames=sum(vp.frames for vp, _ in prints))


@dataclass
class ParentPrints:
    """The voice prints of a singer's parents (one parent: the singer itself), blended when they can be.

    blended: their weighted mean, or None when a parent has none or the prints were taken with different encoders;
    missing: the names of the parents without one; encoders: the distinct encoders of those found, sorted."""

    blended: VoicePrint | None
    missing: list[str]
    encoders: list[str]


def parent_prints(folders: Sequence[str | os.PathLike], names: Sequence[str], weights: Sequence[float]
                  ) -> ParentPrints:
    """Load the voice print of each singer folder (``names``: the singers they hold, for the report; ``weights``:
    a blend's) and blend them when every one has a print and all share one encoder. Raises ValueError naming the
    file when a print is unreadable."""
    prints = [load_voice_print(folder) for folder in folders]
    missing = [name for name, vp in zip(names, prints) if vp is None]
    encoders = sorted({vp.encoder for vp in prints if vp is not None})
    blended = blend_voice_prints(list(zip(prints, weights))) if not missing and len(encoders) == 1 else None
    return ParentPrints(blended=blended, missing=missing, encoders=encoders)


def add_voice_print(singer_folder: str | os.PathLike, data_dir: str | os.PathLike, encoder: str,
                    singer: str | None = None) -> Path:
    """Take a voice print for the adapter in ``singer_folder`` from its training clips in the processed dataset
    ``data_dir`` (the manifest's ``train`` clips of ``singer``, default the adapter's singer) and write the folder
    again with it (the adapter's tensors, settings and retrieval index unchanged; all files swapped in at once).
    Raises ValueError naming the dataset when it holds no clip of that singer."""
    from ai_singer import checkpoint
    from ai_singer.data import ManifestDataset
    from ai_singer.manifest import ManifestError
    from ai_singer.retrieval import load_index

    adapter = checkpoint.load_adapter(singer_folder)
    name = singer or adapter.singer
    try:
        train_set = ManifestDataset(Path(data_dir) / "manifest.jsonl", split="train", singers=[name])
    except ManifestError as error:
        raise ValueError(f"{error} (a voice print of singer {name!r} is taken from its train clips: give the "
                         f"processed dataset it was fine-tuned on, or --singer NAME)") from error

    voice_print = compute_voice_print(encoder, train_set.clip_audio())
    config = {k: v for k, v in adapter.config.items() if k not in ("retrieval_index", "voice_print")}
    return checkpoint.save_adapter(singer_folder, adapter.tensors, config, retrieval_index=load_index(singer_folder),
                                   voice_print=voice_print)
