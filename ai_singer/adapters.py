"""Parameter-efficient fine-tuning on the frozen base: choose what trains, save only that, merge it.

Methods (``PeftSettings.method``):

* ``lora`` / ``dora``: peft's LoRA (``B`` starts at zero, so a fresh adapter reproduces the base
  exactly; scaling ``alpha / r``, per module ``alpha / rank_pattern[module]`` where one matches) or DoRA
  (LoRA plus a learned per-channel magnitude), injected with ``peft.inject_adapter_in_model`` into the
  ``Conv1d``/``Linear``/``Embedding`` modules matched by ``target_modules``. peft has no LoRA for
  ``ConvTranspose1d``: :class:`LoraConvTranspose1d` here does it for ``lora`` (the same parameter names);
  ``dora`` skips them (logged). Grouped convs (``groups > 1``) are skipped, since peft cannot merge them. ``full_parameters`` names base parameters that train (and are saved) whole beside
  the adapter (peft's ``modules_to_save``, per parameter): what LoRA cannot hold, e.g. a norm or a
  ``ConvTranspose1d``. peft builds the LoRA ``A``
  conv without the base conv's dilation and padding mode; :func:`prepare_for_finetune` copies both
  onto it, so dilated convs (WaveNet, HiFi-GAN resblocks) are adapted correctly.
* ``ia3``: (IA)^3, a learned per-output-channel scale (initialised to 1). peft provides it for
  ``Linear``; peft 0.21 has no ``Conv1d`` (IA)^3, so :class:`IA3Conv1d` here does the same for convs
  (same parameter name, ``<module>.ia3_l.default``, shape ``[1, out_channels, 1]``).
* ``bitfit``: every bias trains, nothing else.
* ``freeze``: the last ``freeze_last_n`` blocks matched by each ``freeze_blocks`` pattern train fully.
* ``full``: everything trains (the adapter is then as large as the model).
* ``adapter``: bottleneck adapters (:mod:`ai_singer.bottleneck`, width ``r``) on the output of the blocks
  matched by ``target_modules`` (conf: the prior encoder's attention and feed-forward sub-layers, the
  decoder's resblocks); not mergeable.
* ``prefix`` / ``prompt``: ``prefix_length`` gated key/value vectors per attention layer of the prior
  encoder, learned directly (prefix) or read from one set of learned hidden vectors through each layer's
  frozen projections (prompt) (:mod:`ai_singer.prefix`); not mergeable.
* ``diff``: diff pruning (:mod:`ai_singer.diff_pruning`): a learned difference on the weights of the
  ``target_modules``, kept to its top ``diff_density`` fraction, stored sparsely.
* ``qlora``: the frozen base's Conv1d/Linear/ConvTranspose1d weights held in int8 (:mod:`ai_singer.int8`),
  LoRA as ``lora`` on top; merging dequantises first.

Patterns (``target_modules``, ``freeze_blocks``) are regular expressions matched against the whole
module name or a dotted suffix of it: ``query_proj`` matches ``prior_encoder.encoder.layers.0.attention
.query_proj``; ``decoder\\.resblocks\\.\\d+`` matches ``decoder.resblocks.3``.

Weight norm is removed from the base first (peft's merge silently loses the adapter on a weight-normed
conv, because the weight it updates is recomputed from ``weight_g``/``weight_v`` on the next call).
The learned singer vector is not handled here: the trainer adds it and saves it beside these tensors.

Typical use::

    trainable = prepare_for_finetune(model, settings)     # train these
    tensors = adapter_state_dict(model)                   # small: save with checkpoint.save_adapter
    load_adapter_state(fresh_base, settings, tensors)     # later, on a freshly loaded base
    merge_adapters(fresh_base)                            # plain model again, no inference overhead
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ai_singer import diff_pruning, int8
from ai_singer.bottleneck import BOTTLENECK_SEGMENTS, Bottleneck
from ai_singer.checkpoint import state_dict_diff
from ai_singer.diff_pruning import DIFF_SEGMENTS
from ai_singer.prefix import PREFIX_SEGMENTS, MemoryAttention, PromptEncoder

log = logging.getLogger(__name__)

PEFT_METHODS = ("lora", "dora", "ia3", "bitfit", "freeze", "full", "adapter", "prefix", "prompt", "diff", "qlora")
#: Methods that inject modules of their own (whose parameters are the adapter, plus biases with bias=all).
PEFT_LIBRARY_METHODS = ("lora", "dora", "ia3", "adapter", "prefix", "prompt", "diff", "qlora")
#: Methods whose adapter stays a separate module at inference (merge_adapters leaves it in place).
UNMERGEABLE_METHODS = ("adapter", "prefix", "prompt")
ADAPTER_NAME = "default"
#: Parameter-name segments that belong to an injected adapter (peft's LoRA/DoRA/IA3, IA3Conv1d, bottleneck,
#: prefix/prompt, diff pruning).
ADAPTER_PARAMETER_SEGMENTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
                              "ia3_l", *BOTTLENECK_SEGMENTS, *PREFIX_SEGMENTS, *DIFF_SEGMENTS)
_PREPARED_ATTR = "_ai_singer_peft"


# ----------------------------------------------------------------------------------------- settings

@dataclass
class PeftSettings:
    """How a singer adapter is trained: ``conf/peft/<method>.yaml`` (the values live there only; fine-tuning and
    a stored ``adapter.yaml`` give every field).

    ``r``, ``alpha``, ``dropout``: LoRA/DoRA rank, scaling numerator (scaling = alpha / r) and dropout
    on the adapter input. ``rank_pattern``: {module pattern: rank} for modules whose rank is not ``r``
    (peft's ``rank_pattern``; their scaling is ``alpha / rank``). ``target_modules``: patterns of the
    modules lora/dora/ia3 adapt (Conv1d/Linear; lora/dora also Embedding); an empty list adapts none.
    ``bias``: ``"none"`` or ``"all"`` (lora/dora/ia3 also train every bias). ``full_parameters``: patterns
    of parameter names, as in the base's state dict (without peft's ``base_layer``), that lora/dora/ia3
    also train whole. ``freeze_blocks`` / ``freeze_last_n``: for ``freeze``, the last N modules matched
    by each pattern train. ``r`` is also the bottleneck width of ``adapter``; ``target_modules`` names the
    blocks ``adapter`` follows, the attention layers ``prefix`` and the encoder ``prompt`` adapt, the weights
    ``diff`` changes. ``prefix_length``: memory vectors per layer (prefix/prompt); ``diff_density``: the
    fraction of each targeted weight's entries ``diff`` may change. Settings a method does not use are ignored.
    """

    method: str
    r: int
    alpha: float
    dropout: float
    rank_pattern: dict[str, int]
    target_modules: list[str]
    bias: str
    full_parameters: list[str]
    freeze_blocks: list[str]
    freeze_last_n: int
    prefix_length: int
    diff_density: float

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ValueError(f"peft.method must be one of {', '.join(PEFT_METHODS)}, not {self.method!r}")
        if self.method in ("lora", "dora", "adapter", "qlora") and int(self.r) < 1:
            raise ValueError(f"peft.r must be >= 1, not {self.r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"peft.dropout must be in [0, 1), not {self.dropout}")
        if self.bias not in ("none", "all"):
            raise ValueError(f"peft.bias must be 'none' or 'all', not {self.bias!r}")
        if self.method in ("prefix", "prompt") and int(self.prefix_length) < 1:
            raise ValueError(f"peft.prefix_length must be >= 1, not {self.prefix_length}")
        if self.method == "diff" and not 0.0 < float(self.diff_density) <= 1.0:
            raise ValueError(f"peft.diff_density must be in (0, 1], not {self.diff_density}")
        if self.method == "freeze" and int(self.freeze_last_n) < 1:
            raise ValueError(f"peft.freeze_last_n must be >= 1, not {self.freeze_last_n}")
        self.target_modules = [str(p) for p in self.target_modules]
        self.full_parameters = [str(p) for p in self.full_parameters]
        self.freeze_blocks = [str(p) for p in self.freeze_blocks]
        self.rank_pattern = {str(k): int(v) for k, v in dict(self.rank_pattern).items()}
        bad_ranks = {k: v for k, v in self.rank_pattern.items() if v < 1}
        if bad_ranks:
            raise ValueError(f"peft.rank_pattern ranks must be >= 1, not {bad_ranks}")
        for pattern in [*self.target_modules, *self.full_parameters, *self.freeze_blocks, *self.rank_pattern]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"peft pattern {pattern!r} is not a valid regular expression ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_peft_settings(settings: PeftSettings | Mapping[str, Any]) -> PeftSettings:
    """``PeftSettings`` from itself, a dict (e.g. ``adapter.yaml``'s ``peft``) or an OmegaConf node;
    unknown keys are an error."""
    if isinstance(settings, PeftSettings):
        return settings
    if hasattr(settings, "_metadata"):  # OmegaConf container
        from omegaconf import OmegaConf

        settings = OmegaConf.to_object(settings)
        if isinstance(settings, PeftSettings):
            return settings
    data = dict(settings)
    # adapter.yaml files written before these settings existed adapted no module with another rank and trained
    # no whole parameter beside the adapter: their absence means exactly that
    data.setdefault("rank_pattern", {})
    data.setdefault("full_parameters", [])
    data.setdefault("prefix_length", 0)  # likewise: no prefix, no diff
    data.setdefault("diff_density", 0.0)
    known = {f.name for f in fields(PeftSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown peft settings {unknown}; known: {sorted(known)}")
    return PeftSettings(**data)


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """True when a pattern matches the whole dotted ``name`` or a dotted suffix of it."""
    return any(re.fullmatch(rf"(?:.*\.)?(?:{pattern})", name) for pattern in patterns)


# ------------------------------------------------------------------------------------- weight norm

def remove_weight_norm_everywhere(model: nn.Module) -> int:
    """Bake weight norm into plain weights: the model's own ``remove_weight_norm()`` if it has one
    and weight norm is present, then any remaining parametrisation-style or old hook-style weight
    norm. Returns how many weight-normed tensors were found before removal. Outputs are unchanged
    up to float rounding."""
    from torch.nn.utils.parametrizations import _WeightNorm
    from torch.nn.utils.weight_norm import WeightNorm

    def weight_normed() -> list[tuple[nn.Module, str, str]]:
        found = []
        for module in model.modules():
            if parametrize.is_parametrized(module):
                for tensor_name, chain in module.parametrizations.items():
                    if any(isinstance(p, _WeightNorm) for p in chain):
                        found.append((module, tensor_name, "parametrization"))
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, WeightNorm):
                    found.append((module, hook.name, "hook"))
        return found

    initial = weight_normed()
    if initial and callable(getattr(model, "remove_weight_norm", None)):
        model.remove_weight_norm()
    for module, tensor_name, style in weight_normed():
        if style == "parametrization":
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
        else:
            torch.nn.utils.remove_weight_norm(module, tensor_name)
    return len(initial)


# --------------------------------------------------------------------------------- own IA3 for conv

class IA3Conv1d(nn.Module):
    """(IA)^3 on a ``Conv1d``: ``base_layer(x) * ia3_l`` with ``ia3_l`` ``[1, out_channels, 1]``
    (initialised to 1, so a fresh adapter reproduces the base). :meth:`merge` folds the scale into the
    conv's weight and bias. ``[B, C_in, T] -> [B, C_out, T']``."""

    def __init__(self, base_layer: nn.Conv1d, adapter_name: str = ADAPTER_NAME):
        super().__init__()
        self.base_layer = base_layer
        self.ia3_l = nn.ParameterDict(
            {adapter_name: nn.Parameter(torch.ones(1, base_layer.out_channels, 1, device=base_layer.weight.device,
                                                   dtype=base_layer.weight.dtype))})
        self.adapter_name = adapter_name

    def get_base_layer(self) -> nn.Conv1d:
        return self.base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.ia3_l[self.adapter_name]

    @torch.no_grad()
    def merge(self) -> None:
        scale = self.ia3_l[self.adapter_name].reshape(-1)
        self.base_layer.weight.mul_(scale.view(-1, 1, 1).to(self.base_layer.weight.dtype))
        if self.base_layer.bias is not None:
            self.base_layer.bias.mul_(scale.to(self.base_layer.bias.dtype))


class LoraConvTranspose1d(nn.Module):
    """LoRA on a ``ConvTranspose1d`` (peft has none): ``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``.

    ``lora_A``: a ``ConvTranspose1d`` ``in -> r`` with the base's kernel, stride, padding, output padding and
    dilation, no bias (parameter ``lora_A.default.weight`` ``[in, r, k]``); ``lora_B``: a 1x1 ``Conv1d``
    ``r -> out``, no bias (``lora_B.default.weight`` ``[out, r, 1]``), initialised to zero, so a fresh adapter
    reproduces the base. Merged: ``W[i, o, k] += scaling * sum_r A[i, r, k] B[o, r]``. ``scaling = alpha / r``.
    ``[B, C_in, T] -> [B, C_out, T']`` like the base layer.
    """

    def __init__(self, base_layer: nn.ConvTranspose1d, r: int, alpha: float, dropout: float,
                 adapter_name: str = ADAPTER_NAME):
        super().__init__()
        if base_layer.groups != 1:
            raise ValueError(f"LoraConvTranspose1d needs groups=1, not {base_layer.groups}")
        weight = base_layer.weight
        self.base_layer = base_layer
        self.adapter_name = adapter_name
        lora_a = nn.ConvTranspose1d(base_layer.in_channels, r, base_layer.kernel_size, base_layer.stride,
                                    base_layer.padding, base_layer.output_padding, bias=False,
                                    dilation=base_layer.dilation, device=weight.device, dtype=weight.dtype)
        lora_b = nn.Conv1d(r, base_layer.out_channels, 1, bias=False, device=weight.device, dtype=weight.dtype)
        nn.init.zeros_(lora_b.weight)
        self.lora_A = nn.ModuleDict({adapter_name: lora_a})
        self.lora_B = nn.ModuleDict({adapter_name: lora_b})
        self.scaling = {adapter_name: float(alpha) / int(r)}
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def get_base_layer(self) -> nn.ConvTranspose1d:
        return self.base_layer

    def delta_weight(self) -> torch.Tensor:
        """``[in, out, k]``: what :meth:`merge` adds to the base weight."""
        a = self.lora_A[self.adapter_name].weight
        b = self.lora_B[self.adapter_name].weight[..., 0]
        return torch.einsum("irk,or->iok", a, b) * self.scaling[self.adapter_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora = self.lora_B[self.adapter_name](self.lora_A[self.adapter_name](self.dropout(x)))
        return self.base_layer(x) + lora * self.scaling[self.adapter_name]

    @torch.no_grad()
    def merge(self, safe_merge: bool = True) -> None:
        delta = self.delta_weight()
        if safe_merge and not torch.isfinite(delta).all():
            raise ValueError("NaNs or infinities in the LoRA of a ConvTranspose1d: the adapter is broken")
        self.base_layer.weight.add_(delta.to(self.base_layer.weight.dtype))


# ----------------------------------------------------------------------------------------- helpers

def _parent_and_child(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _is_adapter_layer(module: nn.Module) -> bool:
    if isinstance(module, (IA3Conv1d, LoraConvTranspose1d)):
        return True
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, BaseTunerLayer)


def _is_adapter_parameter(name: str) -> bool:
    return any(segment in ADAPTER_PARAMETER_SEGMENTS for segment in name.split("."))


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def _resolve_targets(model: nn.Module, settings: PeftSettings) -> list[str]:
    """Names of the modules the peft-style method adapts (matched and of a supported type). An empty
    ``target_modules`` adapts none; patterns that match no supported module are an error."""
    supported: tuple[type, ...] = ((nn.Linear, nn.Conv1d) + ((nn.Embedding,) if settings.method != "ia3" else ())
                                   + ((nn.ConvTranspose1d,) if settings.method in ("lora", "qlora", "diff") else ()))
    if not settings.target_modules:
        return []
    chosen, skipped = [], []
    for name, module in model.named_modules():
        if not name or not name_matches(name, settings.target_modules):
            continue
        if isinstance(module, supported):
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and module.groups > 1 and settings.method != "ia3":
                skipped.append(f"{name} ({type(module).__name__} with groups={module.groups}: cannot be merged)")
                continue
            chosen.append(name)
        elif isinstance(module, (nn.ConvTranspose1d, nn.Embedding, nn.Conv2d)):
            skipped.append(f"{name} ({type(module).__name__}: not adapted by {settings.method})")
    if skipped:
        log.info("peft %s: skipping %d matched module(s): %s", settings.method, len(skipped), "; ".join(skipped))
    if not chosen:
        kinds = "/".join(["Conv1d", "Linear"] + [t.__name__ for t in supported[2:]])
        candidates = [n for n, m in model.named_modules() if isinstance(m, supported)]
        raise ValueError(f"peft.target_modules {settings.target_modules} match no {kinds} module of "
                         f"{type(model).__name__}; candidates include: {', '.join(candidates[:12])}"
                         + (" ..." if len(candidates) > 12 else ""))
    return chosen


def _inject_lora(model: nn.Module, settings: PeftSettings, targets: list[str]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    transposed = [t for t in targets if isinstance(model.get_submodule(t), nn.ConvTranspose1d)]
    targets = [t for t in targets if t not in transposed]
    if targets:
        config = LoraConfig(r=int(settings.r), lora_alpha=float(settings.alpha),
                            lora_dropout=float(settings.dropout),
                            rank_pattern={pattern: rank for pattern, rank in settings.rank_pattern.items()
                                          if any(name_matches(t, [pattern]) for t in targets)},
                            target_modules="(?:" + "|".join(re.escape(t) for t in targets) + ")",
                            use_dora=settings.method == "dora", bias="none", init_lora_weights=True)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name in transposed:  # peft has no ConvTranspose1d LoRA: ours, with peft's rank_pattern semantics
        rank = next((int(r) for pattern, r in settings.rank_pattern.items() if name_matches(name, [pattern])),
                    int(settings.r))
        parent, child = _parent_and_child(model, name)
        setattr(parent, child, LoraConvTranspose1d(getattr(parent, child), rank, float(settings.alpha),
                                                   float(settings.dropout)))
    for name in targets:
        layer = model.get_submodule(name)
        base = layer.get_base_layer()
        if isinstance(base, nn.Conv1d):
            # peft builds lora_A without the base conv's dilation / padding mode: copy them so the
            # adapter path has the same receptive field and output length as the base conv.
            lora_a = layer.lora_A[ADAPTER_NAME]
            lora_a.dilation = base.dilation
            lora_a.padding_mode = base.padding_mode


def _inject_ia3(model: nn.Module, settings: PeftSettings, targets: list[str]) -> None:
    linear_targets = [t for t in targets if isinstance(model.get_submodule(t), nn.Linear)]
    conv_targets = [t for t in targets if isinstance(model.get_submodule(t), nn.Conv1d)]
    if linear_targets:
        from peft import IA3Config, inject_adapter_in_model

        config = IA3Config(target_modules="(?:" + "|".join(re.escape(t) for t in linear_targets) + ")",
                           feedforward_modules=[], init_ia3_weights=True)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name in conv_targets:
        parent, child = _parent_and_child(model, name)
        setattr(parent, child, IA3Conv1d(getattr(parent, child)))


def base_parameter_name(name: str) -> str:
    """``name`` as in the base's state dict: peft's ``.base_layer`` segments removed
    (``decoder.input_conv.base_layer.bias`` -> ``decoder.input_conv.bias``)."""
    return ".".join(part for part in name.split(".") if part != "base_layer")


def _wrap_blocks(model: nn.Module, settings: PeftSettings, kind: type | tuple[type, ...], wrap) -> list[str]:
    """Replace each module matched by ``target_modules`` (of type ``kind``, outermost matches only) by
    ``wrap(module)``; returns their names. ValueError when nothing matches."""
    chosen: list[str] = []
    for name, module in model.named_modules():
        if name and isinstance(module, kind) and name_matches(name, settings.target_modules) \
                and not any(name.startswith(outer + ".") for outer in chosen):
            chosen.append(name)
    if not chosen:
        kinds = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"peft.target_modules {settings.target_modules} match no {kinds} module of "
                         f"{type(model).__name__} for peft {settings.method}")
    for name in chosen:
        parent, child = _parent_and_child(model, name)
        setattr(parent, child, wrap(getattr(parent, child)))
    return chosen


def _inject(model: nn.Module, settings: PeftSettings) -> list[str]:
    """Inject the method's modules into ``model`` (frozen, weight norm removed); the adapted module names."""
    from ai_singer.model.attention import RelativeMultiHeadAttention, TransformerEncoder

    method = settings.method
    if method == "qlora":
        log.info("peft qlora: %d frozen layers held in int8", int8.quantize(model))
    if method in ("lora", "dora", "qlora"):
        adapted = _resolve_targets(model, settings)
        _inject_lora(model, settings, adapted)
    elif method == "ia3":
        adapted = _resolve_targets(model, settings)
        _inject_ia3(model, settings, adapted)
    elif method == "diff":
        adapted = _resolve_targets(model, settings)
        diff_pruning.inject(model, adapted, float(settings.diff_density))
    elif method == "adapter":
        adapted = _wrap_blocks(model, settings, nn.Module, lambda block: Bottleneck(block, int(settings.r)))
    elif method == "prefix":
        adapted = _wrap_blocks(model, settings, RelativeMultiHeadAttention,
                               lambda attention: MemoryAttention(attention, int(settings.prefix_length)))
    elif method == "prompt":
        adapted = _wrap_blocks(model, settings, TransformerEncoder,
                               lambda encoder: PromptEncoder(encoder, int(settings.prefix_length)))
    else:
        adapted = []
    return adapted


def _freeze_block_names(model: nn.Module, settings: PeftSettings) -> list[str]:
    """The last ``freeze_last_n`` modules matched by each ``freeze_blocks`` pattern. A pattern that matches
    nothing is skipped with a warning (the default names both decoders' stacks: the DDSP decoder has no
    upsamplers); none matching at all is an error."""
    chosen, unmatched = [], []
    for pattern in settings.freeze_blocks:
        matched = [name for name, _ in model.named_modules() if name and name_matches(name, [pattern])]
        if not matched:
            unmatched.append(pattern)
        chosen.extend(matched[-int(settings.freeze_last_n):])
    if not chosen:
        raise ValueError(f"peft.freeze_blocks: no pattern of {list(settings.freeze_blocks)} matches a module of "
                         f"{type(model).__name__}: name its blocks (module names as in model.named_modules())")
    if unmatched:
        log.warning("peft.freeze_blocks: %s match no module of %s (skipped; training %s)", unmatched,
                    type(model).__name__, chosen)
    return chosen


def _trainable_names(model: nn.Module, settings: PeftSettings) -> list[str]:
    """Parameter names the method trains, in ``named_parameters`` order (model already injected)."""
    names = [name for name, _ in model.named_parameters()]
    if settings.method in PEFT_LIBRARY_METHODS:
        chosen = [n for n in names if _is_adapter_parameter(n) or (settings.bias == "all" and _is_bias(n))
                  or (not _is_adapter_parameter(n) and name_matches(base_parameter_name(n), settings.full_parameters))]
    elif settings.method == "bitfit":
        chosen = [n for n in names if _is_bias(n)]
        if not chosen:
            raise ValueError(f"peft.method bitfit: {type(model).__name__} has no bias parameters")
    elif settings.method == "freeze":
        blocks = _freeze_block_names(model, settings)
        chosen = [n for n in names if any(n.startswith(block + ".") for block in blocks)]
    else:  # full
        chosen = names
    return chosen


# ------------------------------------------------------------------------------------------ public

def prepare_for_finetune(model: nn.Module, settings: PeftSettings | Mapping[str, Any]) -> list[str]:
    """Make ``model`` (the loaded base generator) ready to fine-tune with ``settings`` (in place).

    Removes weight norm, freezes every base parameter, injects the adapter (lora/dora/ia3) or selects
    the parameters to unfreeze (bitfit/freeze/full), and returns the trainable parameter names. The
    model remembers what was done (for :func:`adapter_state_dict`); preparing twice is an error.
    """
    settings = as_peft_settings(settings)
    if getattr(model, _PREPARED_ATTR, None) is not None:
        raise RuntimeError(f"{type(model).__name__} was already prepared for fine-tuning "
                           f"({getattr(model, _PREPARED_ATTR)['method']}); build a fresh base instead")
    remove_weight_norm_everywhere(model)
    model.requires_grad_(False)
    adapted = _inject(model, settings)
    trainable = _trainable_names(model, settings)
    trainable_set = set(trainable)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable_set)
    setattr(model, _PREPARED_ATTR, {"method": settings.method, "trainable": list(trainable),
                                    "adapted_modules": adapted, "settings": settings.to_dict()})
    n_train = sum(model.get_parameter(n).numel() for n in trainable)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("peft %s: %d trainable tensors, %d of %d parameters (%.2f%%)%s", settings.method, len(trainable),
             n_train, n_all, 100.0 * n_train / max(n_all, 1),
             f", {len(adapted)} adapted modules" if adapted else "")
    return list(trainable)


