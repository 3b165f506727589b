"""The NSF-HiFiGAN decoder's upsampling stages for CPU inference in channels-last layout.

A CPU's convolution library (oneDNN) computes in a channels-last layout (``[B, L, C]`` in memory). torch's 1-D
convolutions hand it ``[B, C, L]`` tensors, so every call reorders its input, output and weights there and back;
in the decoder's upsampling stages (the residual blocks at audio rate: ~90 % of a conversion's time) that reordering
costs more than the arithmetic, and most of what bfloat16 could gain. :class:`ChannelsLastUpsampling` runs the same
stages as 2-D convolutions over ``[B, C, 1, L]`` tensors in ``torch.channels_last`` memory format (``[B, 1, L, C]``
in memory, what oneDNN uses natively), with the weights reshaped (and cast) once, when it is made.

The arithmetic is :meth:`NSFHiFiGAN.upsample`'s: the same convolutions, leaky ReLUs and sums in the same dtypes
(``block_dtype`` as there: the residual blocks' convolutions in it, their sums and the rest in float32), so the
audio is the same up to float rounding (the convolutions sum in another order). Inference only: made once the
decoder's weights are final (it reshapes them once; later changes to the decoder may or may not reach it, so prepare
again after any), no gradients flow, and only a decoder of plain convolutions (adapters
merged, weight norm removed or not) can be prepared: :meth:`ChannelsLastUpsampling.prepare` returns None for one
that carries unmerged adapters, hooks or other modules, whose outputs this path would miss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ai_singer.model.decoder import LEAKY_SLOPE, NSFHiFiGAN, ResBlock

#: Module types the prepared stages reproduce exactly (anything else inside the stages: not prepared).
_PLAIN_TYPES = (nn.ModuleList, ResBlock)


@dataclass(frozen=True)
class _Conv:
    """One convolution as a 2-D one over ``[B, C, 1, L]``: weight ``[O, I, 1, k]`` (transposed: ``[I, O, 1, k]``)
    in channels-last format, bias ``[O]`` or None, and its stride, padding and dilation along ``L``."""
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: int
    padding: int
    dilation: int
    groups: int
    transposed: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, self.weight, self.bias, stride=(1, self.stride), padding=(0, self.padding),
                                      groups=self.groups, dilation=(1, self.dilation))
        return F.conv2d(x, self.weight, self.bias, stride=(1, self.stride), padding=(0, self.padding),
                        dilation=(1, self.dilation), groups=self.groups)


def _plain_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a Conv1d / ConvTranspose1d this path reproduces: zero padding given as a number, no
    output padding, no hooks (weight norm's parametrization is fine: its weight is read once)."""
    if not isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) or module.padding_mode != "zeros":
        return False
    if isinstance(module.padding, str) or any(module.output_padding if isinstance(module, nn.ConvTranspose1d) else ()):
        return False
    return True


def _prepare_conv(module: nn.Conv1d | nn.ConvTranspose1d, dtype: torch.dtype | None) -> _Conv:
    """``module``'s weight and bias as a channels-last 2-D convolution's, cast to ``dtype`` (None: as they are)."""
    with torch.no_grad():
        weight = module.weight.detach().unsqueeze(2)
        bias = None if module.bias is None else module.bias.detach()
        if dtype is not None:
            weight = weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        weight = weight.contiguous(memory_format=torch.channels_last)
    return _Conv(weight, bias, int(module.stride[0]), int(module.padding[0]), int(module.dilation[0]),
                 int(module.groups), isinstance(module, nn.ConvTranspose1d))


@dataclass(frozen=True)
class _Stage:
    """One upsampling stage: the upsampler, the source's conv to this rate, and per residual block its (dilated,
    plain) conv pairs."""
    upsampler: _Conv
    source_conv: _Conv
    blocks: tuple[tuple[tuple[_Conv, _Conv], ...], ...]


class ChannelsLastUpsampling:
    """``decoder``'s upsampling stages in channels-last layout: ``(x [B, C, T], source [B, 1, T*hop]) ->
    [B, 1, T*hop]``, what ``decoder.upsample(x, source, block_dtype)`` gives (up to float rounding).

    Make it with :meth:`prepare`, after the decoder's weights are final (adapters merged): it keeps the weights
    reshaped (copies where the layout or ``block_dtype`` differs: ~22 MB in bfloat16 for ``model=base``'s blocks)."""

    def __init__(self, decoder: NSFHiFiGAN, block_dtype: torch.dtype | None = None):
        self.block_dtype = block_dtype
        self.n_kernels = decoder.n_kernels
        stages = []
        for upsampler, source_conv, blocks in zip(decoder.upsamplers, decoder.source_convs,
                                                  decoder.resblocks_per_stage()):
            stages.append(_Stage(
                _prepare_conv(upsampler, None), _prepare_conv(source_conv, None),
                tuple(tuple((_prepare_conv(dilated, block_dtype), _prepare_conv(plain, block_dtype))
                            for dilated, plain in zip(block.dilated_convs, block.convs)) for block in blocks)))
        self.stages = tuple(stages)
        self.output_conv = _prepare_conv(decoder.output_conv, None)

    @classmethod
    def prepare(cls, decoder: nn.Module, block_dtype: torch.dtype | None = None) -> "ChannelsLastUpsampling | None":
        """The prepared stages of ``decoder``, or None where this path cannot reproduce them: not an
        :class:`NSFHiFiGAN`, or its stages hold anything but plain residual blocks and convolutions (unmerged
        adapters, bottleneck adapters, hooks)."""
        if not isinstance(decoder, NSFHiFiGAN):
            return None
        parts = (decoder.upsamplers, decoder.source_convs, decoder.resblocks, decoder.output_conv)
        if not all(_reproducible(part) for part in parts):
            return None
        return cls(decoder, block_dtype)

    def __call__(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, T] (after the decoder's ``input_conv``), ``source`` [B, 1, T*hop] -> [B, 1, T*hop]."""
        dtype = self.block_dtype
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # [B, C, 1, T]
        source = source.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        for stage in self.stages:
            x = stage.upsampler(F.leaky_relu(x, LEAKY_SLOPE))
            x = x + stage.source_conv(source)
            total = None
            for block in stage.blocks:
                h = x
                for dilated, plain in block:
                    inner = F.leaky_relu(h, LEAKY_SLOPE)
                    y = dilated(inner if dtype is None else inner.to(dtype))
                    y = plain(F.leaky_relu(y, LEAKY_SLOPE))
                    # the sums in h's dtype (a bfloat16 y is promoted as it is added); in place after the first,
                    # which must not change x (every block starts from it): ~20 % less time than out of place
                    h = h + y if h is x else h.add_(y)
                total = h if total is None else total.add_(h)
            x = total.div_(self.n_kernels)
        x = self.output_conv(F.leaky_relu(x))
        return torch.tanh(x).squeeze(2).contiguous()


def _reproducible(module: nn.Module) -> bool:
    """Whether ``module`` (and what it holds) is plain residual blocks and convolutions without hooks. A conv's
    weight norm (torch's parametrization, a child of the conv) is fine: its ``weight`` accounts for it."""
    if module._forward_hooks or module._forward_pre_hooks:
        return False
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        return _plain_conv(module)
    return type(module) in _PLAIN_TYPES and all(_reproducible(child) for child in module.children())
