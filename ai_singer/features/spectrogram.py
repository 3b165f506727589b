"""Linear (magnitude) and log-mel spectrograms on the model's frame grid.

The signal is reflect-padded by ``(n_fft - hop) // 2`` on the left and ``n_fft - hop - (n_fft - hop) // 2``
on the right, then transformed with ``torch.stft(center=False)``: a clip of ``N`` samples gives exactly
``N // hop`` frames and frame ``i`` is centred at sample ``(i + 0.5) * hop`` (for even ``n_fft - hop``).

Hann windows and mel filter banks are cached in a small dict owned by this module, keyed by
(kind, parameters, device, dtype), always built outside inference mode: a tensor first made inside
``torch.inference_mode`` (a conversion) and cached would break a later training step that records autograd
("Inference tensors cannot be saved for backward"). Nothing global (``torch.stft`` etc.) is patched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_CACHE: dict[tuple, torch.Tensor] = {}
_CACHE_LIMIT = 32  # a handful of (device, dtype, params) combinations in practice


def _cached(key: tuple, build) -> torch.Tensor:
    tensor = _CACHE.get(key)
    if tensor is None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        with torch.inference_mode(False):
            tensor = _CACHE[key] = build()
    return tensor


def hann_window(win: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _cached(("hann", win, device, dtype), lambda: torch.hann_window(win, device=device, dtype=dtype))


def mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    def build() -> torch.Tensor:
        import librosa

        basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        return torch.from_numpy(basis).to(device=device, dtype=dtype)

    return _cached(("mel", sr, n_fft, n_mels, float(fmin), None if fmax is None else float(fmax), device, dtype), build)


def linear_spectrogram(wav: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """Magnitude STFT.

    Args:
        wav: audio [B, samples] (or [samples]); float. Half precision is computed in float32.
        n_fft: FFT size; ``hop``: hop in samples; ``win``: Hann window length (<= n_fft).

    Returns:
        [B, n_fft // 2 + 1, samples // hop] (or [n_fft // 2 + 1, frames] for 1-D input), magnitude
        ``sqrt(re^2 + im^2 + 1e-9)`` so gradients stay finite at zero.
    """
    if win > n_fft or hop > n_fft or hop <= 0:
        raise ValueError(f"need 0 < hop <= n_fft and win <= n_fft, got n_fft={n_fft}, hop={hop}, win={win}")
    squeeze = wav.dim() == 1
    if squeeze:
        wav = wav.unsqueeze(0)
    if wav.dim() != 2:
        raise ValueError(f"linear_spectrogram expects audio [B, samples], got shape {tuple(wav.shape)}")
    if wav.dtype in (torch.float16, torch.bfloat16) or not wav.is_floating_point():
        wav = wav.float()
    left = (n_fft - hop) // 2
    right = n_fft - hop - left
    if wav.shape[-1] <= max(left, right):
        raise ValueError(f"audio of {wav.shape[-1]} samples is too short for a spectrogram with n_fft={n_fft}, "
                         f"hop={hop} (needs more than {max(left, right)} samples)")
    padded = F.pad(wav.unsqueeze(1), (left, right), mode="reflect").squeeze(1)
    spec = torch.stft(padded, n_fft, hop_length=hop, win_length=win, window=hann_window(win, wav.device, wav.dtype),
                      center=False, normalized=False, onesided=True, return_complex=True)
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    return magnitude.squeeze(0) if squeeze else magnitude


def linear_to_mel(magnitude: torch.Tensor, sr: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                  fmax: float | None = None) -> torch.Tensor:
    """Log-mel from a magnitude spectrogram [..., n_fft // 2 + 1, T] -> [..., n_mels, T]:
    ``log(clamp(mel_basis @ magnitude, min=1e-5))``."""
    basis = mel_basis(sr, n_fft, n_mels, fmin, fmax, magnitude.device, magnitude.dtype)
    return torch.log(torch.clamp(torch.matmul(basis, magnitude), min=1e-5))


def mel_spectrogram(wav: torch.Tensor, sr: int, n_fft: int, hop: int, win: int, n_mels: int, fmin: float = 0.0,
                    fmax: float | None = None) -> torch.Tensor:
    """Log-mel spectrogram (librosa Slaney mel filters on the magnitude STFT).

    Args:
        wav: audio [B, samples] (or [samples]).
        sr: sample rate; ``n_fft``, ``hop``, ``win`` as in :func:`linear_spectrogram`;
        n_mels: mel bands; ``fmin``/``fmax``: band edges in Hz (``fmax=None`` = sr / 2).

    Returns:
        [B, n_mels, samples // hop] natural-log magnitudes, clamped at ``log(1e-5)``.
    """
    return linear_to_mel(linear_spectrogram(wav, n_fft, hop, win), sr, n_fft, n_mels, fmin, fmax)