def prepared_method(model: nn.Module) -> str | None:
    """The PEFT method ``model`` was prepared with (``"merged"`` after :func:`merge_adapters`), or None."""
    info = getattr(model, _PREPARED_ATTR, None)
    return None if info is None else info["method"]


def adapter_state_dict(model: nn.Module, settings: PeftSettings | Mapping[str, Any] | None = None
                       ) -> dict[str, torch.Tensor]:
    """The tensors the method trains (detached CPU copies), by parameter name: small for
    lora/dora/ia3/bitfit, the whole model for ``full``. ``model`` must have been prepared with
    :func:`prepare_for_finetune` (``settings``, if given, must name the same method)."""
    info = getattr(model, _PREPARED_ATTR, None)
    if info is None or info["method"] == "merged":
        raise RuntimeError(f"{type(model).__name__} has no adapter to save: call prepare_for_finetune first"
                           + (" (its adapter was already merged)" if info else ""))
    if settings is not None and as_peft_settings(settings).method != info["method"]:
        raise ValueError(f"model was prepared with {info['method']}, not {as_peft_settings(settings).method}")
    if info["method"] == "diff":  # the kept entries only
        deltas = [n for n in info["trainable"] if n.rpartition(".")[2] in DIFF_SEGMENTS]
        rest = [n for n in info["trainable"] if n not in deltas]
        return {**diff_pruning.pack(model, deltas),
                **{name: model.get_parameter(name).detach().to("cpu").clone() for name in rest}}
    return {name: model.get_parameter(name).detach().to("cpu").clone() for name in info["trainable"]}


