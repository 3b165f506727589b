"""Building blocks shared by the model's parts: masks, segment slicing, weight norm, channel LayerNorm and
the gated dilated convolution stack ("WaveNet") used by the posterior encoder and the flow.

Shapes use ``B`` batch, ``C`` channels, ``T`` frames. Masks are float ``[B, 1, T]`` (1 = valid frame).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the length of an odd-kernel, stride-1 convolution."""
    return (kernel_size * dilation - dilation) // 2


def voiced_frames(f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: the frames that sound a pitch (``voiced`` flag set and F0 above 0)."""
    return (voiced > 0.5) & (f0 > 0)


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """``lengths`` [B] (long) -> bool [B, max_length], True on the first ``lengths[b]`` positions."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def frame_mask(lengths: torch.Tensor | None, batch_size: int, n_frames: int, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """Float mask [B, 1, T] from ``lengths`` [B]; all ones when ``lengths`` is None."""
    if lengths is None:
        return torch.ones(batch_size, 1, n_frames, device=device, dtype=dtype)
    if lengths.shape != (batch_size,):
        raise ValueError(f"lengths must have shape [{batch_size}], got {tuple(lengths.shape)}")
    if int(lengths.max()) > n_frames or int(lengths.min()) < 1:
        raise ValueError(f"lengths must lie in [1, {n_frames}] (the number of frames), got "
                         f"min {int(lengths.min())}, max {int(lengths.max())}")
    return sequence_mask(lengths.to(device), n_frames).unsqueeze(1).to(dtype)


def noise_rows(shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator] | None,
               lengths: torch.Tensor | None, dtype: torch.dtype, device: torch.device,
               draw: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Random noise of ``shape`` = [B, ..., L] on ``device``: standard normal (``torch.randn``, looked up at call
    time), or what ``draw`` (a torch sampler taking ``size, generator=, dtype=, device=``, e.g. ``torch.rand``) gives.

    ``generator``: ``None`` (torch's global generator, drawn on ``device``), one CPU generator for the whole
    tensor, or one CPU generator per row: then row ``b`` is drawn from ``generator[b]`` for its first
    ``lengths[b]`` positions only (zeros past them; all ``L`` without ``lengths``), so a row's noise does not
    depend on which other rows share the batch or how far it is padded.
    """
    draw = draw if draw is not None else torch.randn
    if generator is None or isinstance(generator, torch.Generator):
        noise = draw(shape, generator=generator, dtype=dtype, device="cpu" if generator is not None else device)
        return noise.to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"one generator per row: got {len(generator)} generators for {shape[0]} rows")
    noise = torch.zeros(shape, dtype=dtype)
    for row, row_generator in enumerate(generator):
        n = shape[-1] if lengths is None else int(lengths[row])
        noise[row, ..., :n] = draw((*shape[1:-1], n), generator=row_generator, dtype=dtype)
    return noise.to(device)


def random_segment_starts(lengths: torch.Tensor, segment_frames: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Random start frame per item so that a ``segment_frames`` window fits inside the valid frames.

    ``lengths`` [B] -> long [B] with ``0 <= start <= max(lengths[b] - segment_frames, 0)``.
    """
    max_start = (lengths.long() - segment_frames).clamp_min(0).to(torch.float64)
    uniform = torch.rand(lengths.shape, generator=generator, dtype=torch.float64).to(lengths.device)
    return torch.floor(uniform * (max_start + 1)).clamp(max=max_start).long()


def slice_segments(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """Cut ``x[b, ..., starts[b] : starts[b] + size]`` for every item.

    ``x`` [B, ..., L], ``starts`` [B] long -> [B, ..., size]. ``x`` is zero-padded on the right when a
    window runs past its end (a clip shorter than the segment).
    """
    length = x.shape[-1]
    need = int(starts.max()) + size if starts.numel() else size
    if need > length:
        x = F.pad(x, (0, need - length))
    offsets = torch.arange(size, device=x.device)
    index = (starts.to(x.device).view(-1, *([1] * (x.dim() - 1))) + offsets)
    index = index.expand(*x.shape[:-1], size)
    return torch.gather(x, -1, index)


def init_conv_weights(module: nn.Module, std: float = 0.01) -> None:
    """HiFi-GAN's initialisation: normal(0, std) on conv weights (call before weight norm)."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        module.weight.data.normal_(0.0, std)


def with_weight_norm(module: nn.Module) -> nn.Module:
    """``module`` with ``torch.nn.utils.parametrizations.weight_norm`` on its ``weight`` (in place)."""
    return weight_norm(module)


def remove_all_weight_norm(root: nn.Module) -> int:
    """Bake every weight-norm parametrisation under ``root`` into a plain ``weight`` (in place).

    Returns how many modules were changed. Outputs are unchanged up to float rounding.
    """
    removed = 0
    for module in root.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            removed += 1
    return removed


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``[B, C, T]`` tensor."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class WaveNet(nn.Module):
    """Non-causal WaveNet: gated dilated convolutions with residual and skip paths, speaker-conditioned.

    ``forward(x [B, hidden, T], mask [B, 1, T], g [B, gin] | None) -> [B, hidden, T]`` (the sum of the
    skip outputs, masked). LoRA-adaptable Conv1d names: ``dilated_convs.N``, ``res_skip_convs.N``,
    ``speaker_proj``.
    """

    def __init__(self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, p_dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WaveNet kernel_size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.dropout = nn.Dropout(p_dropout)
        self.dilated_convs = nn.ModuleList()
        self.res_skip_convs = nn.ModuleList()
        for i in range(n_layers):
            dilation = dilation_rate ** i
            self.dilated_convs.append(with_weight_norm(nn.Conv1d(
                hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation,
                padding=same_padding(kernel_size, dilation))))
            # the last layer only feeds the skip path
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_convs.append(with_weight_norm(nn.Conv1d(hidden_channels, out, 1)))
        self.speaker_proj = (with_weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
                             if gin_channels > 0 else None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.hidden_channels
        skip_sum = torch.zeros_like(x)
        conditioning = None
        if self.speaker_proj is not None:
            if g is None:
                raise ValueError("this WaveNet is speaker-conditioned: pass g [B, gin_channels]")
            conditioning = self.speaker_proj(g.unsqueeze(-1))  # [B, 2*hidden*n_layers, 1]
        for i in range(self.n_layers):
            pre = self.dilated_convs[i](x)
            if conditioning is not None:
                pre = pre + conditioning[:, 2 * hidden * i: 2 * hidden * (i + 1)]
            activation = torch.tanh(pre[:, :hidden]) * torch.sigmoid(pre[:, hidden:])
            activation = self.dropout(activation)
            res_skip = self.res_skip_convs[i](activation)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :hidden]) * mask
                skip_sum = skip_sum + res_skip[:, hidden:]
            else:
                skip_sum = skip_sum + res_skip
        return skip_sum * mask
