"""Blending singers: several adapters on one base, combined with weights into one adapter, without training.

A blend with weights ``w_i`` (normalised to sum to 1) is the model whose weights are ``sum_i w_i W_i``, the
weighted mean of the parents' merged weights, with the singer vector ``g = sum_i w_i g_i``. For the methods
whose merged weights are linear in their tensors this is itself an adapter of the same method, exactly:

* ``lora`` (and ``qlora``, LoRA on the same quantised base): ``W0 + sum_i w_i s_i B_i A_i`` is one LoRA whose
  ``A`` stacks the parents' ``A_i`` along the rank and whose ``B`` stacks ``w_i (s_i / s) B_i`` (rank = the sum
  of the parents' ranks; each ``s_i = alpha_i / r_i`` folded in). Never the product of mean ``A`` and mean
  ``B``, which is not the mean of the products.
* ``ia3`` (``W0 * l``), ``bitfit``, ``freeze``, ``full`` (the parameters themselves) and ``diff``
  (``W0 + delta``): the weighted mean of each tensor.

``dora`` (a per-channel norm of ``W0 + BA``), ``adapter``, ``prefix`` and ``prompt`` (non-linear in their
tensors) and parents of different methods are refused with a :class:`BlendError` saying so: a blend is
exact or it is not made. Parents must share their base (recorded sha256) and adapt the same modules.

``blend_adapters`` works on loaded artifacts (the Converter blends in memory for ``singer=alice:0.6,bob:0.4``);
:func:`write_blend` saves a blend as its own adapter folder (``ai-singer blend``), which records its
parents, their weights and adapter hashes, and the base hash, like any adapter.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from ai_singer import checkpoint, diff_pruning
from ai_singer.errors import UserError
from ai_singer.singer_spec import SingerSpec

#: Methods whose adapters blend exactly into one adapter of the same method.
BLENDABLE_METHODS = ("lora", "qlora", "ia3", "bitfit", "freeze", "full", "diff")
#: Methods that cannot, and why (for the error message).
NOT_BLENDABLE = {
    "dora": "DoRA normalises each output channel of W0 + BA, so a weighted sum of DoRA adapters is no DoRA adapter",
    "adapter": "bottleneck adapters are non-linear in their weights",
    "prefix": "attention over a mix of prefixes is no mix of the attentions",
    "prompt": "prompt vectors pass through the whole non-linear encoder",
}
SINGER_VECTOR = "singer_embedding"
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)\.(?P<adapter>[^.]+)\.weight$")


class BlendError(UserError):
    """Singers that cannot be blended: ``str()`` is ``"{spec}: {reason}"``."""


def _normalised(weights: Sequence[float], where: str) -> list[float]:
    weights = [float(w) for w in weights]
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise BlendError(where, f"blend weights {weights} must be >= 0 with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def _check_parents(parents: Sequence[checkpoint.AdapterArtifact], names: Sequence[str], where: str) -> str:
    """The common method of ``parents``; BlendError for different bases, methods or tensor layouts."""
    bases = {p.base_sha256 for p in parents}
    if len(bases) > 1:
        listing = "; ".join(f"{n} on {p.config.get('base_name') or '?'} ({p.base_sha256[:12]})"
                            for n, p in zip(names, parents))
        raise BlendError(where, f"the singers were trained on different bases ({listing})",
                         "blend only adapters of one base (`ai-singer singers` shows each adapter's base)")
    methods = {p.method for p in parents}
    if len(methods) > 1:
        raise BlendError(where, "the singers use different PEFT methods ("
                         + ", ".join(f"{n}: {p.method}" for n, p in zip(names, parents)) + "); a blend is exact only "
                         "for adapters of one method", "fine-tune them with the same peft=")
    method = methods.pop()
    if method not in BLENDABLE_METHODS:
        reason = NOT_BLENDABLE.get(method, "no exact blend is known for it")
        raise BlendError(where, f"adapters of method {method!r} cannot be blended exactly: {reason}",
                         f"fine-tune the singers with one of {', '.join(BLENDABLE_METHODS)}")
    for name, parent in zip(names, parents):
        if SINGER_VECTOR not in parent.tensors:
            raise BlendError(where, f"singer {name!r}'s adapter has no {SINGER_VECTOR}")
    layouts = [{k: tuple(v.shape) for k, v in p.tensors.items()} for p in parents]
    for name, layout in zip(names[1:], layouts[1:]):
        keys, first = set(layout), set(layouts[0])
        if keys != first:
            extra = sorted(keys ^ first)
            raise BlendError(where, f"{names[0]!r} and {name!r} adapt different parts of the base "
                                    f"(other target_modules, bias or freeze settings): {', '.join(extra[:4])}"
                             + (" ..." if len(extra) > 4 else ""))
        if method not in ("lora", "qlora", "diff"):  # LoRA ranks may differ (stacked: their sum), diff supports too
            shapes = [k for k in first if layout[k] != layouts[0][k]]
            if shapes:
                raise BlendError(where, f"{names[0]!r} and {name!r} have tensors of other shapes: {shapes[:4]}")
    return method


def _rank_dim(a: torch.Tensor, rank: int, key: str) -> int:
    """The rank axis of a LoRA ``A`` weight: 0 for Linear/Conv1d/Embedding (``[r, in(, k)]``), 1 for a
    transposed conv (``[in, r, k]``). A transposed conv with ``in_channels == r`` would look like a Conv1d:
    none of this model's has so few channels."""
    if a.shape[0] == rank:
        return 0
    if a.ndim == 3 and a.shape[1] == rank:
        return 1
    raise BlendError(key, f"LoRA A of shape {tuple(a.shape)} has no axis of the rank {rank}")


