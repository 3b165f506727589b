"""Bottleneck adapters (Houlsby et al.): a small residual MLP on the output of a frozen block.

``y = block(x)``; ``y + up(gelu(down(y)))`` with ``down`` a 1x1 conv ``C -> r`` and ``up`` a 1x1 conv ``r -> C``
whose weight and bias start at zero, so a fresh adapter gives exactly the block's output. Placed (by
``PeftSettings.target_modules`` patterns, ``conf/peft/adapter.yaml``) after the prior encoder's attention and
feed-forward sub-layers (before their residual + norm) and after each of the decoder's residual blocks.
Not mergeable (the GELU sits between the two projections): the adapter runs at inference, a few 1x1 convs
per block. Parameters: ``<block>.bottleneck_down.weight [r, C, 1]``, ``.bias [r]``,
``<block>.bottleneck_up.weight [C, r, 1]``, ``.bias [C]``; the block's own are under ``<block>.block.``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Parameter-name segments of a bottleneck adapter.
BOTTLENECK_SEGMENTS = ("bottleneck_down", "bottleneck_up")


def output_channels(block: nn.Module) -> int:
    """Channels of ``block``'s output ``[B, C, T]``: those of its last Conv1d (attention's ``out_proj``, the
    feed-forward's ``conv_out``, a resblock's last conv)."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv1d)]
    if not convs:
        raise ValueError(f"{type(block).__name__} has no Conv1d to tell its output channels")
    return int(convs[-1].out_channels)


class Bottleneck(nn.Module):
    """``block`` followed by a zero-initialised bottleneck adapter. ``forward(*args) -> [B, C, T]`` (the
    block's own arguments: ``x [B, C, T]`` and, for attention/feed-forward, ``mask [B, 1, T]``)."""

    def __init__(self, block: nn.Module, width: int):
        super().__init__()
        channels = output_channels(block)
        reference = next(block.parameters())
        self.block = block
        self.bottleneck_down = nn.Conv1d(channels, width, 1, device=reference.device, dtype=reference.dtype)
        self.bottleneck_up = nn.Conv1d(width, channels, 1, device=reference.device, dtype=reference.dtype)
        nn.init.zeros_(self.bottleneck_up.weight)
        nn.init.zeros_(self.bottleneck_up.bias)

    def get_base_layer(self) -> nn.Module:
        return self.block

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        y = self.block(*args, **kwargs)
        return y + self.bottleneck_up(F.gelu(self.bottleneck_down(y)))
