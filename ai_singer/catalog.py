"""What is installed: the bases under ``pretrain/`` and the singer adapters under ``singers/``, and which
adapter fits which base (``ai-singer singers``).

Reads only the artifacts' YAML descriptions (``config.yaml``, ``adapter.yaml``), never the weights, so it
is instant and imports no torch. A folder whose description is unreadable is listed with the reason,
not skipped silently; loading (``checkpoint.load_base`` / ``load_adapter``) still checks the hashes.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

#: The artifact descriptions (the same names as :mod:`ai_singer.checkpoint`, kept here torch-free).
BASE_CONFIG_FILE = "config.yaml"
ADAPTER_CONFIG_FILE = "adapter.yaml"
ADAPTER_TENSORS_FILE = "adapter.safetensors"


@dataclass
class BaseEntry:
    """A base folder: ``pretrain/<name>/``."""

    name: str
    path: Path
    sha256: str = ""
    model: dict = field(default_factory=dict)
    speakers: int = 0
    steps: int | None = None
    weights_dtype: str = ""
    content_encoder: str = ""
    #: the ``content_encoder`` record of its config (name, dim, path, layer, final_proj): what to preprocess with
    content_record: dict = field(default_factory=dict)
    error: str = ""
    bundled: bool = False  # ships with ai_singer (ai_singer.bundle), not in the user's folder
    #: its generator sha256 and those of the bases it was converted from (``convert_base_dtype``)
    lineage: list[str] = field(default_factory=list)


@dataclass
class AdapterEntry:
    """A singer folder: ``singers/<name>/``."""

    name: str
    path: Path
    singer: str = ""
    method: str = ""
    extracted: str = ""  # made by extract-adapter from a full model: "r=16, weight error 0.42"
    steps: int | None = None
    base_sha256: str = ""
    base_name: str = ""
    megabytes: float = 0.0
    f0_median_hz: float | None = None
    seconds: float | None = None
    retrieval_centroids: int | None = None  # size of its feature-retrieval index, None without one
    blend: str = ""  # a blend's parents and weights (``alice:0.6,bob:0.4``), "" for a trained adapter
    error: str = ""
    bundled: bool = False  # ships with ai_singer (ai_singer.bundle), not in the user's folder
    base: BaseEntry | None = None  # the installed base it was trained on, if any


def _read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping; OSError when unreadable, ValueError when not YAML or not a mapping."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        try:
            document = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ValueError(f"not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise ValueError("not a YAML mapping")
    return document


def _described_folders(root: Path, description: str) -> Iterator[tuple[Path, dict[str, Any] | None, str]]:
    """``(folder, its description, "")`` for each visible subfolder of ``root`` holding the file
    ``description``, or ``(folder, None, reason)`` when that file cannot be read."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for folder in folders:
        path = folder / description
        if not path.is_file():
            continue
        try:
            yield folder, _read_yaml(path), ""
        except (OSError, ValueError) as error:
            yield folder, None, f"{path}: unreadable ({error})"


def list_bases(pretrain_dir: str | os.PathLike) -> list[BaseEntry]:
    """Every folder under ``pretrain_dir`` with a ``config.yaml`` of ``kind: base`` (content encoders and
    other folders are not bases and are left out); unreadable configs are listed with ``error``."""
    bases = []
    for folder, config, error in _described_folders(Path(pretrain_dir), BASE_CONFIG_FILE):
        entry = BaseEntry(name=folder.name, path=folder, error=error)
        if config is None:
            bases.append(entry)
            continue
        if config.get("kind") != "base":
            continue
        encoder = config.get("content_encoder") or {}
        entry.sha256 = str(config.get("generator_sha256") or "")
        entry.lineage = [entry.sha256] + [str(c.get("generator_sha256")) for c in config.get("converted_from") or []
                                          if isinstance(c, dict)]
        entry.model = dict(config.get("model") or {})
        entry.speakers = len(config.get("speakers") or [])
        entry.steps = config.get("steps") if isinstance(config.get("steps"), int) else None
        entry.weights_dtype = str(config.get("weights_dtype") or "")
        entry.content_encoder = f"{encoder.get('name', '?')} ({encoder.get('dim', '?')}-dim)" if encoder else ""
        entry.content_record = dict(encoder) if isinstance(encoder, dict) else {}
        bases.append(entry)
    return bases


