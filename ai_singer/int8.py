"""Int8 weight-only storage for the frozen base under ``peft=qlora`` (QLoRA's idea at 8 bits, on the CPU).

Every ``Conv1d``/``Linear``/``ConvTranspose1d`` weight is stored as ``int8`` with one float32 scale per output
channel (symmetric, round-to-nearest: ``W ≈ scale * q``, ``|q| <= 127``) and dequantised on the fly in each
forward; the float weight is gone from memory (a quarter of the bytes, plus the scales). LoRA (full precision)
then wraps these layers as it wraps plain ones. :func:`dequantize` turns them back into plain layers holding
the dequantised weights (what merging a qlora adapter starts from: the merged model is the int8-rounded base
plus the LoRA delta). Buffers: ``<module>.weight_int8`` (int8, the weight's shape), ``<module>.weight_scale``
(float32, broadcastable: ``[out, 1(, 1)]``, ``[1, out, 1]`` for a transposed conv).
"""
from __future__ import annotations

import torch
from torch import nn

QUANTIZABLE = (nn.Conv1d, nn.Linear, nn.ConvTranspose1d)
_CLASSES: dict[type, type] = {}


class Int8Weight:
    """Mixin: ``weight`` read from the int8 buffers (dequantised on every access). An instance built by
    calling the class (peft builds LoRA factors as ``type(base_layer)(...)``) has a plain ``weight``
    parameter, which is returned as it is."""

    @property
    def weight(self) -> torch.Tensor:
        if "weight_int8" not in self._buffers:
            if "weight" in self._parameters:
                return self._parameters["weight"]
            raise AttributeError("weight")  # while torch's __init__ registers it
        return self.weight_int8.to(self.weight_scale.dtype) * self.weight_scale

    def dequantized_class(self) -> type:
        return next(c for c in type(self).__mro__[1:] if c in _CLASSES)


def _int8_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Int8{cls.__name__}", (Int8Weight, cls), {"__module__": __name__})
    return _CLASSES[cls]


def quantize_weight(weight: torch.Tensor, channel_axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8, scale float32)`` with ``scale * q ≈ weight``: per ``channel_axis`` slice, symmetric."""
    dims = [d for d in range(weight.ndim) if d != channel_axis]
    amax = weight.detach().abs().amax(dim=dims, keepdim=True).float()
    scale = (amax / 127.0).clamp_min(1e-12)
    q = torch.round(weight.detach().float() / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize(model: nn.Module) -> int:
    """Store every quantisable layer's weight of ``model`` in int8 (in place); returns how many layers."""
    count = 0
    for module in model.modules():
        if not isinstance(module, QUANTIZABLE) or isinstance(module, Int8Weight):
            continue
        axis = 1 if isinstance(module, nn.ConvTranspose1d) else 0
        q, scale = quantize_weight(module.weight, axis)
        del module._parameters["weight"]
        module.register_buffer("weight_int8", q)
        module.register_buffer("weight_scale", scale)
        module.__class__ = _int8_class(type(module))
        count += 1
    return count


def dequantize(model: nn.Module) -> int:
    """Turn every int8 layer of ``model`` back into its plain class with a float (frozen) ``weight`` holding
    the dequantised values; returns how many."""
    count = 0
    for module in model.modules():
        if not isinstance(module, Int8Weight):
            continue
        if "weight_int8" not in module._buffers:  # built as an Int8 class but never quantised (peft's factors)
            module.__class__ = module.dequantized_class()
            continue
        weight = module.weight.detach().clone()
        del module._buffers["weight_int8"], module._buffers["weight_scale"]
        module.__class__ = module.dequantized_class()
        module.weight = nn.Parameter(weight, requires_grad=False)
        count += 1
    return count


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as held in memory (int8 layers count their int8 buffer)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())
