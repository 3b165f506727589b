"""FCPE (MIT): the model bundled in the ``torchfcpe`` wheel, run by :mod:`ai_singer.features.fcpe_model`.

The package itself is never imported and must be installed without its dependencies
(``pip install --no-deps torchfcpe==0.0.4``): they include torchaudio, whose PyPI build does not load beside
the CPU torch, and once installed it breaks ``import transformers``'s model classes too.

10 ms frames of 16 kHz audio, 32.7-1975.5 Hz; the confidence is the best bin's score (the package's own
voicing threshold is 0.006).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ai_singer.features.wheel_weights import package_file

#: How to install the weights (not an extra of ai_singer: an extra cannot skip torchfcpe's dependencies).
INSTALL = "pip install --no-deps torchfcpe==0.0.4"
#: The weight file inside the torchfcpe package.
WEIGHTS = Path("assets") / "fcpe_c_v001.pt"


def weights_path() -> Path:
    """Where the installed torchfcpe wheel keeps the bundled model (found without importing the package)."""
    return package_file("fcpe", "torchfcpe", WEIGHTS, INSTALL)


@lru_cache(maxsize=1)
def _model(device: str = "cpu"):
    from ai_singer.features.fcpe_model import load_fcpe

    return load_fcpe(str(weights_path())).to(device)


def track(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, device: str = "cpu"
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FCPE on mono audio [samples] at ``sr`` (resampled to 16 kHz) on the torch ``device``.

    Returns ``(times_s [T], f0_hz [T], confidence [T])``, ``T = samples_16k // 160 + 1``, frame ``i`` centred
    at ``(i + 0.5) * 10`` ms: a pitch for every frame and the best bin's score in 0..1. ``f0_min`` /
    ``f0_max`` are applied by the caller (the model searches its whole range)."""
    import torch

    from ai_singer.features.fcpe_model import HOP, SAMPLE_RATE

    wav = np.asarray(wav, dtype=np.float32)
    if sr != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(wav, sr, SAMPLE_RATE)
    f0, confidence = _model(device).track(torch.from_numpy(np.ascontiguousarray(wav))[None].to(device))
    times = (np.arange(f0.shape[1]) + 0.5) * HOP / SAMPLE_RATE
    return times, f0[0].cpu().numpy().astype(np.float64), confidence[0].cpu().numpy().astype(np.float64)
