"""The two encoders of the VAE.

* :class:`PriorEncoder` (used at inference): content features + coarse F0 (+ voicing, volume) ->
  transformer -> mean and log-std of the prior over the latent ``z_p``.
* :class:`PosteriorEncoder` (training only): linear spectrogram -> speaker-conditioned WaveNet ->
  mean and log-std of the posterior, and a sample ``z``.

Shapes: ``B`` batch, ``T`` frames, ``D`` content dim, ``F = n_fft // 2 + 1``, ``I`` inter channels.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ai_singer.model.attention import TransformerEncoder
from ai_singer.model.layers import WaveNet, voiced_frames


def coarse_f0(f0: torch.Tensor, voiced: torch.Tensor, n_bins: int, f0_min: float, f0_max: float) -> torch.Tensor:
    """Quantise log-F0 into ``n_bins`` classes: bin 0 = unvoiced, bins ``1 .. n_bins-1`` evenly spaced in
    log-frequency between ``f0_min`` and ``f0_max`` (values outside are clamped).

    ``f0`` [B, T] Hz, ``voiced`` [B, T] (0/1 or bool) -> long [B, T].
    """
    log_f0 = torch.log(f0.clamp_min(1e-3))
    low, high = math.log(f0_min), math.log(f0_max)
    position = (log_f0 - low) / (high - low)  # 0 at f0_min, 1 at f0_max
    bins = 1 + torch.round(position.clamp(0.0, 1.0) * (n_bins - 2)).long()
    return torch.where(voiced_frames(f0, voiced), bins, torch.zeros_like(bins))


def mel_coarse_f0(f0: torch.Tensor, n_bins: int, f0_min: float, f0_max: float) -> torch.Tensor:
    """so-vits-svc's quantisation: ``n_bins - 1`` classes evenly spaced on the mel scale
    (``1127 ln(1 + f / 700)``) between ``f0_min`` (bin 1) and ``f0_max`` (bin ``n_bins - 1``), rounded half
    up; F0 at or below ``f0_min`` (including 0 Hz) is bin 1 and bin 0 is never used. The voicing flag is not
    consulted (so-vits-svc feeds interpolated F0 and a separate voiced flag).

    ``f0`` [B, T] Hz -> long [B, T]. The arithmetic follows so-vits-svc's order in float32, so the bins
    are the same as theirs.
    """
    mel_min = 1127 * math.log(1 + f0_min / 700)
    mel_max = 1127 * math.log(1 + f0_max / 700)
    mel = 1127 * (1 + f0 / 700).log()
    scaled = torch.where(mel > 0, (mel - mel_min) * (n_bins - 2) / (mel_max - mel_min) + 1, mel)
    return torch.floor(scaled.clamp(1.0, float(n_bins - 1)) + 0.5).long()


def log_volume(volume: torch.Tensor, floor: float = 1e-5) -> torch.Tensor:
    """Frame RMS (linear) -> ``log10(max(volume, floor))``, about -5 (silence) .. 0 (full scale)."""
    return torch.log10(volume.clamp_min(floor))


#: How the prior encoder reads the frame volume: ``log10`` (ai_singer: a 1x1 conv of ``log10(RMS)``),
#: ``linear`` (so-vits-svc 4.1's ``vol_embedding``: a Linear(1, hidden) of the RMS itself), ``none``
#: (so-vits-svc 4.0 and so-vits-svc-fork: no volume input, no ``volume_proj``).
VOLUME_EMBEDDINGS = ("log10", "linear", "none")
#: How F0 becomes the prior's pitch class: ``log`` (:func:`coarse_f0`), ``mel`` (:func:`mel_coarse_f0`).
F0_COARSE_SCALES = ("log", "mel")
#: How the summed inputs (content projection + pitch (+ voicing, volume) embeddings) enter the transformer:
#: ``sum`` as they are (ai_singer, so-vits-svc); ``scaled_leaky_relu`` multiplied by ``sqrt(hidden_channels)``
#: and passed through LeakyReLU(0.1) (RVC's ``TextEncoder``).
PRIOR_INPUTS = ("sum", "scaled_leaky_relu")
#: Slope of the LeakyReLU of ``prior_input: scaled_leaky_relu``.
PRIOR_INPUT_SLOPE = 0.1


class PriorEncoder(nn.Module):
    """Content + pitch + volume -> prior mean and log-std.

    ``forward(content [B, D, T], f0 [B, T], voiced [B, T], volume [B, T], mask [B, 1, T])
    -> (mean [B, I, T], log_std [B, I, T])`` (both masked).

    Module names: ``content_proj`` (Conv1d), ``f0_embedding``/``voiced_embedding`` (Embedding; the latter
    absent with ``voiced_embedding=False``), ``volume_proj`` (Conv1d; absent with ``volume_embedding="none"``),
    ``encoder`` (:class:`TransformerEncoder`), ``out_proj`` (Conv1d). ``volume_embedding`` and ``f0_coarse``
    pick so-vits-svc's conventions (see :data:`VOLUME_EMBEDDINGS`, :data:`F0_COARSE_SCALES`);
    ``voiced_embedding=False`` and ``prior_input="scaled_leaky_relu"`` (:data:`PRIOR_INPUTS`) RVC's.
    """

    def __init__(self, content_dim: int, hidden_channels: int, inter_channels: int, filter_channels: int,
                 n_heads: int, n_layers: int, kernel_size: int, p_dropout: float, window_size: int,
                 content_kernel_size: int, f0_bins: int, f0_min: float, f0_max: float,
                 volume_embedding: str, f0_coarse: str, voiced_embedding: bool, prior_input: str):
        super().__init__()
        if volume_embedding not in VOLUME_EMBEDDINGS:
            raise ValueError(f"volume_embedding must be one of {VOLUME_EMBEDDINGS}, got {volume_embedding!r}")
        if f0_coarse not in F0_COARSE_SCALES:
            raise ValueError(f"f0_coarse must be one of {F0_COARSE_SCALES}, got {f0_coarse!r}")
        if prior_input not in PRIOR_INPUTS:
            raise ValueError(f"prior_input must be one of {PRIOR_INPUTS}, got {prior_input!r}")
        self.f0_bins, self.f0_min, self.f0_max = f0_bins, f0_min, f0_max
        self.volume_embedding, self.f0_coarse, self.prior_input = volume_embedding, f0_coarse, prior_input
        self.input_scale = math.sqrt(hidden_channels)
        self.inter_channels = inter_channels
        self.content_proj = nn.Conv1d(content_dim, hidden_channels, content_kernel_size,
                                      padding=content_kernel_size // 2)
        self.f0_embedding = nn.Embedding(f0_bins, hidden_channels)
        self.voiced_embedding = nn.Embedding(2, hidden_channels) if voiced_embedding else None
        self.volume_proj = nn.Conv1d(1, hidden_channels, 1) if volume_embedding != "none" else None
        self.encoder = TransformerEncoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size,
                                          p_dropout, window_size)
        self.out_proj = nn.Conv1d(hidden_channels, 2 * inter_channels, 1)

    def forward(self, content: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, volume: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.f0_coarse == "mel":
            pitch_class = mel_coarse_f0(f0, self.f0_bins, self.f0_min, self.f0_max)
        else:
            pitch_class = coarse_f0(f0, voiced, self.f0_bins, self.f0_min, self.f0_max)
        x = self.content_proj(content * mask)
        x = x + self.f0_embedding(pitch_class).transpose(1, 2)
        if self.voiced_embedding is not None:
            x = x + self.voiced_embedding((voiced > 0.5).long()).transpose(1, 2)
        if self.volume_proj is not None:
            level = log_volume(volume) if self.volume_embedding == "log10" else volume
            x = x + self.volume_proj(level.unsqueeze(1))
        if self.prior_input == "scaled_leaky_relu":
            x = F.leaky_relu(x * self.input_scale, PRIOR_INPUT_SLOPE)
        x = self.encoder(x * mask, mask)
        stats = self.out_proj(x) * mask
        mean, log_std = stats.split(self.inter_channels, dim=1)
        return mean, log_std


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> posterior mean, log-std and a reparameterised sample.

    ``forward(spec [B, F, T], mask [B, 1, T], g [B, gin]) -> (z, mean, log_std)``, each [B, I, T], masked.
    Module names: ``input_proj``, ``wavenet`` (:class:`WaveNet`), ``out_proj``.
    """

    def __init__(self, spec_channels: int, inter_channels: int, hidden_channels: int, kernel_size: int,
                 dilation_rate: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.inter_channels = inter_channels
        self.input_proj = nn.Conv1d(spec_channels, hidden_channels, 1)
        self.wavenet = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.out_proj = nn.Conv1d(hidden_channels, 2 * inter_channels, 1)

    def forward(self, spec: torch.Tensor, mask: torch.Tensor, g: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.input_proj(spec) * mask
        x = self.wavenet(x, mask, g)
        stats = self.out_proj(x) * mask
        mean, log_std = stats.split(self.inter_channels, dim=1)
        z = (mean + torch.randn_like(mean) * torch.exp(log_std)) * mask
        return z, mean, log_std
