"""The three kinds of files training writes, and how they are read back safely.

* **Base artifact** ``pretrain/<name>/``: ``generator.safetensors`` (what inference loads),
  ``discriminator.safetensors`` (fine-tuning only) and ``config.yaml`` (architecture, framing,
  content encoder, speakers, ``generator_sha256``, ``format_version``, ``kind: base``, ``created``).
  The base hash is the sha256 of ``generator.safetensors``; :func:`load_base` checks it.
* **Adapter artifact** ``singers/<name>/``: ``adapter.safetensors`` (the few tensors the PEFT method
  trains, plus ``singer_embedding`` ``[gin_channels]``) and ``adapter.yaml`` (method config,
  ``base_sha256``, singer statistics). :func:`check_adapter_base` refuses an adapter on another base.
* **Training state** ``runs/<run>/checkpoints/step_XXXXXXXX.pt``: ``torch.save`` of plain tensors,
  dicts, lists, numbers and strings only, read back with ``torch.load(..., weights_only=True)`` (no
  pickle code execution). Only for resuming; the newest ``keep_last`` are kept.

Every file goes through :mod:`ai_singer.atomic`, so a crash leaves the old file or the new one.
Weights are loaded strictly: :func:`load_state_strict` refuses missing, unexpected or mis-shaped
tensors with a readable list instead of silently keeping random layers.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import yaml

from ai_singer.atomic import atomic_folder, atomic_path, atomic_write_text, remove_stale_temporaries, restore_set_aside
from ai_singer.errors import UserError
from ai_singer.file_hash import sha256_file
from ai_singer.retrieval import RETRIEVAL_FILE, save_index
from ai_singer.voice_print import VOICE_PRINT_FILE, VoicePrint, save_voice_print

log = logging.getLogger(__name__)

#: The artifact format this code writes; :data:`SUPPORTED_FORMAT_VERSIONS` are the ones it reads.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

BASE_GENERATOR_FILE = "generator.safetensors"
BASE_DISCRIMINATOR_FILE = "discriminator.safetensors"
BASE_CONFIG_FILE = "config.yaml"
ADAPTER_TENSORS_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter.yaml"
#: What an export writes into an artifact folder: a re-export replaces these (one left from an earlier export
#: and not written again, e.g. a retrieval index, goes); the folder's other files are kept.
BASE_FILES = (BASE_GENERATOR_FILE, BASE_DISCRIMINATOR_FILE, BASE_CONFIG_FILE)
ADAPTER_FILES = (ADAPTER_TENSORS_FILE, ADAPTER_CONFIG_FILE, RETRIEVAL_FILE, VOICE_PRINT_FILE)
CHECKPOINTS_DIR = "checkpoints"
#: Dtypes a base artifact's floating-point tensors may be stored in (``weights_dtype`` in its config.yaml).
WEIGHTS_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_PRETRAIN_HINT = "make one with `python -m ai_singer.train mode=pretrain name=<base>` (written to pretrain/<base>/)"
_FINETUNE_HINT = ("make one with `python -m ai_singer.train mode=finetune singer=<name> base=pretrain/<base>` "
                  "(written to singers/<name>/)")
_STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")


# ------------------------------------------------------------------------------------------- errors

class ArtifactError(UserError):
    """An artifact (base, adapter, training state) that cannot be used; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        super().__init__(path, reason)


class ArtifactMissing(ArtifactError, FileNotFoundError):
    """The folder or one of its files does not exist."""


class ArtifactHashMismatch(ArtifactError):
    """A weights file does not have the sha256 its config records (edited, truncated or swapped)."""


class UnsupportedFormatVersion(ArtifactError):
    """Written by a newer (or unknown) version of ai_singer."""


class AdapterBaseMismatch(ArtifactError):
    """An adapter was trained on another base model than the one given."""


class StateDictMismatch(ArtifactError):
    """Weights that do not fit the module: missing, unexpected or mis-shaped tensors."""


# ------------------------------------------------------------------------------------------ helpers

