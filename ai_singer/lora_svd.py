"""Truncated SVD of a full model's per-layer weight differences into a peft LoRA adapter (the math of
``ai-singer extract-adapter``, :mod:`ai_singer.extract`).

Per layer, with the weight norm of both models baked in, ``dW = W_full - W_base``:

* ``Conv1d`` (``groups == 1``) ``[out, in, k]``, ``Linear`` ``[out, in]``, ``Embedding`` ``[num, dim]`` and
  ``ConvTranspose1d`` ``[in, out, k]``: ``dW`` as the LoRA layer factors it (:func:`as_matrix`: ``[out, in*k]``
  for convs, whose ``lora_B`` is a 1x1 conv after a ``lora_A`` conv of the base's kernel; an embedding's
  ``(B A)^T``) is cut to its leading singular triplets: a fixed rank
  (``rank``) or the smallest rank keeping ``energy`` of ``||dW||^2`` (at most ``rank``). ``B = U sqrt(S) /
  scaling``, ``A = sqrt(S) V^T``. A layer whose factors would hold as many numbers as ``dW`` itself is stored
  whole instead (exact and no larger).
* Everything LoRA cannot hold (biases, norms, relative position tables, grouped convs): stored whole
  (``peft.full_parameters``), unless ``drop`` names it; dropped differences are reported with their share.
* The speaker table is not part of an adapter: the caller gives the singer's vector.

The result is an ordinary ``method: lora`` adapter (peft's keys, per-module ranks in ``peft.rank_pattern``).
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ai_singer import checkpoint as ckpt
from ai_singer.adapters import (ADAPTER_NAME, PeftSettings, adapter_state_dict, as_peft_settings, base_parameter_name,
                                name_matches, prepare_for_finetune)
from ai_singer.errors import UserError

SPEAKER_TABLE = "speaker_embedding.weight"
SINGER_VECTOR = "singer_embedding"
#: Module types whose weight difference becomes LoRA factors (peft's LoRA layers; ConvTranspose1d: ours).
LORA_TYPES = (nn.Conv1d, nn.Linear, nn.Embedding, nn.ConvTranspose1d)


class ExtractError(UserError):
    """A base, full model or output folder that extraction cannot use; the message names it."""


@dataclass
class ExtractSettings:
    """How the difference is compressed (``conf/extract.yaml``). ``rank``: each LoRA layer's rank, or with
    ``energy`` the most any layer gets. ``energy``: None, or the share of ``||dW||^2`` in (0, 1] each layer
    keeps with the smallest rank that reaches it. ``drop``: patterns of parameter names (base state-dict
    naming) whose difference is left out. ``dtype``: float32 | float16 | bfloat16, the stored tensors."""

    rank: int
    energy: float | None
    drop: list[str]
    dtype: str

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ExtractError(f"rank={self.rank}", "must be a positive integer")
        if self.energy is not None and not 0.0 < float(self.energy) <= 1.0:
            raise ExtractError(f"energy={self.energy}", "must lie in (0, 1] (or null for a fixed rank)")
        if self.dtype not in ckpt.WEIGHTS_DTYPES:
            raise ExtractError(f"dtype={self.dtype}", f"must be one of {', '.join(ckpt.WEIGHTS_DTYPES)}")
        self.rank = int(self.rank)
        self.energy = None if self.energy is None else float(self.energy)
        self.drop = [str(p) for p in self.drop]
        for pattern in self.drop:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ExtractError(f"drop={pattern}", f"not a valid regular expression ({error})") from None


@dataclass
class LayerReport:
    """One parameter's difference and what the adapter keeps of it. ``kind``: lora | full | dropped |
    unchanged. ``delta`` / ``error``: ``||dW||_F`` and ``||dW - kept||_F``; ``stored``: numbers stored."""

    name: str
    kind: str
    shape: tuple[int, ...]
    delta: float
    error: float
    rank: int = 0
    full_rank: int = 0
    stored: int = 0


@dataclass
class Extraction:
    """The adapter's tensors (peft naming + ``singer_embedding``), its peft settings and per-parameter report."""

    tensors: dict[str, torch.Tensor]
    peft: PeftSettings
    layers: list[LayerReport] = field(default_factory=list)

    def relative_error(self, kinds: tuple[str, ...] | None = None) -> float:
        """``||dW - kept|| / ||dW||`` over all parameters (or those of ``kinds``); 0 when nothing changed."""
        chosen = [layer for layer in self.layers if kinds is None or layer.kind in kinds]
        total = math.sqrt(sum(layer.delta ** 2 for layer in self.layers))
        return math.sqrt(sum(layer.error ** 2 for layer in chosen)) / total if total > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts, sizes and errors for ``adapter.yaml`` and the command's printout."""
        by_kind: dict[str, dict[str, Any]] = {}
        for layer in self.layers:
            entry = by_kind.setdefault(layer.kind, {"parameters": 0, "stored": 0})
            entry["parameters"] += 1
            entry["stored"] += layer.stored
        ranks = [layer.rank for layer in self.layers if layer.kind == "lora"]
        return {"relative_error": round(self.relative_error(), 6),
                "dropped_share": round(self.relative_error(("dropped",)), 6),
                "lora_layers": len(ranks), "rank_min": min(ranks, default=0), "rank_max": max(ranks, default=0),
                "stored_numbers": sum(t.numel() for t in self.tensors.values()),
                "kinds": by_kind,
                "dropped": [layer.name for layer in self.layers if layer.kind == "dropped"]}