def _blend_lora(parents: Sequence[checkpoint.AdapterArtifact], weights: Sequence[float]
                ) -> tuple[dict[str, torch.Tensor], dict[str, int], float]:
    """Stack the parents' LoRA factors (module docstring). Returns the tensors (LoRA and any other trained
    tensors, e.g. biases with ``bias: all``, as weighted means), each module's stacked rank and the blend's
    ``alpha`` (= its ``r``, the sum of the parents' ``r``: scaling 1 for an unpatterned module)."""
    peft = [dict(p.config.get("peft") or {}) for p in parents]
    r_blend = sum(int(settings["r"]) for settings in peft)
    alpha_blend = float(r_blend)
    modules: dict[str, tuple[str, str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for key in parents[0].tensors:
        match = _LORA.match(key)
        if match:
            keys = modules.setdefault(match["module"], ("", ""))
            modules[match["module"]] = (key, keys[1]) if match["part"] == "A" else (keys[0], key)
        else:
            tensors[key] = sum(w * p.tensors[key].float() for w, p in zip(weights, parents))
    ranks: dict[str, int] = {}
    for module, (key_a, key_b) in modules.items():
        if not key_a or not key_b:
            raise BlendError(module, "a LoRA module needs both lora_A and lora_B weights")
        blocks_a, blocks_b = [], []
        for w, p, settings in zip(weights, parents, peft):
            a, b = p.tensors[key_a].float(), p.tensors[key_b].float()
            rank = b.shape[1]
            scaling = float(settings["alpha"]) / rank
            blocks_a.append((a, _rank_dim(a, rank, key_a)))
            blocks_b.append(b * (w * scaling))
        ranks[module] = sum(b.shape[1] for b in blocks_b)
        dim = blocks_a[0][1]
        tensors[key_a] = torch.cat([a for a, _ in blocks_a], dim=dim)
        tensors[key_b] = torch.cat(blocks_b, dim=1) / (alpha_blend / ranks[module])
    return tensors, ranks, alpha_blend


def _blend_stats(parents: Sequence[checkpoint.AdapterArtifact], weights: Sequence[float]) -> dict[str, float]:
    """The F0 statistics (``f0_*_hz``) as weighted geometric means (pitch mixes in log frequency); only
    those every parent records."""
    stats = [dict(p.config.get("stats") or {}) for p in parents]
    keys = [k for k in stats[0] if k.startswith("f0_") and all(s.get(k) for s in stats)]
    return {k: round(math.exp(sum(w * math.log(float(s[k])) for w, s in zip(weights, stats))), 3) for k in keys}


def blend_adapters(parents: Sequence[checkpoint.AdapterArtifact], weights: Sequence[float],
                   names: Sequence[str] | None = None, where: str = "singer") -> checkpoint.AdapterArtifact:
    """One adapter artifact (in memory; ``path`` is the first parent's folder) that is the blend of
    ``parents`` with ``weights`` (>= 0, normalised here). Its config records method, peft settings, base
    sha256/name, blended F0 stats and ``blend: {parents: [{singer, weight, adapter_sha256}]}``; its tensors
    hold ``singer_embedding`` ``[gin]`` = the weighted mean. BlendError (module docstring) when no exact blend
    exists."""
    names = list(names) if names is not None else [p.singer for p in parents]
    if not parents or len(parents) != len(weights) or len(names) != len(parents):
        raise BlendError(where, "a blend needs one weight per singer")
    weights = _normalised(weights, where)
    method = _check_parents(parents, names, where)
    peft = dict(parents[0].config.get("peft") or {"method": method})
    if method in ("lora", "qlora"):
        tensors, ranks, alpha = _blend_lora(parents, weights)
        peft["r"], peft["alpha"] = int(sum(int((p.config.get("peft") or {})["r"]) for p in parents)), alpha
        odd = {re.escape(module): rank for module, rank in ranks.items() if rank != peft["r"]}
        if odd:
            if "rank_pattern" not in peft:
                raise BlendError(where, f"the parents' LoRA ranks differ per module ({sorted(odd)[:3]}) and this "
                                        "version's peft settings have no rank_pattern to record it")
            peft["rank_pattern"] = odd
    elif method == "diff":  # dense differences averaged, stored sparsely again with a density that keeps them all
        dense = [diff_pruning.unpack({k: v for k, v in p.tensors.items() if k != SINGER_VECTOR}) for p in parents]
        if any({k: tuple(v.shape) for k, v in d.items()} != {k: tuple(v.shape) for k, v in dense[0].items()}
               for d in dense):
            raise BlendError(where, "the singers' diff tensors have other shapes (another architecture?)")
        mean = {key: sum(w * d[key].float() for w, d in zip(weights, dense)) for key in dense[0]}
        deltas = {k: v for k, v in mean.items() if k.rpartition(".")[2] in diff_pruning.DIFF_SEGMENTS}
        tensors = {**diff_pruning.pack_dense(deltas), **{k: v for k, v in mean.items() if k not in deltas}}
        peft["diff_density"] = max(float(peft.get("diff_density") or 0.0), diff_pruning.needed_density(deltas))
    else:
        tensors = {key: sum(w * p.tensors[key].float() for w, p in zip(weights, parents))
                   for key in parents[0].tensors if key != SINGER_VECTOR}
    tensors[SINGER_VECTOR] = sum(w * p.tensors[SINGER_VECTOR].float() for w, p in zip(weights, parents))
    tensors = {k: v.to(parents[0].tensors[k].dtype if k in parents[0].tensors and v.is_floating_point() else v.dtype)
               .contiguous() for k, v in tensors.items()}
    config = {"method": method, "peft": peft, "base_sha256": parents[0].base_sha256,
              "base_name": parents[0].config.get("base_name"), "stats": _blend_stats(parents, weights),
              "blend": {"parents": [{"singer": n, "weight": round(w, 6),
                                     "adapter_sha256": p.tensors_sha256()} for n, w, p in zip(names, weights, parents)]}}
    return checkpoint.AdapterArtifact(path=Path(parents[0].path), config=config, tensors=tensors)


def write_blend(spec: SingerSpec, parent_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                overwrite: bool = False) -> Path:
    """Blend the adapters in ``parent_dirs`` (one per name of ``spec``) and save the result at ``out_dir``
    as an adapter named after the folder (all files appear together, or none). BlendError for an existing
    ``out_dir`` (unless ``overwrite``), an output that is one of its parents, or singers that do not blend."""
    out_dir = Path(out_dir)
    where = f"blend {spec.describe()}"
    if any(Path(d).resolve() == out_dir.resolve() for d in parent_dirs):
        raise BlendError(where, f"the output {out_dir} is one of the singers blended", "choose another out=NAME")
    if (out_dir / checkpoint.ADAPTER_CONFIG_FILE).exists() and not overwrite:
        raise BlendError(where, f"{out_dir} already holds an adapter", "choose another out=NAME or pass --overwrite")
    parents = []
    for name, folder in zip(spec.names, parent_dirs):
        try:
            parents.append(checkpoint.load_adapter(folder))
        except checkpoint.ArtifactError as error:
            raise BlendError(f"singer {name!r}", f"cannot load the adapter: {error}") from error
    blended = blend_adapters(parents, spec.weights, spec.names, where)
    config = {"singer": out_dir.name, **blended.config}
    return checkpoint.save_adapter(out_dir, blended.tensors, config,  # all files appear together, or none
                                   voice_print=_blend_voice_prints(parents, spec.weights))


def _blend_voice_prints(parents: Sequence[checkpoint.AdapterArtifact], weights: Sequence[float]):
    """The weighted mean of the parents' voice prints (:mod:`ai_singer.voice_print`), or None unless every parent
    has one, all taken with the same encoder (the blend is then refined without one)."""
    from ai_singer.voice_print import parent_prints

    try:
        return parent_prints([parent.path for parent in parents], [parent.singer for parent in parents],
                             weights).blended
    except ValueError as error:
        raise BlendError("blend", str(error)) from error
