"""Where the files that ship with ai_singer are, and the order in which a name is looked up.

The repository's top-level folders are the source of the bundled files (:func:`bundled_entries`): the configs
(``conf/``), the generator of ``ai-singer demo --full``'s synthetic singers (``tools/synth``), and what
``tools/build_bundle.py`` lists in ``pretrain/bundle.json`` (:data:`BUNDLE_INDEX`): the bundled base
(``pretrain/<name>``, :func:`default_base`), the synthetic corpus's content encoder
(``pretrain/content/synth-hubert``), the example singer (``singers/example``) and song (``data/examples``). A built wheel carries copies of them inside the package, under
``ai_singer/_bundle/`` with the same relative layout (``setup.py``'s build step copies them; nothing is
committed twice); an editable install in a checkout uses the checkout itself. :func:`bundle_root` is one or
the other, found through the package (``importlib.resources``), never through the working directory.

The user's folders (``data/``, ``singers/``, ``runs/``, ``outputs/``, ``pretrain/``) are relative to the
current folder (``conf/paths/default.yaml``). A path or name the user gives is looked up in this order
(:func:`lookup_order`):

1. the user's: the path as given (relative to the current folder), or ``<folder>/<name>`` for a name in a
   configured folder (``singer=example`` under ``paths.singers``);
2. the bundled copy: the same relative path under :func:`bundle_root`, or ``<bundle>/<bundled folder>/<name>``.

So a singer or base of the user's with a bundled name shadows the bundled one, and the bundled example works
from any folder. In a checkout run from its root both are the same folder. Torch-free; imports nothing of
ai_singer.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

#: The folder inside the package that holds the bundled files in a built wheel.
PACKAGE_BUNDLE_DIR = "_bundle"
#: Written by tools/build_bundle.py: ``{"base": NAME, "example_singer": ..., "song": ..., "entries": [...]}``,
#: the bundled base and the bundled model/data folders (relative to the bundle root).
BUNDLE_INDEX = "pretrain/bundle.json"
#: What a wheel always carries besides the index's entries, relative to the repository (and bundle) root.
ALWAYS_BUNDLED = ("conf", "pretrain/BUNDLE.md", BUNDLE_INDEX, "tools/synth")
#: Bundled folders holding named artifacts: a base name is looked up under ``pretrain/``, a singer under ``singers/``.
PRETRAIN = "pretrain"
SINGERS = "singers"
#: A file only a checkout's root has (with ``conf/``): how the checkout is told from an unrelated parent folder.
_CHECKOUT_MARKER = "pyproject.toml"


def read_index(root: str | os.PathLike) -> dict:
    """``<root>/pretrain/bundle.json`` ({} when there is none)."""
    import json

    path = Path(root) / BUNDLE_INDEX
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def bundled_entries(root: str | os.PathLike) -> tuple[str, ...]:
    """What a wheel built from the checkout ``root`` carries (setup.py copies these): :data:`ALWAYS_BUNDLED`
    and the entries of its ``pretrain/bundle.json``."""
    return (*ALWAYS_BUNDLED, *read_index(root).get("entries", ()))


def default_base() -> str | None:
    """The name of the bundled default base (``pretrain/<name>`` in the bundle), None without a bundle index."""
    root = bundle_root()
    return read_index(root).get("base") if root is not None else None


@lru_cache(maxsize=None)
def bundle_root() -> Path | None:
    """The folder holding the bundled files: ``ai_singer/_bundle`` inside an installed wheel, else the
    checkout that holds the package (an editable install); None when neither has them (a wheel built
    without its bundle)."""
    import importlib.resources

    package = importlib.resources.files(__package__ or "ai_singer")
    if not isinstance(package, Path):  # e.g. imported from a zip: the bundle is not on a file system
        return None
    packaged = package / PACKAGE_BUNDLE_DIR
    if packaged.is_dir():
        return packaged
    checkout = package.resolve().parent
    if (checkout / "conf").is_dir() and (checkout / _CHECKOUT_MARKER).is_file():
        return checkout
    return None


def bundled(relative: str | os.PathLike) -> Path | None:
    """``<bundle>/<relative>`` when it exists, else None."""
    root = bundle_root()
    if root is None:
        return None
    path = root / relative
    return path if path.exists() else None


def lookup_order(name: str | os.PathLike, folder: str | os.PathLike | None = None,
                 bundled_folder: str | None = None) -> list[Path]:
    """Where ``name`` is looked for, in order, duplicates (the same folder reached twice) removed.

    ``folder``: the user's folder the name is in (``paths.singers``); None: ``name`` is a path relative to
    the current folder. ``bundled_folder``: the bundle's folder for it (``singers``); None: the same relative
    path. An absolute ``name`` is only itself; without a bundle, only the user's path is searched."""
    name = Path(name)
    user = name if folder is None or name.is_absolute() else Path(folder) / name
    order = [user]
    root = bundle_root()
    if root is not None and not name.is_absolute():
        order.append(root / bundled_folder / name if bundled_folder else root / name)
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in order:
        key = path.absolute().resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def locate(name: str | os.PathLike, folder: str | os.PathLike | None = None, bundled_folder: str | None = None,
           accept: Callable[[Path], bool] = Path.exists) -> Path | None:
    """The first path of :func:`lookup_order` that ``accept`` takes (default: it exists), else None."""
    for path in lookup_order(name, folder, bundled_folder):
        if accept(path):
            return path
    return None


def locate_path(path: str | os.PathLike) -> Path:
    """A path the user gave: itself when it exists (or nothing is bundled there), else the bundled copy of
    the same relative path, e.g. ``pretrain/content/synth-hubert`` or ``data/examples/song01`` from any folder."""
    return locate(path) or Path(path)