# ------------------------------------------------------------------------------------------ the math

def as_matrix(module: nn.Module, delta: torch.Tensor) -> torch.Tensor:
    """A weight difference shaped like ``module.weight`` -> the 2-D matrix ``[rows, cols]`` its LoRA factors into
    ``B [rows, r] @ A [r, cols]``: Conv1d ``[out, in, k]`` -> ``[out, in*k]``, Linear ``[out, in]`` as is,
    Embedding ``[num, dim]`` -> ``[dim, num]`` (peft's ``(B A)^T``), ConvTranspose1d ``[in, out, k]`` ->
    ``[out, in*k]`` (:class:`ai_singer.adapters.LoraConvTranspose1d`)."""
    if isinstance(module, nn.Embedding):
        return delta.t()
    if isinstance(module, nn.ConvTranspose1d):
        return delta.transpose(0, 1).reshape(delta.shape[1], -1)
    return delta.reshape(delta.shape[0], -1)


def choose_rank(singular_values: torch.Tensor, rank: int, energy: float | None) -> int:
    """The rank kept: ``rank`` (at most the matrix's), or the smallest keeping ``energy`` of the squared
    singular values, at most ``rank``. ``singular_values``: [n] descending."""
    if energy is None:
        return min(rank, singular_values.numel())
    power = singular_values.double() ** 2
    cumulative = torch.cumsum(power, 0)
    needed = int(torch.searchsorted(cumulative, energy * cumulative[-1] * (1 - 1e-12)).item()) + 1
    return max(1, min(rank, needed, singular_values.numel()))


