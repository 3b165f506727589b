"""``loss.content``: a loss on the words. The generated segment and the recorded one go through Whisper's
encoder (frozen, differentiable: :mod:`ai_singer.features.whisper_torch`) and the L1 between the two sets of
hidden states is the loss, so the generator is told directly when it smears a consonant that the mel L1
barely sees (BENCHMARKS.md "Real voices": the mel loss plateaus where Whisper still misreads a third of the
characters).

Both segments are encoded the same way (resampled to 16 kHz by FFT, no padding to 30 s, positions from the
segment's start), so the loss is 0 exactly when the generated audio's features equal the recording's.
"""
from __future__ import annotations

import torch
from torch import nn

from ai_singer.features.whisper_torch import (WHISPER_SAMPLE_RATE, WhisperTorchEncoder, resample_fft,
                                             whisper_log_mel)


class ContentLoss(nn.Module):
    """L1 between Whisper encoder states of generated and recorded audio.

    Args:
        encoder_path: a faster-whisper folder or ``wheel:base`` / ``wheel:tiny.en``.
        sample_rate: the model's sample rate (the audio given to :meth:`forward`).
    """

    def __init__(self, encoder_path: str, sample_rate: int):
        super().__init__()
        self.encoder = WhisperTorchEncoder.from_folder(encoder_path).eval().requires_grad_(False)
        self.sample_rate = int(sample_rate)
        self.encoder_path = str(encoder_path)

    def log_mel(self, wav: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """[B, 1, S] or [B, S] at ``sample_rate`` (default: the model's) -> the encoder's input, Whisper's log-mel
        [B, n_mels, S16 // 160] of the audio resampled to 16 kHz (S16 samples)."""
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        wav16k = resample_fft(wav.reshape(wav.shape[0], -1).float(), rate, WHISPER_SAMPLE_RATE)
        return whisper_log_mel(wav16k, self.encoder.n_mels)

    def features(self, wav: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """[B, 1, S] or [B, S] at ``sample_rate`` (default: the model's) -> Whisper hidden states
        [B, ceil(S16 / 320), width]."""
        return self.encoder(self.log_mel(wav, sample_rate))

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Scalar loss; gradients flow into ``fake`` only."""
        with torch.no_grad():
            target = self.features(real)
        return torch.nn.functional.l1_loss(self.features(fake), target)