def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _plain(obj: Any) -> Any:
    """Config objects (OmegaConf, dataclasses, tuples, Paths) → plain YAML-safe Python."""
    if hasattr(obj, "_metadata") and hasattr(obj, "_content"):  # an OmegaConf container
        from omegaconf import OmegaConf

        return _plain(OmegaConf.to_container(obj, resolve=True))
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _tensors_for_saving(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared or strided storage)."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{path}: {key!r} is a {type(value).__name__}, only tensors can be saved here")
        out[str(key)] = value.detach().to("cpu").contiguous().clone()
    return out


def _save_safetensors(path: Path, state: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``state`` atomically, byte-identical for identical tensors and metadata: the artifact's hash
    (an adapter's ``base_sha256``) is the file's sha256. safetensors writes a metadata map with several
    keys in a random order, so ``metadata`` is stored as one key, ``ai_singer``: its sorted JSON."""
    from safetensors.torch import save_file

    tensors = _tensors_for_saving(state, path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"ai_singer": json.dumps(metadata, sort_keys=True)})


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on CPU; :class:`ArtifactError` naming it when it is not one."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
        raise ArtifactError(path, f"not a readable safetensors file ({exc})") from exc


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ArtifactError(path, f"not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(path, "expected a YAML mapping at the top level")
    return data


def _check_header(path: Path, config: dict, kind: str) -> None:
    version = config.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise UnsupportedFormatVersion(
            path, f"format_version {version!r} is not supported by this version of ai_singer (it reads "
                  f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade ai_singer or re-export the artifact")
    if config.get("kind") != kind:
        raise ArtifactError(path, f"expected kind: {kind}, found kind: {config.get('kind')!r}")


def _require_files(directory: Path, names: list[str], what: str, hint: str) -> None:
    if not directory.is_dir():
        raise ArtifactMissing(directory, f"no {what} folder here; {hint}")
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise ArtifactMissing(directory, f"not a complete {what}: missing {', '.join(missing)}; {hint}")


@contextlib.contextmanager
def _export_folder(directory: Path, artifact_files: tuple[str, ...]) -> Iterator[Path]:
    """Yield an empty folder to write a whole artifact into; on a clean exit it replaces ``directory`` in one
    swap (:func:`ai_singer.atomic.atomic_folder`), so a reader, or a run after a kill at any moment, finds the
    complete old artifact or the complete new one, never files of two exports side by side. Before writing,
    an earlier export killed mid-swap is undone (its set-aside folder put back) and killed exports'
    temporary folders beside ``directory`` are removed. Files of the old folder that are not
    ``artifact_files`` (the user's own: notes, samples) are carried over (hard-linked, else copied)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory.parent)
    with atomic_folder(directory) as folder:
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.name in artifact_files or path.name.startswith("."):
                    continue
                if path.is_dir():
                    shutil.copytree(path, folder / path.name, copy_function=_link_or_copy)
                else:
                    _link_or_copy(path, folder / path.name)
        yield folder


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ----------------------------------------------------------------------------------- strict loading

def state_dict_diff(expected: Mapping[str, torch.Tensor | torch.Size | tuple],
                    given: Mapping[str, torch.Tensor], max_items: int = 10) -> str:
    """A readable description of how ``given`` differs from ``expected`` ("" when they fit).

    ``expected`` maps names to tensors or shapes. Lists missing keys, unexpected keys and shape
    mismatches (the first ``max_items`` of each, with a count of the rest).
    """
    def shape_of(value) -> tuple:
        return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)

    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(given) if shape_of(expected[k]) != shape_of(given[k]))

    def listing(title: str, items: list[str]) -> str:
        shown = items[:max_items]
        more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
        return f"  {title} ({len(items)}):\n" + "\n".join(f"    {item}" for item in shown) + more

    parts = []
    if missing:
        parts.append(listing("missing", missing))
    if unexpected:
        parts.append(listing("unexpected", unexpected))
    if mismatched:
        parts.append(listing("shape mismatch (file vs model)",
                             [f"{k}: {shape_of(given[k])} vs {shape_of(expected[k])}" for k in mismatched]))
    return "\n".join(parts)


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor],
                      source: str | os.PathLike = "state dict") -> None:
    """Load ``state`` into ``module`` strictly; on any difference raise :class:`StateDictMismatch`
    naming ``source`` (usually the file) and listing missing/unexpected keys and shape mismatches."""
    diff = state_dict_diff(module.state_dict(), state)
    if diff:
        raise StateDictMismatch(source, f"weights do not fit {type(module).__name__} "
                                        f"(different architecture or config?):\n{diff}")
    module.load_state_dict(dict(state), strict=True)


