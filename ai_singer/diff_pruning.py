"""Diff pruning: a sparse learned difference to the frozen weights (Guo et al., with a top-k projection).

Each targeted weight ``W0`` becomes ``W0 + topk(delta)``, where ``delta`` (same shape, starts at 0, so a fresh
adapter is the base) keeps only its ``ceil(density * numel)`` largest-magnitude entries in the forward pass.
The backward pass is straight-through (every entry of ``delta`` gets its gradient), so entries outside the
current top-k can grow into it: the sparsity target holds at every step without an L0 relaxation.

The artifact stores only the kept entries (:func:`pack`): ``<name>.indices`` (int32, flat),
``<name>.values`` and ``<name>.shape``: 8 bytes per kept entry instead of 4 per weight, a saving below
density 0.5. Merging bakes
``W0 + topk(delta)`` into the weight (exactly what the unmerged forward computes). Parameters:
``<module>.parametrizations.weight.0.delta`` (torch's parametrisation layout; the frozen ``W0`` is
``...parametrizations.weight.original``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

#: Parameter-name segment of a diff-pruning difference.
DIFF_SEGMENTS = ("delta",)
_INDICES, _VALUES, _SHAPE = ".indices", ".values", ".shape"


def topk_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Bool mask of the ``ceil(density * numel)`` largest ``|delta|`` entries (same shape as ``delta``)."""
    k = max(1, math.ceil(float(density) * delta.numel()))
    flat = delta.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k >= flat.numel():
        return torch.ones_like(delta, dtype=torch.bool)
    mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(delta)


class SparseDiff(nn.Module):
    """Parametrisation ``W0 -> W0 + topk(delta)`` (module docstring). ``delta`` ``[*W0.shape]``."""

    def __init__(self, weight: torch.Tensor, density: float):
        super().__init__()
        self.density = float(density)
        self.delta = nn.Parameter(torch.zeros_like(weight))

    def sparse_delta(self) -> torch.Tensor:
        """``delta`` outside its top-k set to 0; the gradient passes to every entry (straight-through)."""
        kept = self.delta * topk_mask(self.delta, self.density)
        return self.delta + (kept - self.delta).detach()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.sparse_delta()


def inject(model: nn.Module, targets: list[str], density: float) -> None:
    """Give the ``weight`` of each module named in ``targets`` a :class:`SparseDiff`."""
    for name in targets:
        module = model.get_submodule(name)
        parametrize.register_parametrization(module, "weight", SparseDiff(module.weight, density))


def merge(model: nn.Module) -> int:
    """Bake every :class:`SparseDiff` into its weight and remove it; returns how many."""
    merged = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, SparseDiff) for p in module.parametrizations["weight"]):
            with torch.no_grad():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            merged += 1
    return merged


def pack_dense(deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The non-zero entries of each dense difference: ``<name>.indices`` (int32, flat, sorted),
    ``<name>.values`` and ``<name>.shape`` (int64), as CPU tensors."""
    packed = {}
    for name, delta in deltas.items():
        flat = delta.detach().flatten().cpu()
        indices = torch.nonzero(flat, as_tuple=False).flatten()
        packed[name + _INDICES] = indices.to(torch.int32)
        packed[name + _VALUES] = flat[indices].clone()
        packed[name + _SHAPE] = torch.tensor(list(delta.shape), dtype=torch.int64)
    return packed


def pack(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """:func:`pack_dense` of the effective (top-k) difference of each ``delta`` parameter in ``names``."""
    deltas = {}
    for name in names:
        owner = model.get_submodule(name.rpartition(".")[0])
        deltas[name] = owner.sparse_delta() if isinstance(owner, SparseDiff) else model.get_parameter(name)
    return pack_dense(deltas)


def unpack(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense differences from :func:`pack_dense`'s output; keys that are not part of an
    indices/values/shape triple pass through. ValueError for a broken triple."""
    dense: dict[str, torch.Tensor] = {}
    names = {key[: -len(_INDICES)] for key in packed if key.endswith(_INDICES)}
    for key, tensor in packed.items():
        if not any(key == name + suffix for name in names for suffix in (_INDICES, _VALUES, _SHAPE)):
            if key.endswith((_VALUES, _SHAPE)):
                raise ValueError(f"diff tensors: {key} without its {_INDICES}")
            dense[key] = tensor
    for name in sorted(names):
        values, shape = packed.get(name + _VALUES), packed.get(name + _SHAPE)
        if values is None or shape is None:
            raise ValueError(f"diff tensors: {name} has indices but no {_VALUES if values is None else _SHAPE}")
        numel = math.prod(int(n) for n in shape.tolist())
        indices = packed[name + _INDICES].long()
        if indices.numel() != values.numel() or (indices.numel() and (indices.min() < 0 or indices.max() >= numel)):
            raise ValueError(f"diff tensors: {name} has {indices.numel()} indices (range 0..{numel - 1}) for "
                             f"{values.numel()} values")
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[indices] = values
        dense[name] = flat.view([int(n) for n in shape.tolist()])
    return dense


def needed_density(deltas: dict[str, torch.Tensor]) -> float:
    """The smallest density whose top-k keeps every non-zero entry of each of ``deltas`` (for a blend, whose
    support is the union of its parents')."""
    return max((float(torch.count_nonzero(d)) / d.numel() for d in deltas.values()), default=0.0)
