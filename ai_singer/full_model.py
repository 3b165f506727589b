"""Reading a full fine-tuned generator of a base's architecture (what :mod:`ai_singer.extract` compresses):
a ``peft=full`` adapter folder, a base-layout folder (``pretrain/<name>/``, e.g. an imported singer model) or a
``.safetensors`` file of generator weights in this project's naming, with or without weight norm.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ai_singer import checkpoint as ckpt
from ai_singer.adapters import load_adapter_state, remove_weight_norm_everywhere
from ai_singer.lora_svd import SINGER_VECTOR, SPEAKER_TABLE, ExtractError, plain_parameters
from ai_singer.model.synthesizer import SingerVAE, SingerVAEConfig


@dataclass
class FullModel:
    """A full fine-tuned generator, read: its parameters with weight norm removed (base naming), the singer
    vector ``[gin_channels]``, and what an adapter folder carried (stats, retrieval index, steps, sha256)."""

    path: Path
    parameters: dict[str, torch.Tensor]
    singer_vector: torch.Tensor
    sha256: str
    stats: dict = field(default_factory=dict)
    steps: int | None = None
    retrieval: torch.Tensor | None = None


def plain_model(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str | os.PathLike
                ) -> SingerVAE:
    """A SingerVAE of ``config`` holding ``state`` (its own naming, with weight norm, like a base's
    ``generator.safetensors``; or the plain naming after weight norm removal), weight norm removed, eval mode.
    Raises StateDictMismatch naming ``source`` when it fits neither."""
    model = SingerVAE(SingerVAEConfig.from_dict(config))
    if not ckpt.state_dict_diff(model.state_dict(), state):
        ckpt.load_state_strict(model, state, source)
        remove_weight_norm_everywhere(model)
    else:
        remove_weight_norm_everywhere(model)
        ckpt.load_state_strict(model, state, source)
    return model.eval()


def base_model(base: ckpt.BaseArtifact) -> SingerVAE:
    """The base's generator with weight norm removed (eval mode)."""
    return plain_model(base.model_config, base.generator_state, base.path / ckpt.BASE_GENERATOR_FILE)


def _pick_speaker(table: torch.Tensor, speakers: list[str], speaker: Any, where: Path) -> torch.Tensor:
    """The row of a speaker table ``[n, gin]`` chosen by ``speaker`` (a name of ``speakers`` or an index)."""
    n = table.shape[0]
    shown = 8
    listing = f"0..{n - 1}"
    if speakers:
        listing = (", ".join(f"{i}={s}" for i, s in enumerate(speakers[:shown]))
                   + (f", ... ({len(speakers) - shown} more)" if len(speakers) > shown else ""))
    if speaker is None:
        if n == 1:
            return table[0]
        raise ExtractError(where, f"the model has {n} speakers and no singer vector of its own",
                           f"choose one with speaker=<index or name> ({listing})")
    text = str(speaker)
    if text in speakers:
        return table[speakers.index(text)]
    if text.lstrip("-").isdigit() and 0 <= int(text) < n:
        return table[int(text)]
    raise ExtractError(f"speaker={speaker}", f"not a speaker of {where} ({listing})")


def _check_same_architecture(base: ckpt.BaseArtifact, base_params: Mapping[str, torch.Tensor],
                             full_params: Mapping[str, torch.Tensor], where: Path) -> None:
    expected = {k: v for k, v in base_params.items() if k != SPEAKER_TABLE}
    given = {k: v for k, v in full_params.items() if k != SPEAKER_TABLE}
    diff = ckpt.state_dict_diff(expected, given)
    if diff:
        raise ExtractError(where, f"not the architecture of the base {base.path} (a full model of another "
                                  f"base or size?):\n{diff}")


def _parameters_as(base: ckpt.BaseArtifact, config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                   where: Path) -> dict[str, torch.Tensor]:
    """The plain parameters of ``state`` read as a SingerVAE of ``config`` (the base's architecture)."""
    try:
        model = plain_model(config, state, where)
    except (ckpt.StateDictMismatch, ValueError) as error:
        reason = error.reason if isinstance(error, ckpt.StateDictMismatch) else str(error)
        raise ExtractError(where, f"not the architecture of the base {base.path}: {reason}") from None
    return plain_parameters(model)