# ------------------------------------------------------------------------------------ base artifact

@dataclass
class BaseArtifact:
    """A loaded base: its ``config.yaml`` as a dict and its weights as CPU tensors.

    ``config["model"]`` holds the ``SingerVAEConfig`` fields; build the generator from it (never from
    ``conf/model/``) and load ``generator_state`` with :func:`load_state_strict`.
    """

    path: Path
    config: dict
    generator_state: dict[str, torch.Tensor]
    discriminator_state: dict[str, torch.Tensor] | None
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_config(self) -> dict:
        return dict(self.config.get("model", {}))

    @property
    def speakers(self) -> list[str]:
        return list(self.config.get("speakers", []))


def _weights_dtype(name: str, where: str | os.PathLike) -> torch.dtype:
    if name not in WEIGHTS_DTYPES:
        raise ArtifactError(where, f"weights_dtype {name!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
    return WEIGHTS_DTYPES[name]


def _cast_floating(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``state`` with every floating-point tensor cast to ``dtype`` (integer buffers unchanged)."""
    return {key: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for key, value in state.items()}


def save_base(directory: str | os.PathLike, generator_state: Mapping[str, torch.Tensor],
              discriminator_state: Mapping[str, torch.Tensor] | None, config: Mapping[str, Any],
              weights_dtype: str = "float32") -> Path:
    """Write a base artifact into ``directory``; returns the folder.

    ``config`` carries ``model`` (SingerVAEConfig fields), ``content_encoder`` ({name, dim, path, layer,
    final_proj}), ``sample_rate``, ``hop_length``, ``speakers``; this adds ``format_version``, ``kind:
    base``, ``weights_dtype``, ``generator_sha256`` and ``created``. The floating-point tensors are stored
    in ``weights_dtype`` (``float32``, ``float16`` or ``bfloat16``; :func:`load_base` gives them back as
    float32). The folder is written whole and swapped in (:func:`_export_folder`): a kill at any moment
    leaves the complete old base or the complete new one. ``discriminator_state=None`` writes a
    generator-only (inference) base.
    """
    directory = Path(directory)
    dtype = _weights_dtype(weights_dtype, directory)
    generator_state = _cast_floating(generator_state, dtype)
    if discriminator_state is not None:
        discriminator_state = _cast_floating(discriminator_state, dtype)
    with _export_folder(directory, BASE_FILES) as folder:
        generator_path = folder / BASE_GENERATOR_FILE
        _save_safetensors(generator_path, generator_state, {"format_version": str(FORMAT_VERSION),
                                                            "part": "generator"})
        if discriminator_state is not None:
            _save_safetensors(folder / BASE_DISCRIMINATOR_FILE, discriminator_state,
                              {"format_version": str(FORMAT_VERSION), "part": "discriminator"})
        header = {"format_version": FORMAT_VERSION, "kind": "base"}
        body = {k: v for k, v in _plain(dict(config)).items() if k not in ("format_version", "kind", "generator_sha256",
                                                                            "created", "weights_dtype")}
        full = {**header, **body, "weights_dtype": weights_dtype, "generator_sha256": sha256_file(generator_path),
                "created": _now_iso()}
        atomic_write_text(folder / BASE_CONFIG_FILE, yaml.safe_dump(full, sort_keys=False, allow_unicode=True))
    return directory


def load_base(directory: str | os.PathLike, with_discriminator: bool = False) -> BaseArtifact:
    """Read a base artifact written by :func:`save_base`, checking format and generator hash (of the file
    as stored). Floating-point tensors come back as float32 whatever ``weights_dtype`` they are stored in.

    Raises :class:`ArtifactMissing` (naming what is missing and how to make it),
    :class:`UnsupportedFormatVersion`, :class:`ArtifactHashMismatch` (naming the file and both
    hashes) or :class:`ArtifactError` for unreadable files.
    """
    directory = Path(directory)
    needed = [BASE_CONFIG_FILE, BASE_GENERATOR_FILE] + ([BASE_DISCRIMINATOR_FILE] if with_discriminator else [])
    _require_files(directory, needed, "base artifact", _PRETRAIN_HINT)
    config = _read_yaml(directory / BASE_CONFIG_FILE)
    _check_header(directory / BASE_CONFIG_FILE, config, "base")
    generator_path = directory / BASE_GENERATOR_FILE
    actual = sha256_file(generator_path)
    recorded = config.get("generator_sha256")
    if actual != recorded:
        raise ArtifactHashMismatch(
            generator_path, f"sha256 is {actual} but {BASE_CONFIG_FILE} records {recorded}; the weights were "
                            "changed or damaged after export (re-export the base or restore the file)")
    _weights_dtype(str(config.get("weights_dtype", "float32")), directory / BASE_CONFIG_FILE)
    # Stored in float16/bfloat16 to save space: the modules are float32, so give float32 back (exact for
    # both; every consumer then loads, merges and compares weights as before).
    generator_state = _cast_floating(load_safetensors(generator_path), torch.float32)
    discriminator_state = (_cast_floating(load_safetensors(directory / BASE_DISCRIMINATOR_FILE), torch.float32)
                           if with_discriminator else None)
    return BaseArtifact(path=directory, config=config, generator_state=generator_state,
                        discriminator_state=discriminator_state, sha256=actual)


# --------------------------------------------------------------------------------- adapter artifact

@dataclass
class AdapterArtifact:
    """A loaded adapter: ``adapter.yaml`` as a dict and ``adapter.safetensors`` as CPU tensors
    (the PEFT method's tensors plus ``singer_embedding`` ``[gin_channels]``)."""

    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]

    @property
    def base_sha256(self) -> str:
        return str(self.config.get("base_sha256", ""))

    @property
    def method(self) -> str:
        return str(self.config.get("method", ""))

    @property
    def singer(self) -> str:
        return str(self.config.get("singer", self.path.name))

    def tensors_sha256(self) -> str | None:
        """sha256 of ``adapter.safetensors``: the ``tensors_sha256`` that ``adapter.yaml`` records, hashed from the
        file for adapters saved before it was recorded (None when the folder has no such file)."""
        recorded = self.config.get("tensors_sha256")
        if recorded:
            return str(recorded)
        file = Path(self.path) / ADAPTER_TENSORS_FILE
        return sha256_file(file) if file.is_file() else None


def save_adapter(directory: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 config: Mapping[str, Any], retrieval_index: torch.Tensor | None = None,
                 voice_print: VoicePrint | None = None) -> Path:
    """Write an adapter artifact into ``directory``; returns the folder.

    ``config`` must hold ``method`` and ``base_sha256`` and should hold ``singer``, ``peft`` (the
    method's settings), ``base_name`` and ``stats``; this adds ``format_version``, ``kind: adapter``,
    ``tensors_sha256`` and ``created``. ``retrieval_index`` (centroids ``[K, D]``) is written beside as
    ``retrieval.safetensors`` and described in ``retrieval_index``; without it the folder has no index.
    ``voice_print`` (:mod:`ai_singer.voice_print`) likewise goes to ``voice_print.safetensors``, described in
    ``voice_print``. Every writer of adapters comes here: the folder is written whole and swapped in
    (:func:`_export_folder`), so a kill at any moment leaves the complete old adapter or the complete new one.
    """
    directory = Path(directory)
    plain = _plain(dict(config))
    for key in ("method", "base_sha256"):
        if not plain.get(key):
            raise ValueError(f"{directory}: adapter config needs {key!r}")
    with _export_folder(directory, ADAPTER_FILES) as folder:
        if retrieval_index is not None:
            index_path = save_index(folder, retrieval_index)
            plain["retrieval_index"] = {"file": index_path.name, "centroids": int(retrieval_index.shape[0]),
                                        "dim": int(retrieval_index.shape[1]), "sha256": sha256_file(index_path)}
        if voice_print is not None:
            print_path = save_voice_print(folder, voice_print)
            plain["voice_print"] = {"file": print_path.name, "encoder": voice_print.encoder,
                                    "dim": int(voice_print.mean.shape[0]), "clips": int(voice_print.clips),
                                    "frames": int(voice_print.frames), "sha256": sha256_file(print_path)}
        tensors_path = folder / ADAPTER_TENSORS_FILE
        _save_safetensors(tensors_path, tensors, {"format_version": str(FORMAT_VERSION),
                                                  "method": str(plain["method"]),
                                                  "base_sha256": str(plain["base_sha256"])})
        body = {k: v for k, v in plain.items() if k not in ("format_version", "kind", "created", "tensors_sha256")}
        full = {"format_version": FORMAT_VERSION, "kind": "adapter", **body,
                "tensors_sha256": sha256_file(tensors_path), "created": _now_iso()}
        atomic_write_text(folder / ADAPTER_CONFIG_FILE, yaml.safe_dump(full, sort_keys=False, allow_unicode=True))
    return directory


def load_adapter(directory: str | os.PathLike) -> AdapterArtifact:
    """Read an adapter artifact written by :func:`save_adapter` (format and kind checked). An export killed
    between the two renames of its swap left the folder set aside: it is put back first."""
    directory = Path(directory)
    restore_set_aside(directory)
    _require_files(directory, [ADAPTER_CONFIG_FILE, ADAPTER_TENSORS_FILE], "adapter artifact", _FINETUNE_HINT)
    config = _read_yaml(directory / ADAPTER_CONFIG_FILE)
    _check_header(directory / ADAPTER_CONFIG_FILE, config, "adapter")
    if not config.get("base_sha256"):
        raise ArtifactError(directory / ADAPTER_CONFIG_FILE, "no base_sha256 recorded; cannot tell which base it needs")
    tensors = load_safetensors(directory / ADAPTER_TENSORS_FILE)
    recorded = config.get("tensors_sha256")  # absent in adapters exported before it was recorded
    if recorded is not None and sha256_file(directory / ADAPTER_TENSORS_FILE) != recorded:
        raise ArtifactHashMismatch(
            directory / ADAPTER_TENSORS_FILE, f"sha256 differs from the tensors_sha256 that {ADAPTER_CONFIG_FILE} "
                                              "records: the file was changed or damaged after the export (or "
                                              "copied in from another one); restore the folder, or fine-tune this "
                                              "singer again (the run resumes from its checkpoint and exports again)")
    return AdapterArtifact(path=directory, config=config, tensors=tensors)


def convert_base_dtype(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, dtype: str) -> Path:
    """Re-save the base at ``src_dir`` into ``dst_dir`` with its tensors stored in ``dtype`` (``float32``,
    ``float16``, ``bfloat16``); returns ``dst_dir``. The discriminator is converted too when present.

    The new generator file has a new sha256. Its config records ``converted_from`` (the source's
    ``generator_sha256`` and ``weights_dtype``, plus the source's own ``converted_from`` chain), and
    :func:`check_adapter_base` accepts adapters trained on any base of that chain.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    if src.resolve() == dst.resolve():
        raise ArtifactError(dst, "convert_base_dtype writes a new base: give another destination folder")
    _weights_dtype(dtype, dst)
    has_discriminator = (src / BASE_DISCRIMINATOR_FILE).is_file()
    base = load_base(src, with_discriminator=has_discriminator)
    config = {k: v for k, v in base.config.items() if k not in ("converted_from",)}
    lineage = [{"generator_sha256": base.sha256, "weights_dtype": str(base.config.get("weights_dtype", "float32")),
                "name": base.name}] + list(base.config.get("converted_from") or [])
    config["converted_from"] = lineage
    return save_base(dst, base.generator_state, base.discriminator_state, config, weights_dtype=dtype)


def base_lineage(base: BaseArtifact) -> list[str]:
    """The generator sha256 of ``base`` and of every base it was converted from (newest first)."""
    return [base.sha256] + [str(entry.get("generator_sha256")) for entry in base.config.get("converted_from") or []
                            if isinstance(entry, Mapping)]


def check_adapter_base(adapter: AdapterArtifact, base: BaseArtifact) -> None:
    """Raise :class:`AdapterBaseMismatch` unless ``adapter`` was trained on ``base`` (or on the base that
    ``base`` was converted from by :func:`convert_base_dtype`)."""
    if adapter.base_sha256 not in base_lineage(base):
        trained_on = adapter.config.get("base_name") or "another base"
        raise AdapterBaseMismatch(
            adapter.path, f"this adapter was trained on {trained_on} (generator sha256 {adapter.base_sha256}), but "
                          f"the base at {base.path} has generator sha256 {base.sha256}; use the base it was "
                          "trained on (`ai-singer singers` lists which installed base each adapter fits), or "
                          "fine-tune this singer again on this base")


# ---------------------------------------------------------------------------------- training state

def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``<run_dir>/checkpoints/step_XXXXXXXX.pt``."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{int(step):08d}.pt"


def list_train_states(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every training-state file of a run, oldest first (temp files ignored)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _STEP_FILE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


_PLAIN_SCALARS = (bool, int, float, complex, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def _check_weights_only_loadable(obj: Any, where: str) -> None:
    """Refuse (TypeError naming the entry) anything ``torch.load(weights_only=True)`` would reject
    later, so a bad entry fails when saving instead of making the run impossible to resume."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN_SCALARS):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise TypeError(f"training state {where}: key {key!r} is a {type(key).__name__}")
            _check_weights_only_loadable(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            _check_weights_only_loadable(value, f"{where}[{index}]")
        return
    raise TypeError(f"training state {where} is a {type(obj).__module__}.{type(obj).__qualname__}; only tensors, "
                    "dicts, lists, tuples, numbers, strings and None can be saved (weights_only loading)")


def save_train_state(run_dir: str | os.PathLike, step: int, state: Mapping[str, Any], keep_last: int = 3) -> Path:
    """Save ``state`` (tensors, dicts, lists, numbers, strings, None only) for ``step`` atomically,
    then keep only the newest ``keep_last`` files (``keep_last <= 0`` keeps all). Returns the path."""
    _check_weights_only_loadable(state, "state")
    path = checkpoint_path(run_dir, step)
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, "step": int(step), "state": dict(state)}, tmp)
    prune_checkpoints(run_dir, keep_last)
    return path


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` training-state files; returns the deleted paths."""
    if keep_last <= 0:
        return []
    removed = []
    for _, path in list_train_states(run_dir)[:-keep_last]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class CorruptCheckpointWarning(UserWarning):
    """A training-state file could not be read and was skipped."""


def load_latest_train_state(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
                            ) -> tuple[int, dict] | None:
    """``(step, state)`` from the newest readable training-state file of the run, or None if there is
    none. Loads with ``weights_only=True``. A truncated or corrupt file is skipped with a
    :class:`CorruptCheckpointWarning` naming it, and the previous one is tried."""
    for step, path in reversed(list_train_states(run_dir)):
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
            if not isinstance(payload, dict) or "state" not in payload:
                raise ValueError("not a training-state file (no 'state' entry)")
            if payload.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
                raise ValueError(f"format_version {payload.get('format_version')!r} is not supported")
        except Exception as exc:  # a torn/corrupt file must not stop a resume: fall back to the previous
            message = f"{path}: skipping unreadable training state ({type(exc).__name__}: {exc})"
            log.warning(message)
            warnings.warn(message, CorruptCheckpointWarning, stacklevel=2)
            continue
        return int(payload.get("step", step)), payload["state"]
    return None


# --------------------------------------------------------------------------------------- RNG state

def capture_rng_state() -> dict[str, Any]:
    """The state of Python's ``random``, NumPy's global RNG, torch CPU and (if present) every CUDA
    device, as tensors and plain numbers (so ``torch.load(..., weights_only=True)`` reads it)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` captured. CUDA states are restored only when CUDA is
    available with the same number of devices (otherwise skipped with a log message)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda_states = state.get("cuda")
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda_states])
        else:
            log.info("not restoring %d CUDA RNG state(s): this machine has %d CUDA device(s)", len(cuda_states),
                     torch.cuda.device_count() if torch.cuda.is_available() else 0)
