"""Build step that puts the bundled files into the wheel; everything else is in pyproject.toml.

The repository's top-level ``conf/``, the bundled base ... (the list is ``ai_singer.bundle.bundled_entries``:
fixed folders plus those ``tools/build_bundle.py`` names in ``pretrain/bundle.json``) stay the only copies in
the source tree; building a wheel copies them to ``ai_singer/_bundle/`` inside it, where
``ai_singer.bundle.bundle_root`` finds them, and an sdist carries them too. An editable install
(``pip install -e .``) copies nothing: the package finds them in the checkout.
"""
from __future__ import annotations

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
#: ai_singer/bundle.py is stdlib-only, so the build reads its list without importing the package.
_LAYOUT = runpy.run_path(str(ROOT / "ai_singer" / "bundle.py"))
SKIPPED = ("__pycache__", ".DS_Store")


def bundled_files(root: Path = ROOT) -> list[Path]:
    """The files of ``BUNDLED`` under ``root`` (relative paths), hidden files and caches left out."""
    files: list[Path] = []
    for entry in _LAYOUT["bundled_entries"](root):
        source = root / entry
        if not source.exists():
            raise FileNotFoundError(f"{source}: bundled in the wheel but missing (python tools/build_bundle.py "
                                    "writes the bundled models)")
        candidates = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for path in candidates:
            relative = path.relative_to(root)
            if any(part.startswith(".") or part in SKIPPED or part.endswith(".pyc") for part in relative.parts):
                continue
            files.append(relative)
    return files


class BuildPyWithBundle(build_py):
    """``build_py`` plus a copy of the bundled files into ``<build_lib>/ai_singer/_bundle``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout itself
            return
        target = Path(self.build_lib) / "ai_singer" / _LAYOUT["PACKAGE_BUNDLE_DIR"]
        if target.exists():  # a build folder left by an earlier build: start clean
            shutil.rmtree(target)
        for relative in bundled_files():
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(ROOT / relative), str(destination))


class SdistWithBundle(sdist):
    """``sdist`` plus the bundled files (a wheel built from the sdist then has them too)."""

    def add_bundle(self) -> None:
        self.filelist.extend(str(relative) for relative in bundled_files())

    def make_distribution(self) -> None:
        self.add_bundle()
        super().make_distribution()


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__; tests import it
    setup(cmdclass={"build_py": BuildPyWithBundle, "sdist": SdistWithBundle})
