"""fairseq checkpoints (``hubert_base.pt``, ContentVec's ``checkpoint_best_legacy_500.pt``) read without
fairseq, safely.

A fairseq checkpoint is a pickled dict: ``model`` (the state dict), ``cfg`` (the hydra config: a plain
dict in checkpoints saved by fairseq >= 2021-03, an omegaconf ``DictConfig`` in some older ones) or ``args``
(an ``argparse.Namespace`` in pre-hydra checkpoints), ``task_state`` (HuBERT's label dictionaries:
``fairseq.data.dictionary.Dictionary`` objects), ``optimizer_history``, ``extra_state`` and so on.

Only the classes below may appear (:data:`ALLOWED`, and fairseq's ``...Config`` dataclasses). ``argparse.Namespace`` and the builtins are the real,
harmless ones; every fairseq and omegaconf class is replaced by a :class:`PickledRecord` stand-in that only
keeps the pickled data, so neither fairseq nor omegaconf code runs (and neither needs to be installed).
:func:`plain` turns the omegaconf stand-ins back into dicts and lists.
"""
from __future__ import annotations

import argparse
import ast
import re
import typing
from pathlib import Path
from typing import Any

import torch

from ai_singer.importers.safe_load import CheckpointError, load_checkpoint


class PickledRecord:
    """An object of a class this project does not import, kept as inert data.

    ``pickled_as`` is the class name written in the pickle; ``args`` the constructor arguments it gave;
    ``state`` what it pickled as its state (usually its ``__dict__``). No method of the original class runs.
    """

    pickled_as = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledRecord":
        record = object.__new__(cls)
        record.args, record.state = args, None
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_as}>"


def _record_class(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (PickledRecord,), {"pickled_as": name, "__module__": __name__})


def _plain_dict(*args: Any) -> dict:
    """``collections.defaultdict(factory)`` as a plain dict (omegaconf pickles its flags in one)."""
    return {}


_OMEGACONF_CONTAINERS = ("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig")
_OMEGACONF_OTHERS = ("omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode",
                     "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode", "omegaconf.nodes.FloatNode",
                     "omegaconf.nodes.BooleanNode", "omegaconf.nodes.EnumNode", "omegaconf.nodes.BytesNode",
                     "omegaconf.nodes.PathNode", "omegaconf.nodes.ValueNode")

#: Other classes kept as inert records: HuBERT's label dictionaries (``task_state``) and numpy scalars that
#: training metrics may hold (``extra_state``); none of them is needed for the conversion.
_RECORDED_AS_DATA = ("fairseq.data.dictionary.Dictionary", "numpy.core.multiarray.scalar",
                     "numpy._core.multiarray.scalar", "numpy.dtype")

#: Pickled name -> what it becomes while loading a fairseq checkpoint. The fairseq and omegaconf classes
#: are stand-ins (:class:`PickledRecord`); the rest are the harmless real ones.
ALLOWED: dict[str, Any] = {
    "argparse.Namespace": argparse.Namespace,
    "typing.Any": typing.Any,
    "collections.defaultdict": _plain_dict,
    "builtins.list": list,
    "builtins.dict": dict,
    "builtins.int": int,
    "builtins.float": float,
    "builtins.str": str,
    "builtins.bool": bool,
    "builtins.tuple": tuple,
    **{name: _record_class(name) for name in _OMEGACONF_CONTAINERS + _OMEGACONF_OTHERS + _RECORDED_AS_DATA},
}


#: fairseq's configuration dataclasses (``fairseq.models.hubert.hubert.HubertConfig``,
#: ``fairseq.tasks.hubert_pretraining.HubertPretrainingConfig``, ...) that omegaconf containers of older
#: checkpoints refer to as their ``object_type``: admitted as inert records, by name.
_FAIRSEQ_CONFIG_CLASS = re.compile(r"fairseq(\.[A-Za-z_][A-Za-z0-9_]*)+\.[A-Za-z0-9_]*Config")


def _config_stand_in(name: str) -> type | None:
    """An inert record class for a fairseq configuration dataclass (None for any other name)."""
    return _record_class(name) if _FAIRSEQ_CONFIG_CLASS.fullmatch(name) else None


def plain(value: Any) -> Any:
    """``value`` with omegaconf stand-ins turned into dicts/lists/values and Namespaces into dicts
    (other stand-ins, e.g. fairseq Dictionaries, stay as they are)."""
    if isinstance(value, argparse.Namespace):
        return {key: plain(item) for key, item in vars(value).items()}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, PickledRecord) and value.pickled_as.startswith("omegaconf."):
        state = value.state if isinstance(value.state, dict) else {}
        if value.pickled_as in _OMEGACONF_CONTAINERS:
            return plain(state.get("_content"))
        return plain(state.get("_val"))
    return value


def read_fairseq_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """``(state dict, model config, task config)`` of a fairseq checkpoint, as plain Python data.

    The model config is ``cfg["model"]`` (or the pre-hydra ``args``, which hold model and task settings
    together); keys absent from the file are absent here (fairseq's own defaults apply).

    Raises:
        CheckpointError: unreadable (see :func:`~ai_singer.importers.safe_load.load_checkpoint`), or a
            checkpoint without a ``model`` state dict or without a configuration.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path, ALLOWED, what="a fairseq checkpoint", stand_in_for=_config_stand_in)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise CheckpointError(path, "is a bare state dict, not a fairseq checkpoint (no 'model' and 'cfg'); a "
                                        "Hugging Face pytorch_model.bin goes in a folder with its config.json, "
                                        "used directly as content.path")
        keys = ", ".join(map(str, list(checkpoint)[:6])) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(path, f"is not a fairseq checkpoint: no 'model' state dict (it holds {keys})")
    state = checkpoint["model"]
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"'model' holds non-tensor entries ({', '.join(map(str, bad[:3]))}): not a "
                                    "fairseq model state dict")
    cfg, args = plain(checkpoint.get("cfg")), plain(checkpoint.get("args"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        task = cfg.get("task")
        return state, cfg["model"], task if isinstance(task, dict) else {}
    if isinstance(args, dict):
        return state, args, args
    raise CheckpointError(path, "holds a state dict but no model configuration (neither cfg.model nor args): "
                                "not a complete fairseq checkpoint")


def parse_conv_layers(text: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``,
    as ``[(channels, kernel, stride), ...]``. fairseq ``eval``s it; here only list/tuple literals of
    integers joined by ``+`` and repeated by ``*`` are accepted.

    Raises:
        ValueError: anything else.
    """
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(value(item) for item in node.elts)
        if isinstance(node, ast.List):
            return [value(item) for item in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult) and isinstance(left, list) and type(right) is int and 0 <= right < 1000:
                return left * right
        raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")

    try:
        layers = value(ast.parse(str(text), mode="eval").body)
    except SyntaxError as error:
        raise ValueError(f"not a list expression: {error.msg}") from None
    if not isinstance(layers, list) or not layers or not all(
            isinstance(layer, tuple) and len(layer) == 3 and all(type(v) is int and v > 0 for v in layer)
            for layer in layers):
        raise ValueError("expected a non-empty list of (channels, kernel, stride) tuples of positive integers")
    return layers