def load_adapter_state(model: nn.Module, settings: PeftSettings | Mapping[str, Any],
                       state: Mapping[str, torch.Tensor], ignore: Iterable[str] = ("singer_embedding",)) -> None:
    """Load adapter tensors saved by :func:`adapter_state_dict` into ``model`` (in place), strictly.

    An unprepared model (a freshly loaded base) is first prepared with ``settings``. Keys in
    ``ignore`` (the singer vector, which the caller handles) are skipped; any other missing,
    unexpected or mis-shaped tensor raises ``ValueError`` listing them.
    """
    settings = as_peft_settings(settings)
    info = getattr(model, _PREPARED_ATTR, None)
    if info is None:
        prepare_for_finetune(model, settings)
        info = getattr(model, _PREPARED_ATTR)
    elif info["method"] != settings.method:
        raise ValueError(f"model was prepared with {info['method']}, the adapter uses {settings.method}")
    ignored = set(ignore)
    given = {k: v for k, v in state.items() if k not in ignored}
    if settings.method == "diff":
        given = diff_pruning.unpack(given)
    expected = {name: model.get_parameter(name) for name in info["trainable"]}
    diff = state_dict_diff(expected, given)
    if diff:
        raise ValueError(f"adapter tensors do not fit this base with peft method {settings.method} "
                         f"(other target_modules, rank or architecture?):\n{diff}")
    with torch.no_grad():
        for name, tensor in given.items():
            expected[name].copy_(tensor.to(device=expected[name].device, dtype=expected[name].dtype))


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold injected LoRA/DoRA/(IA)^3/diff adapters into the base weights and remove the adapter layers,
    leaving a plain model with the base's module structure (no inference overhead); qlora's int8 layers
    are dequantised first. For bitfit/freeze/full there is nothing to fold (their tensors already are base
    parameters). adapter/prefix/prompt cannot be folded: the model is left as it is (still unmerged).
    Returns ``model`` (changed in place)."""
    info = getattr(model, _PREPARED_ATTR, None)
    if info is not None and info["method"] in UNMERGEABLE_METHODS:
        log.info("peft %s cannot be merged into the weights: it runs as separate layers", info["method"])
        return model
    int8.dequantize(model)  # qlora: LoRA merges into the dequantised weights
    merged = diff_pruning.merge(model)
    for name, module in list(model.named_modules()):
        if not name or not _is_adapter_layer(module):
            continue
        if isinstance(module, IA3Conv1d):
            module.merge()
        else:
            module.merge(safe_merge=True)
        parent, child = _parent_and_child(model, name)
        setattr(parent, child, module.get_base_layer())
        merged += 1
    if info is not None:
        setattr(model, _PREPARED_ATTR, {**info, "method": "merged", "trainable": []})
    log.info("merged %d adapter layer(s)", merged)
    return model
