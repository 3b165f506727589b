"""Write a tiny processed dataset straight in the contract's format, without running preprocess.

Harmonic clips (one note per clip, a different pitch per singer), feature files with simple content
features (a smooth random projection of the pitch, so a model can learn something from them),
``manifest.jsonl`` and ``stats.json``. Used by the training tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file

from ai_singer.manifest import DatasetStats, ManifestEntry, singer_stats, write_manifest, write_stats
from conftest import harmonic


def write_processed_dataset(root: str | Path, singers: Sequence[str] = ("alto", "tenor"), train_clips: int = 3,
                            val_clips: int = 1, seconds: float = 1.0, sample_rate: int = 16000,
                            hop_length: int = 128, content_dim: int = 16, encoder_name: str = "tiny-hubert",
                            seed: int = 0, encoder_path: str | None = "pretrain/content/tiny-hubert",
                            encoder_layer: int | None = 2, encoder_final_proj: bool | None = False) -> Path:
    """Create ``<root>/manifest.jsonl``, ``<root>/stats.json`` and the clips; return the manifest path.

    The content encoder is recorded as ``{name, dim, path, layer, final_proj}``; ``None`` leaves a key out
    (like files written before these were recorded).

    Every clip has ``int(seconds * sample_rate) // hop_length`` frames and exactly ``n_frames * hop``
    samples. Singer ``k`` sings around ``180 * 1.25**k`` Hz.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((2, content_dim)).astype(np.float32)
    entries: list[ManifestEntry] = []
    encoder_metadata = {key: str(value).lower() if isinstance(value, bool) else str(value)
                        for key, value in (("content_path", encoder_path), ("content_layer", encoder_layer),
                                           ("content_final_proj", encoder_final_proj)) if value is not None}
    singer_stats_by_name = {}
    n_frames = int(seconds * sample_rate) // hop_length
    for k, singer in enumerate(singers):
        base_hz = 180.0 * 1.25 ** k
        voiced_f0 = []
        for c in range(train_clips + val_clips):
            split = "train" if c < train_clips else "val"
            hz = base_hz * 2 ** (c / 12)
            t = np.arange(n_frames * hop_length) / sample_rate
            f0_samples = hz * 2 ** (0.25 / 12 * np.sin(2 * np.pi * 5.0 * t))
            wav = harmonic(f0_samples, sample_rate, seed=seed + 17 * k + c)
            frame_f0 = f0_samples[hop_length // 2::hop_length][:n_frames].astype(np.float32)
            volume = np.sqrt(np.mean(wav.reshape(n_frames, hop_length) ** 2, axis=1)).astype(np.float32)
            log_f0 = np.log(frame_f0 / 200.0)
            content = np.tanh(np.stack([log_f0, np.linspace(-1, 1, n_frames)], axis=1) @ projection)
            clip_id = f"{singer}_{c:03d}"
            audio_rel = f"{singer}/{clip_id}.wav"
            features_rel = f"{singer}/{clip_id}.features.safetensors"
            (root / singer).mkdir(parents=True, exist_ok=True)
            sf.write(root / audio_rel, wav, sample_rate, subtype="PCM_16")
            save_file({
                "content": torch.from_numpy(content.astype(np.float16)),
                "f0": torch.from_numpy(frame_f0),
                "voiced": torch.ones(n_frames, dtype=torch.uint8),
                "volume": torch.from_numpy(volume),
            }, str(root / features_rel), metadata={
                "format_version": "1", "sample_rate": str(sample_rate), "hop_length": str(hop_length),
                "n_frames": str(n_frames), "content_encoder": encoder_name, "content_dim": str(content_dim),
                "f0_method": "harvest", **encoder_metadata,
            })
            entries.append(ManifestEntry(singer=singer, audio=audio_rel, features=features_rel,
                                         seconds=n_frames * hop_length / sample_rate, n_frames=n_frames,
                                         split=split, source=f"{singer}/take{c}.wav",
                                         f0_median_hz=float(np.median(frame_f0))))
            voiced_f0.append(frame_f0)
        singer_stats_by_name[singer] = singer_stats([seconds] * (train_clips + val_clips), np.concatenate(voiced_f0))
    write_manifest(root / "manifest.jsonl", entries)
    write_stats(root / "stats.json", DatasetStats(sample_rate=sample_rate, hop_length=hop_length,
                                                  content_encoder_name=encoder_name, content_dim=content_dim,
                                                  f0_method="harvest", singers=singer_stats_by_name,
                                                  content_encoder_path=encoder_path, content_layer=encoder_layer,
                                                  content_final_proj=encoder_final_proj))
    return root / "manifest.jsonl"