def list_adapters(singers_dir: str | os.PathLike, bases: list[BaseEntry] | None = None) -> list[AdapterEntry]:
    """Every folder under ``singers_dir`` with an ``adapter.yaml``, matched to the base among ``bases``
    whose generator hash it records (or that was converted from that base)."""
    by_sha: dict[str, BaseEntry] = {}
    for base in reversed(bases or []):  # the base's own hash wins over a converted copy's lineage
        by_sha.update({sha: base for sha in base.lineage[1:] if sha})
    by_sha.update({b.sha256: b for b in bases or [] if b.sha256})
    adapters = []
    for folder, config, error in _described_folders(Path(singers_dir), ADAPTER_CONFIG_FILE):
        entry = AdapterEntry(name=folder.name, path=folder, error=error)
        if config is None:
            adapters.append(entry)
            continue
        stats = config.get("stats") or {}
        entry.singer = str(config.get("singer") or "")
        entry.method = str(config.get("method") or "")
        extraction = config.get("extraction")
        if isinstance(extraction, dict):
            how = f"energy {extraction.get('energy')}" if extraction.get("energy") else f"r={extraction.get('rank')}"
            error = extraction.get("relative_error")
            entry.extracted = how + (f", weight error {error:.2f}" if isinstance(error, (int, float)) else "")
        entry.steps = config.get("steps") if isinstance(config.get("steps"), int) else None
        entry.base_sha256 = str(config.get("base_sha256") or "")
        entry.base_name = str(config.get("base_name") or "")
        entry.f0_median_hz = stats.get("f0_median_hz")
        entry.seconds = stats.get("seconds")
        parents = (config.get("blend") or {}).get("parents") if isinstance(config.get("blend"), dict) else None
        if isinstance(parents, list):
            entry.blend = ",".join(f"{p.get('singer')}:{float(p.get('weight') or 0):g}" for p in parents if isinstance(p, dict))
        index = config.get("retrieval_index")
        if isinstance(index, dict) and (folder / str(index.get("file", ""))).is_file():
            entry.retrieval_centroids = int(index.get("centroids") or 0)
        tensors = folder / ADAPTER_TENSORS_FILE
        if tensors.is_file():
            entry.megabytes = tensors.stat().st_size / 1e6
        else:
            entry.error = f"{tensors}: missing"
        entry.base = by_sha.get(entry.base_sha256)
        adapters.append(entry)
    return adapters


def list_installed(pretrain_dir: str | os.PathLike, singers_dir: str | os.PathLike
                   ) -> tuple[list[BaseEntry], list[AdapterEntry]]:
    """What a base or singer name can pick, in the order names are looked up (:mod:`ai_singer.bundle`): the
    bases and adapters in the user's folders, then the bundled ones (``bundled=True``) that no entry of the
    user's with the same name shadows. Adapters are matched to the bases of either."""
    from ai_singer.bundle import PRETRAIN, SINGERS, bundled

    def bundled_folder(kind: str, user_folder: str | os.PathLike) -> Path | None:
        folder = bundled(kind)
        same = folder is not None and folder.resolve() == Path(user_folder).absolute().resolve()
        return None if same else folder  # a checkout's root: the user's folder is the bundle

    bases = list_bases(pretrain_dir)
    shipped_bases = bundled_folder(PRETRAIN, pretrain_dir)
    if shipped_bases is not None:
        taken = {b.name for b in bases}
        bases += [dataclasses.replace(b, bundled=True) for b in list_bases(shipped_bases) if b.name not in taken]
    adapters = list_adapters(singers_dir, bases)
    shipped_singers = bundled_folder(SINGERS, singers_dir)
    if shipped_singers is not None:
        taken = {a.name for a in adapters}
        adapters += [dataclasses.replace(a, bundled=True) for a in list_adapters(shipped_singers, bases)
                     if a.name not in taken]
    return bases, adapters


def _value(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None or value == "" else fmt.format(value)


def format_catalog(bases: list[BaseEntry], adapters: list[AdapterEntry], pretrain_dir: Path,
                   singers_dir: Path) -> str:
    """The listing ``ai-singer singers`` prints."""
    def label(entry: BaseEntry | AdapterEntry) -> str:
        return f"{entry.name} (bundled)" if entry.bundled else entry.name

    lines = [f"bases in {pretrain_dir}:"]
    if not bases:
        lines.append("  (none)")
    for b in bases:
        if b.error:
            lines.append(f"  {label(b)}: {b.error}")
            continue
        lines.append(f"  {label(b)}: sha256 {b.sha256[:12]}, {b.speakers} speakers, {_value(b.steps)} steps, "
                     f"{b.weights_dtype or 'float32'}, content encoder {b.content_encoder or '-'}")
    lines.append(f"singers in {singers_dir}:")
    if not adapters:
        lines.append("  (none)")
    for a in adapters:
        if a.error and not a.method:
            lines.append(f"  {label(a)}: {a.error}")
            continue
        fits = (f"base {a.base.name}" if a.base is not None else
                f"its base ({a.base_name or '?'}, sha256 {a.base_sha256[:12]}) is not installed")
        singer = f" (singer {a.singer})" if a.singer and a.singer != a.name else ""
        made = f"blend of {a.blend}" if a.blend else f"{_value(a.steps)} steps"
        method = a.method + (f" (extracted from a full model, {a.extracted})" if a.extracted else "")
        lines.append(f"  {label(a)}{singer}: {method}, {made}, {a.megabytes:.2f} MB, "
                     f"{_value(a.seconds, '{:.0f}')} s of singing, F0 median {_value(a.f0_median_hz, '{:.0f}')} Hz, "
                     f"retrieval index {_value(a.retrieval_centroids)}; "
                     f"{fits}" + (f"; {a.error}" if a.error else ""))
    shipped = [entry.path for entry in [*bases, *adapters] if entry.bundled]
    if shipped:
        lines.append(f"(bundled): ships with ai_singer, in {shipped[0].parent.parent}; a folder of the same name in "
                     f"{pretrain_dir} or {singers_dir} takes its place")
    return "\n".join(lines)
