"""Prefix and prompt tuning for the prior encoder's relative-position attention.

Both give every adapted attention layer ``L`` extra key/value vectors ("memory") that its queries attend to,
with zero-initialised gates (LLaMA-Adapter's zero-init attention), so a fresh adapter is exactly the base::

    out = attention(x) + out_proj.weight · (gate_h · softmax(q K_m^T / sqrt(d)) V_m)      (per head h)

The memory has its own softmax, beside the base's: the base attention over the real frames — scores, the
relative-position terms (offsets ``j - i`` within ``±window``) and masking — is untouched, and the memory
carries no position, so no relative index needs shifting by the prefix length (the bug of concatenating a
prefix to the keys of a relative-attention layer). Each frame's memory term depends only on that frame's
query, so the layer stays shift-equivariant (tested).

* ``prefix``: each layer learns its memory directly: ``prefix_key``, ``prefix_value`` ``[h, L, d]`` and
  ``prefix_gate`` ``[h]`` (targets: :class:`RelativeMultiHeadAttention` modules).
* ``prompt``: one set of ``L`` learned vectors in the encoder's hidden space, ``prompt_vectors`` ``[C, L]``,
  which every layer reads through its own frozen ``key_proj``/``value_proj`` (targets: the
  :class:`TransformerEncoder`); the vectors are not themselves passed through the layers. Fewer parameters
  than ``prefix`` (``L*C`` + gates), less freedom.

Neither merges into the weights: the memory runs at inference (one extra ``[T, L]`` attention per layer).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ai_singer.model.attention import RelativeMultiHeadAttention, TransformerEncoder

#: Parameter-name segments of prefix/prompt tuning.
PREFIX_SEGMENTS = ("prefix_key", "prefix_value", "prefix_gate", "prompt_vectors")


class MemoryAttention(nn.Module):
    """A frozen :class:`RelativeMultiHeadAttention` plus a gated memory (module docstring).
    ``forward(x [B, C, T], mask [B, 1, T]) -> [B, C, T]``. With ``length`` the memory is this layer's own
    ``prefix_key``/``prefix_value``; without, :class:`PromptEncoder` hands it over before each forward."""

    def __init__(self, attention: RelativeMultiHeadAttention, length: int | None = None):
        super().__init__()
        self.attention = attention
        heads, head_dim = attention.n_heads, attention.head_dim
        reference = attention.query_proj.weight
        options = {"device": reference.device, "dtype": reference.dtype}
        self.prefix_gate = nn.Parameter(torch.zeros(heads, **options))
        if length is not None:
            # like the base's keys: the projections are xavier-initialised on unit-scale (layer-normed) inputs
            self.prefix_key = nn.Parameter(torch.randn(heads, length, head_dim, **options))
            self.prefix_value = nn.Parameter(torch.randn(heads, length, head_dim, **options) / math.sqrt(head_dim))
        self.memory: tuple[torch.Tensor, torch.Tensor] | None = None  # set by PromptEncoder

    def get_base_layer(self) -> RelativeMultiHeadAttention:
        return self.attention

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        base = self.attention
        y = base(x, mask)
        if hasattr(self, "prefix_key"):
            keys, values = self.prefix_key, self.prefix_value
        elif self.memory is not None:
            keys, values = self.memory
        else:
            raise RuntimeError("a prompt MemoryAttention runs inside its PromptEncoder only")
        batch, channels, n_frames = x.shape
        heads, head_dim = base.n_heads, base.head_dim
        query = base.query_proj(x).view(batch, heads, head_dim, n_frames).transpose(2, 3) / math.sqrt(head_dim)
        weights = torch.softmax(query @ keys.transpose(-2, -1), dim=-1)  # [B, h, T, L]
        memory = (weights @ values) * self.prefix_gate.view(1, heads, 1, 1)  # [B, h, T, d]
        memory = memory.transpose(2, 3).reshape(batch, channels, n_frames)
        return y + F.conv1d(memory, base.out_proj.weight)


class PromptEncoder(nn.Module):
    """A frozen :class:`TransformerEncoder` whose attention layers all read ``prompt_vectors`` ``[C, L]``
    (module docstring). ``forward(x [B, C, T], mask [B, 1, T]) -> [B, C, T]``."""

    def __init__(self, encoder: TransformerEncoder, length: int):
        super().__init__()
        reference = encoder.layers[0].attention.query_proj.weight
        channels = reference.shape[0]
        self.encoder = encoder
        self.prompt_vectors = nn.Parameter(torch.randn(channels, length, device=reference.device,
                                                       dtype=reference.dtype))
        for layer in encoder.layers:
            layer.attention = MemoryAttention(layer.attention)

    def get_base_layer(self) -> TransformerEncoder:
        return self.encoder

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_vectors.unsqueeze(0)  # [1, C, L]
        for layer in self.encoder.layers:
            wrapper: MemoryAttention = layer.attention
            base = wrapper.attention

            def heads(t: torch.Tensor) -> torch.Tensor:  # [1, C, L] -> [h, L, d]
                return t.view(base.n_heads, base.head_dim, -1).transpose(1, 2)

            wrapper.memory = (heads(base.key_proj(prompt)), heads(base.value_proj(prompt)))
        try:
            return self.encoder(x, mask)
        finally:
            for layer in self.encoder.layers:
                layer.attention.memory = None