def truncated_factors(matrix: torch.Tensor, rank: int, energy: float | None
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD of ``matrix [rows, cols]`` (float64): ``B [rows, r]``, ``A [r, cols]`` with ``B @ A`` the
    best rank-r approximation (singular values split as sqrt between them), and the residual
    ``||matrix - B A||_F``."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    r = choose_rank(s, rank, energy)
    root = s[:r].sqrt()
    residual = float(s[r:].pow(2).sum().sqrt())
    return u[:, :r] * root, root[:, None] * vh[:r], residual


# ------------------------------------------------------------------------------------------ extraction

def plain_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` by name (detached, not copied)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def _norm(tensor: torch.Tensor) -> float:
    return float(tensor.double().norm())


def extract(base_model: nn.Module, full_parameters: Mapping[str, torch.Tensor], singer_vector: torch.Tensor,
            settings: ExtractSettings, lora_defaults: Mapping[str, Any]) -> Extraction:
    """Compress ``full_parameters - base_model``'s parameters into a LoRA adapter.

    ``base_model``: the base with weight norm removed (not changed here). ``full_parameters``: the full model's
    parameters by the same names, same shapes (the speaker table may differ and is not used).
    ``singer_vector``: ``[gin_channels]``. ``lora_defaults``: ``conf/peft/lora.yaml``'s values, for the peft
    settings this does not decide.
    """
    base = plain_parameters(base_model)
    modules = dict(base_model.named_modules())
    layers: list[LayerReport] = []
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # module -> (B, A), float64
    whole: list[str] = []
    for name, value in base.items():
        if name == SPEAKER_TABLE:
            continue
        delta = full_parameters[name].double() - value.double()
        shape = tuple(value.shape)
        size = _norm(delta)
        if name_matches(name, settings.drop):
            layers.append(LayerReport(name, "dropped" if size > 0 else "unchanged", shape, size, size))
            continue
        if size == 0.0:
            layers.append(LayerReport(name, "unchanged", shape, 0.0, 0.0))
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = modules.get(owner_name)
        if leaf == "weight" and isinstance(owner, LORA_TYPES) and getattr(owner, "groups", 1) == 1:
            matrix = as_matrix(owner, delta)
            rows, cols = matrix.shape
            b, a, residual = truncated_factors(matrix, settings.rank, settings.energy)
            r = a.shape[0]
            if r * (rows + cols) < rows * cols:
                lora[owner_name] = (b, a)
                layers.append(LayerReport(name, "lora", shape, size, residual, r, min(rows, cols), r * (rows + cols)))
                continue
        whole.append(name)
        layers.append(LayerReport(name, "full", shape, size, 0.0, stored=value.numel()))

    peft = _peft_settings(lora, whole, settings, lora_defaults)
    model = copy.deepcopy(base_model)
    prepare_for_finetune(model, peft)
    with torch.no_grad():
        for module_name, (b, a) in lora.items():
            _set_factors(model.get_submodule(module_name), b, a)
        by_base_name = {base_parameter_name(n): n for n, _ in model.named_parameters()}
        for name in whole:
            model.get_parameter(by_base_name[name]).copy_(full_parameters[name])
    dtype = ckpt.WEIGHTS_DTYPES[settings.dtype]
    tensors = {k: v.to(dtype) for k, v in adapter_state_dict(model).items()}
    tensors[SINGER_VECTOR] = singer_vector.detach().reshape(-1).to(dtype).clone()
    return Extraction(tensors=tensors, peft=peft, layers=layers)


def _peft_settings(lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]], whole: list[str],
                   settings: ExtractSettings, lora_defaults: Mapping[str, Any]) -> PeftSettings:
    """A LoRA config naming exactly the modules with factors (their ranks) and the parameters stored whole."""
    ranks = {name: int(a.shape[0]) for name, (_, a) in lora.items()}
    r = max(ranks.values(), default=settings.rank)
    return as_peft_settings({**dict(lora_defaults), "method": "lora", "r": r, "alpha": float(r), "dropout": 0.0,
                             "bias": "none",
                             "rank_pattern": {re.escape(n): k for n, k in ranks.items() if k != r},
                             "target_modules": [re.escape(n) for n in ranks],
                             "full_parameters": [re.escape(n) for n in whole]})


def _set_factors(layer: nn.Module, b: torch.Tensor, a: torch.Tensor) -> None:
    """Write ``B [rows, r]``, ``A [r, cols]`` into a LoRA layer so that its merged delta is ``B @ A`` in
    :func:`as_matrix`'s layout (the layer's ``scaling`` divided out of B)."""
    scaling = float(layer.scaling[ADAPTER_NAME])
    base = layer.get_base_layer()
    b = b / scaling
    if isinstance(base, nn.Embedding):
        layer.lora_embedding_A[ADAPTER_NAME].copy_(a)
        layer.lora_embedding_B[ADAPTER_NAME].copy_(b)
        return
    lora_a, lora_b = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
    if isinstance(base, nn.ConvTranspose1d):  # lora_A [in, r, k]: A's columns are (in, k)
        a = a.reshape(a.shape[0], base.in_channels, -1).transpose(0, 1)
    lora_a.copy_(a.reshape(lora_a.shape))
    lora_b.copy_(b.reshape(lora_b.shape))


