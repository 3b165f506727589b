"""Write a random HuBERT / ContentVec checkpoint in fairseq's own file format, without fairseq.

    .venv/bin/python tools/fairseq_hubert_checkpoint.py OUT.pt [--preset tiny|base] [--cfg-style dict|omegaconf|args]

fairseq does not install on Python 3.11, so the importer (``ai_singer.importers.contentvec``) is tested on
files this script writes, with the tensor names, shapes and pickle structure that fairseq's published source
gives. Source of truth, read for understanding (nothing copied), facebookresearch/fairseq at 3d262bb (2025-09):

* ``fairseq/trainer.py`` ``Trainer.state_dict``: the top-level dict ``args`` (None), ``cfg``
  (``OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)``: plain dicts since 2021-03; older files
  pickle omegaconf containers; pre-hydra ones an ``argparse.Namespace`` in ``args``), ``model``,
  ``criterion``, ``optimizer_history``, ``task_state``, ``extra_state``.
* ``fairseq/models/hubert/hubert.py`` ``HubertModel.__init__``: ``mask_emb`` [D]; ``feature_extractor``;
  ``post_extract_proj`` [D, C] (only when the convolutions' C != D); ``encoder``; ``layer_norm`` [C] over the
  convolution features; ``final_proj`` [final_dim, D]; ``label_embs_concat`` [sum of dictionary sizes,
  final_dim]; its config dataclass gives the defaults.
* ``fairseq/models/wav2vec/wav2vec2.py``: ``ConvFeatureExtractionModel`` blocks are ``Sequential(conv,
  Dropout, norm, GELU)`` (conv bias only with ``conv_bias``), the norm at index 2: ``GroupNorm(C, C)`` in
  block 0 only for ``extractor_mode=default``, ``Sequential(TransposeLast, LayerNorm, TransposeLast)`` in
  every block for ``layer_norm`` (hence ``.2.1.``); ``make_conv_pos``: ``weight_norm(Conv1d(D, D, k,
  padding=k//2, groups=g), dim=2)`` first in ``Sequential(conv, SamePad, GELU)`` -> ``encoder.pos_conv.0.
  {bias, weight_g [1, 1, k], weight_v [D, D/g, k]}``; ``TransformerEncoder.layer_norm``;
  ``TransformerSentenceEncoderLayer``: ``self_attn`` (``fairseq/modules/multihead_attention.py``:
  ``k_proj``, ``v_proj``, ``q_proj``, ``out_proj``), ``self_attn_layer_norm``, ``fc1``, ``fc2``,
  ``final_layer_norm``.
* ``fairseq/tasks/hubert_pretraining.py`` + ``fairseq_task.py``: ``task_state = {"dictionaries":
  [Dictionary, ...]}``; ``fairseq/data/dictionary.py``: a Dictionary's attributes (4 specials, then the
  cluster ids). The Dictionary is pickled under its fairseq name (``fairseq.data.dictionary.Dictionary``)
  by a stand-in class registered under that module name only while saving.

The ``base`` preset has the shapes of ``hubert_base_ls960.pt`` and of ContentVec's
``checkpoint_best_legacy_500.pt`` (12 layers x 768, 7 convolutions of 512 channels, final_dim 256, 500
clusters + 4 specials); ContentVec's legacy file is a plain fairseq HuBERT checkpoint (so-vits-svc loads it
with fairseq's HubertModel). These are published shapes and names, not files made by the original code.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import re
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import torch

#: A tiny HuBERT for tests: 3 layers x 32, heads of 8, convolutions of 24 channels (hop 5*2*2*2 = 40).
TINY = {"_name": "hubert", "encoder_layers": 3, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
        "encoder_attention_heads": 4, "conv_feature_layers": "[(24,10,5)] + [(24,3,2)] * 2 + [(24,2,2)]",
        "conv_pos": 8, "conv_pos_groups": 4, "final_dim": 16, "extractor_mode": "default", "conv_bias": False,
        "layer_norm_first": False, "activation_fn": "gelu", "label_rate": 50.0}
#: hubert_base_ls960.pt / ContentVec legacy shapes (fairseq's HubertConfig defaults + final_dim 256).
BASE = {"_name": "hubert", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
        "encoder_attention_heads": 12, "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
        "conv_pos": 128, "conv_pos_groups": 16, "final_dim": 256, "extractor_mode": "default", "conv_bias": False,
        "layer_norm_first": False, "activation_fn": "gelu", "label_rate": 50.0}
PRESETS = {"tiny": (TINY, 10), "base": (BASE, 500)}


def conv_layers(model_cfg: dict) -> list[tuple[int, int, int]]:
    """The (channels, kernel, stride) list of ``conv_feature_layers`` written as fairseq writes it: terms
    ``[(channels,kernel,stride)]`` or ``[(...)] * n`` joined by ``+``."""
    layers = []
    for term in model_cfg["conv_feature_layers"].split("+"):
        match = re.fullmatch(r"\s*\[\((\d+),\s*(\d+),\s*(\d+)\)\]\s*(?:\*\s*(\d+))?\s*", term)
        if match is None:
            raise ValueError(f"conv_feature_layers term {term!r} is not [(c,k,s)] or [(c,k,s)] * n")
        layers += [tuple(int(v) for v in match.groups()[:3])] * int(match.group(4) or 1)
    return layers


def random_state(model_cfg: dict, n_clusters: int, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """A fairseq HubertModel state dict with random values, in fairseq's names, shapes and order.

    Norm weights are 1 + noise and biases small noise, so that every tensor matters in a comparison."""
    gen = torch.Generator().manual_seed(seed)

    def weight(*shape: int, fan_in: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / fan_in ** 0.5

    def norm(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return 1 + 0.1 * torch.randn(n, generator=gen), 0.1 * torch.randn(n, generator=gen)

    def small(*shape: int) -> torch.Tensor:
        return 0.1 * torch.randn(*shape, generator=gen)

    layers = conv_layers(model_cfg)
    d, ffn = model_cfg["encoder_embed_dim"], model_cfg["encoder_ffn_embed_dim"]
    final_dim = model_cfg["final_dim"] or d
    k, groups = model_cfg["conv_pos"], model_cfg["conv_pos_groups"]
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state["mask_emb"] = torch.rand(d, generator=gen)
    state["label_embs_concat"] = torch.rand(n_clusters + 4, final_dim, generator=gen)
    in_channels = 1
    for i, (channels, kernel, _) in enumerate(layers):
        prefix = f"feature_extractor.conv_layers.{i}"
        state[f"{prefix}.0.weight"] = weight(channels, in_channels, kernel, fan_in=in_channels * kernel)
        if model_cfg["conv_bias"]:
            state[f"{prefix}.0.bias"] = small(channels)
        if model_cfg["extractor_mode"] == "layer_norm":
            state[f"{prefix}.2.1.weight"], state[f"{prefix}.2.1.bias"] = norm(channels)
        elif i == 0:
            state[f"{prefix}.2.weight"], state[f"{prefix}.2.bias"] = norm(channels)
        in_channels = channels
    if in_channels != d:
        state["post_extract_proj.weight"] = weight(d, in_channels, fan_in=in_channels)
        state["post_extract_proj.bias"] = small(d)
    state["encoder.pos_conv.0.bias"] = small(d)
    state["encoder.pos_conv.0.weight_g"] = 0.5 + torch.rand(1, 1, k, generator=gen)
    state["encoder.pos_conv.0.weight_v"] = weight(d, d // groups, k, fan_in=k * d // groups)
    for i in range(model_cfg["encoder_layers"]):
        prefix = f"encoder.layers.{i}"
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            state[f"{prefix}.self_attn.{name}.weight"] = weight(d, d, fan_in=d)
            state[f"{prefix}.self_attn.{name}.bias"] = small(d)
        state[f"{prefix}.self_attn_layer_norm.weight"], state[f"{prefix}.self_attn_layer_norm.bias"] = norm(d)
        state[f"{prefix}.fc1.weight"], state[f"{prefix}.fc1.bias"] = weight(ffn, d, fan_in=d), small(ffn)
        state[f"{prefix}.fc2.weight"], state[f"{prefix}.fc2.bias"] = weight(d, ffn, fan_in=ffn), small(d)
        state[f"{prefix}.final_layer_norm.weight"], state[f"{prefix}.final_layer_norm.bias"] = norm(d)
    state["encoder.layer_norm.weight"], state["encoder.layer_norm.bias"] = norm(d)
    state["layer_norm.weight"], state["layer_norm.bias"] = norm(in_channels)
    state["final_proj.weight"], state["final_proj.bias"] = weight(final_dim, d, fan_in=d), small(final_dim)
    return state


class Dictionary:
    """Stands in for ``fairseq.data.dictionary.Dictionary`` while pickling: the same attributes."""

    def __init__(self, n_clusters: int):
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(n_clusters)]
        self.count = [1] * 4 + [100] * n_clusters
        self.indices = {symbol: i for i, symbol in enumerate(self.symbols)}
        self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3
        self.nspecial = 4


@contextlib.contextmanager
def pickled_under(cls: type, module_name: str) -> Iterator[None]:
    """Let pickle write ``cls`` as ``module_name.<its name>`` (e.g. :class:`Dictionary` as
    ``fairseq.data.dictionary.Dictionary``): the module and its parents exist in ``sys.modules`` meanwhile."""
    parts = module_name.split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    setattr(modules[module_name], cls.__name__, cls)
    original = cls.__module__
    cls.__module__ = module_name
    sys.modules.update(modules)
    try:
        yield
    finally:
        cls.__module__ = original
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def write_checkpoint(path: str | Path, model_cfg: dict, n_clusters: int, seed: int = 0, cfg_style: str = "dict",
                     task_cfg: dict | None = None, cfg_overrides: dict | None = None, legacy_format: bool = False,
                     dtype: torch.dtype = torch.float32) -> "OrderedDict[str, torch.Tensor]":
    """Write a random fairseq HuBERT checkpoint to ``path``; returns its state dict (float32).

    Args:
        cfg_style: ``dict`` (fairseq >= 2021-03: ``cfg`` of plain containers), ``omegaconf`` (``cfg`` as an
            omegaconf DictConfig, older hydra files) or ``args`` (pre-hydra: ``args`` Namespace, ``cfg`` absent).
        task_cfg: task settings (default: HuBERT pre-training at 16 kHz, normalize false).
        cfg_overrides: model settings written into the stored config only, not used for the weights (a
            config that does not match its weights).
        legacy_format: torch's pre-1.6 (non-zip) serialisation.
        dtype: dtype of the stored tensors.
    """
    state = random_state(model_cfg, n_clusters, seed)
    task = {"_name": "hubert_pretraining", "sample_rate": 16000, "normalize": False, "label_rate": 50.0,
            "labels": ["km"], **(task_cfg or {})}
    cfg = {"_name": None, "common": {"fp16": False, "seed": seed},
           "model": {**copy.deepcopy(model_cfg), **(cfg_overrides or {})}, "task": task,
           "criterion": {"_name": "hubert", "pred_masked_weight": 1.0},
           "optimization": {"max_update": 400000, "lr": [0.0005]}}
    checkpoint = {"args": None, "cfg": cfg, "model": OrderedDict((k, v.to(dtype)) for k, v in state.items()),
                  "criterion": None,
                  "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                                         "lr_scheduler_state": {"best": None}, "num_updates": 400000}],
                  "task_state": {"dictionaries": [Dictionary(n_clusters)]},
                  "extra_state": {"metrics": {}, "previous_training_time": 1234.5,
                                  "train_iterator": {"epoch": 3, "iterations_in_epoch": 0, "shuffle": True}}}
    if cfg_style == "omegaconf":
        from omegaconf import OmegaConf

        checkpoint["cfg"] = OmegaConf.create(cfg)
    elif cfg_style == "args":
        flat = {**task, **cfg["model"], "arch": model_cfg["_name"], "task": task["_name"]}
        flat.pop("_name")
        checkpoint["args"], checkpoint["cfg"] = argparse.Namespace(**flat), None
    elif cfg_style != "dict":
        raise ValueError(f"cfg_style must be dict, omegaconf or args, not {cfg_style!r}")
    with pickled_under(Dictionary, "fairseq.data.dictionary"):
        torch.save(checkpoint, str(path), _use_new_zipfile_serialization=not legacy_format)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="checkpoint file to write (.pt)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--cfg-style", choices=["dict", "omegaconf", "args"], default="dict")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model_cfg, n_clusters = PRESETS[args.preset]
    write_checkpoint(args.out, model_cfg, n_clusters, seed=args.seed, cfg_style=args.cfg_style)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, {args.preset}, cfg as {args.cfg_style})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
