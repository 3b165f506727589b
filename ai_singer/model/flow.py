"""Normalising flow between the posterior latent ``z`` and the prior latent ``z_p``.

A stack of mean-only residual coupling layers (volume preserving), each followed by a channel flip so
that every half of the channels gets transformed. Forward maps ``z -> z_p`` (training, for the KL);
reverse maps ``z_p -> z`` (inference). Shapes: ``x`` [B, I, T], ``mask`` [B, 1, T], ``g`` [B, gin].
"""
from __future__ import annotations

import torch
from torch import nn

from ai_singer.model.layers import WaveNet


class ResidualCoupling(nn.Module):
    """Mean-only affine coupling: the second half of the channels is shifted by a function of the first.

    ``forward(x, mask, g, reverse=False) -> x'`` (same shape). Module names: ``input_proj``,
    ``wavenet`` (with ``dilated_convs.N``, ``res_skip_convs.N``, ``speaker_proj``), ``out_proj``.
    ``out_proj`` starts at zero, so a fresh coupling is the identity.
    """

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int,
                 n_layers: int, gin_channels: int):
        super().__init__()
        if channels % 2 != 0:
            raise ValueError(f"coupling channels must be even, got {channels}")
        self.half = channels // 2
        self.input_proj = nn.Conv1d(self.half, hidden_channels, 1)
        self.wavenet = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.out_proj = nn.Conv1d(hidden_channels, self.half, 1)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        first, second = x.split(self.half, dim=1)
        hidden = self.wavenet(self.input_proj(first) * mask, mask, g)
        shift = self.out_proj(hidden) * mask
        second = (second - shift) * mask if reverse else (second + shift) * mask
        return torch.cat([first, second], dim=1)


class ResidualCouplingFlow(nn.Module):
    """``n_flows`` couplings, each followed by a flip of the channel order (``couplings.N``).

    ``forward(x [B, I, T], mask [B, 1, T], g [B, gin], reverse=False) -> [B, I, T]``;
    ``reverse=True`` is the exact inverse (up to float rounding).
    """

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int,
                 n_layers: int, n_flows: int, gin_channels: int):
        super().__init__()
        self.couplings = nn.ModuleList(
            ResidualCoupling(channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
            for _ in range(n_flows))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        if not reverse:
            for coupling in self.couplings:
                x = torch.flip(coupling(x, mask, g), dims=[1])
        else:
            for coupling in reversed(self.couplings):
                x = coupling(torch.flip(x, dims=[1]), mask, g, reverse=True)
        return x
