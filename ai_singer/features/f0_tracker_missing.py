"""The error for an F0 tracker whose optional package is not installed (one message for all of them)."""
from __future__ import annotations

from ai_singer.errors import UserError


class F0TrackerMissing(UserError, ImportError):
    """``f0.method=<method>`` needs ``package``, which ``install`` (a pip command) installs."""

    def __init__(self, method: str, package: str, install: str, detail: str = ""):
        from ai_singer.features.pitch import BUILT_IN_F0

        super().__init__(f"f0.method={method}", f"needs the {package} package, which is not installed{detail}",
                         f"{install} (or choose another f0.method: "
                         f"{', '.join(name for name in BUILT_IN_F0 if name != method)} need nothing more)")