def _speaker_count(state: Mapping[str, torch.Tensor], fallback: int) -> int:
    table = state.get(SPEAKER_TABLE)
    return int(table.shape[0]) if table is not None and table.dim() == 2 else fallback


def load_full(path: str | os.PathLike, base: ckpt.BaseArtifact, base_params: Mapping[str, torch.Tensor],
              speaker: Any = None) -> FullModel:
    """Read ``path`` (a ``peft=full`` adapter folder, a base-layout folder or a ``.safetensors`` generator) as
    a full model of ``base``'s architecture. Every problem is an :class:`ExtractError` (or another UserError)
    naming the file."""
    path = Path(path)
    if path.is_dir() and (path / ckpt.ADAPTER_CONFIG_FILE).is_file():
        return _load_full_adapter(path, base, base_params)
    if path.is_dir() and (path / ckpt.BASE_CONFIG_FILE).is_file():
        other = ckpt.load_base(path)
        config = {**dict(base.model_config), **dict(other.model_config)}
        params = _parameters_as(base, config, other.generator_state, path)
        _check_same_architecture(base, base_params, params, path)
        vector = _pick_speaker(params[SPEAKER_TABLE], other.speakers, speaker, path)
        return FullModel(path=path, parameters=params, singer_vector=vector, sha256=other.sha256,
                         steps=other.config.get("steps"))
    if path.is_file() and path.suffix == ".safetensors":
        state = dict(ckpt.load_safetensors(path))
        vector = state.pop(SINGER_VECTOR, None)
        config = {**dict(base.model_config), "n_speakers": _speaker_count(state, base.model_config["n_speakers"])}
        params = _parameters_as(base, config, {k: v.float() if v.is_floating_point() else v
                                               for k, v in state.items()}, path)
        _check_same_architecture(base, base_params, params, path)
        if vector is None:
            vector = _pick_speaker(params[SPEAKER_TABLE], [], speaker, path)
        return FullModel(path=path, parameters=params, singer_vector=vector.float(), sha256=ckpt.sha256_file(path))
    if path.is_dir():
        raise ExtractError(path, f"not a model folder: no {ckpt.ADAPTER_CONFIG_FILE} (a peft=full adapter) and no "
                                 f"{ckpt.BASE_CONFIG_FILE} (a base-layout model)")
    if not path.exists():
        raise ExtractError(path, "no such file or folder")
    raise ExtractError(path, "not a generator this project reads: give a .safetensors file of generator weights in "
                             "this project's naming, a peft=full adapter folder or a base-layout folder (a so-vits-svc "
                             "G_*.pth: `ai-singer import sovits` it first and give the folder it writes)")


def _load_full_adapter(path: Path, base: ckpt.BaseArtifact, base_params: Mapping[str, torch.Tensor]) -> FullModel:
    adapter = ckpt.load_adapter(path)
    if adapter.method != "full":
        raise ExtractError(path, f"an adapter of method {adapter.method!r} is already an adapter; extraction needs a "
                                 "full model (a peft=full adapter, a base-layout folder or a .safetensors generator)")
    ckpt.check_adapter_base(adapter, base)
    if SINGER_VECTOR not in adapter.tensors:
        raise ExtractError(path / ckpt.ADAPTER_TENSORS_FILE, f"has no {SINGER_VECTOR}")
    model = plain_model(base.model_config, base.generator_state, base.path / ckpt.BASE_GENERATOR_FILE)
    try:
        load_adapter_state(model, adapter.config.get("peft") or {"method": "full"}, adapter.tensors)
    except ValueError as error:
        raise ExtractError(path / ckpt.ADAPTER_TENSORS_FILE, f"does not fit the base {base.path}: {error}") from None
    from ai_singer import retrieval

    return FullModel(path=path, parameters=plain_parameters(model), singer_vector=adapter.tensors[SINGER_VECTOR],
                     sha256=ckpt.sha256_file(path / ckpt.ADAPTER_TENSORS_FILE),
                     stats=dict(adapter.config.get("stats") or {}),
                     steps=adapter.config.get("steps"), retrieval=retrieval.load_index(path))
