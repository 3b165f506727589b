"""Transformer encoder with windowed relative positional attention (the VITS text-encoder style).

Every head attends to the whole (masked) sequence; in addition, keys and values carry a learned
embedding of the relative offset ``j - i`` for offsets within ``±window_size`` (offsets farther apart
get no positional term). The relative terms are computed with a gather/scatter over an index matrix,
which costs the same ``O(T^2)`` memory as the attention weights themselves.

Shapes: ``x`` [B, C, T], ``mask`` [B, 1, T] float (1 = valid).
LoRA-adaptable Conv1d names: ``query_proj``, ``key_proj``, ``value_proj``, ``out_proj`` (attention),
``conv_in``, ``conv_out`` (feed-forward).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ai_singer.model.layers import ChannelLayerNorm


def relative_index(n_frames: int, window_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For every (query i, key j): the embedding row ``clamp(j - i, -w, w) + w`` (long [T, T]) and
    whether the offset lies inside the window (bool [T, T])."""
    positions = torch.arange(n_frames, device=device)
    offset = positions.unsqueeze(0) - positions.unsqueeze(1)  # [i, j] -> j - i
    inside = offset.abs() <= window_size
    return offset.clamp(-window_size, window_size) + window_size, inside


class RelativeMultiHeadAttention(nn.Module):
    """Multi-head self-attention with windowed relative position embeddings on keys and values.

    ``forward(x [B, C, T], mask [B, 1, T]) -> [B, C, T]``.
    """

    def __init__(self, channels: int, n_heads: int, window_size: int = 4, p_dropout: float = 0.0):
        super().__init__()
        if channels % n_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = channels // n_heads
        self.window_size = window_size
        self.query_proj = nn.Conv1d(channels, channels, 1)
        self.key_proj = nn.Conv1d(channels, channels, 1)
        self.value_proj = nn.Conv1d(channels, channels, 1)
        self.out_proj = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(p_dropout)
        scale = self.head_dim ** -0.5
        # shared by all heads: [2w+1, head_dim]
        self.relative_key = nn.Parameter(torch.randn(2 * window_size + 1, self.head_dim) * scale)
        self.relative_value = nn.Parameter(torch.randn(2 * window_size + 1, self.head_dim) * scale)
        for proj in (self.query_proj, self.key_proj, self.value_proj):
            nn.init.xavier_uniform_(proj.weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, channels, n_frames = x.shape
        heads, head_dim = self.n_heads, self.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, h, T, d]
            return t.view(batch, heads, head_dim, n_frames).transpose(2, 3)

        query = split(self.query_proj(x)) / math.sqrt(head_dim)
        key = split(self.key_proj(x))
        value = split(self.value_proj(x))

        scores = query @ key.transpose(-2, -1)  # [B, h, T, T]
        index, inside = relative_index(n_frames, self.window_size, x.device)
        relative_scores = query @ self.relative_key.t()  # [B, h, T, 2w+1]
        gathered = torch.gather(relative_scores, -1, index.expand(batch, heads, n_frames, n_frames))
        scores = scores + gathered * inside

        pair_mask = (mask.unsqueeze(-1) * mask.unsqueeze(-2)) > 0  # [B, 1, T, T]
        scores = scores.masked_fill(~pair_mask, -1e4)
        weights = self.dropout(torch.softmax(scores, dim=-1))

        out = weights @ value  # [B, h, T, d]
        # sum the weights that fall on each in-window offset, then add their value embeddings
        offset_weights = torch.zeros(batch, heads, n_frames, 2 * self.window_size + 1, device=x.device,
                                     dtype=weights.dtype)
        offset_weights = offset_weights.scatter_add(
            -1, index.expand(batch, heads, n_frames, n_frames), weights * inside)
        out = out + offset_weights @ self.relative_value
        out = out.transpose(2, 3).reshape(batch, channels, n_frames)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Two masked convolutions with a ReLU between: ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0):
        super().__init__()
        self.padding = (kernel_size - 1) // 2, kernel_size // 2
        self.conv_in = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_out = nn.Conv1d(filter_channels, channels, kernel_size)
        self.dropout = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(F.pad(x * mask, self.padding))
        x = self.dropout(torch.relu(x))
        x = self.conv_out(F.pad(x * mask, self.padding))
        return x * mask


class EncoderLayer(nn.Module):
    """Post-norm transformer layer: attention and feed-forward, each with a residual and a LayerNorm."""

    def __init__(self, channels: int, filter_channels: int, n_heads: int, kernel_size: int,
                 p_dropout: float, window_size: int):
        super().__init__()
        self.attention = RelativeMultiHeadAttention(channels, n_heads, window_size, p_dropout)
        self.attention_norm = ChannelLayerNorm(channels)
        self.feed_forward = FeedForward(channels, filter_channels, kernel_size, p_dropout)
        self.feed_forward_norm = ChannelLayerNorm(channels)
        self.dropout = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        x = self.feed_forward_norm(x + self.dropout(self.feed_forward(x, mask)))
        return x


class TransformerEncoder(nn.Module):
    """A stack of ``n_layers`` :class:`EncoderLayer`: ``forward(x [B, C, T], mask [B, 1, T]) -> [B, C, T]``
    (masked). Layers are ``layers.N``."""

    def __init__(self, channels: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int = 3,
                 p_dropout: float = 0.1, window_size: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(channels, filter_channels, n_heads, kernel_size, p_dropout, window_size)
            for _ in range(n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask
        for layer in self.layers:
            x = layer(x, mask)
        return x * mask
