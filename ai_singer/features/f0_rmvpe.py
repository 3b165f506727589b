"""RMVPE, RVC's singing F0 tracker, run by :mod:`ai_singer.features.rmvpe_model` from the user's own copy of
RVC's ``rmvpe.pt`` (``f0.rmvpe_path``; its weights ship in no package and are never downloaded here).

10 ms frames of 16 kHz audio, ~31.7-2006 Hz; the confidence is the best bin's salience (RVC's threshold is
0.03). Runs on ``f0.device``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ai_singer.errors import UserError

if TYPE_CHECKING:
    from ai_singer.features.f0_settings import F0Settings

#: Where the file comes from (it is published by the RVC project only).
SOURCE = ("download rmvpe.pt (~181 MB) from the RVC project's Hugging Face repository lj1995/VoiceConversionWebUI "
          "(an RVC install also has it, in assets/rmvpe/)")


def weights_path(settings: "F0Settings") -> Path:
    """``f0.rmvpe_path`` when it is a file; otherwise a UserError naming the setting and where to get the file."""
    path = Path(settings.rmvpe_path).expanduser()
    if not path.is_file():
        raise UserError(f"f0.rmvpe_path={settings.rmvpe_path}", "RMVPE's weights are not there",
                        f"{SOURCE} and put it there or set f0.rmvpe_path=<file>, or choose another f0.method")
    return path


@lru_cache(maxsize=1)
def _model(path: str, modified_ns: int, device: str):
    """The network from ``path`` (``modified_ns`` makes a replaced file load again) on ``device``."""
    from ai_singer.features.rmvpe_model import load_rmvpe

    try:
        model = load_rmvpe(path)
    except (ValueError, OSError) as error:
        raise UserError(f"f0.rmvpe_path={path}", f"not RVC's RMVPE weights ({error})", SOURCE) from None
    return model.to(device)


def track(wav: np.ndarray, sr: int, settings: "F0Settings") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RMVPE on mono audio [samples] at ``sr`` (resampled to 16 kHz) on ``settings.torch_device()``.

    Returns ``(times_s [T], f0_hz [T], confidence [T])``, ``T = samples_16k // 160 + 1``, frame ``i`` centred at
    ``i * 10`` ms: a pitch for every frame (searched over the model's whole range, as RVC does; the caller
    drops values outside ``f0_min..f0_max``) and the best bin's salience in 0..1."""
    import torch

    from ai_singer.features.rmvpe_model import HOP, SAMPLE_RATE

    path = weights_path(settings)
    device = settings.torch_device()
    model = _model(str(path.resolve()), path.stat().st_mtime_ns, str(device))
    wav = np.asarray(wav, dtype=np.float32)
    if sr != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(wav, sr, SAMPLE_RATE)
    f0, confidence = model.track(torch.from_numpy(np.ascontiguousarray(wav)).to(device))
    times = np.arange(f0.shape[0]) * HOP / SAMPLE_RATE
    return times, f0.cpu().numpy(), confidence.cpu().numpy()
