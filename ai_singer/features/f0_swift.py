"""SwiftF0 (``swift-f0``, MIT, a dependency of ai_singer): a 135 KB convolutional F0 model on onnxruntime.

The ``swift-f0`` wheel ships the model; it scores every 256-sample hop of 16 kHz audio (16 ms) with a
pitch and a confidence calibrated so that 0.5 separates voiced from unvoiced. It runs on the CPU only.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ai_singer.features.f0_tracker_missing import F0TrackerMissing

#: The rate and hop the model works at (swift_f0.SAMPLE_RATE / HOP), and its pitch range in Hz.
SAMPLE_RATE = 16000
HOP = 256
MODEL_RANGE_HZ = (46.875, 2093.75)


@lru_cache(maxsize=4)
def _detector(threads: int):
    try:
        from swift_f0 import SwiftF0
    except ImportError as error:
        raise F0TrackerMissing("swift", "swift-f0", "pip install 'swift-f0>=0.3,<0.4' (a dependency of ai_singer)") from error
    return SwiftF0(threads=threads, spin=False)


def track(wav: np.ndarray, sr: int, f0_min: float, f0_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SwiftF0 on mono audio [samples] at ``sr``.

    Returns ``(times_s [T], f0_hz [T], confidence [T])``: a pitch for every frame (voiced or not) and the
    model's confidence in 0..1; frame ``i`` is centred at ``i * 16 ms``. Uses as many threads as torch
    (``torch.get_num_threads()``), so one setting governs every tracker.
    """
    import torch

    if sr != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(np.asarray(wav, dtype=np.float32), sr, SAMPLE_RATE)
    low = min(max(float(f0_min), MODEL_RANGE_HZ[0]), MODEL_RANGE_HZ[1] * 0.9)
    high = max(min(float(f0_max), MODEL_RANGE_HZ[1]), low * 1.1)
    result = _detector(max(1, torch.get_num_threads())).detect(np.asarray(wav, dtype=np.float32), SAMPLE_RATE,
                                                                fmin=low, fmax=high)
    return result.timestamps, result.pitch_hz, result.confidence
