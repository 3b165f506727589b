"""The ``f0`` settings (``conf/f0``): which tracker, its search range, its voicing threshold and the
post-processing that singing needs. One class, used by preprocessing, conversion and the measuring tools.

No defaults here: the values are written in ``conf/f0/default.yaml`` only; :meth:`F0Settings.from_conf`
reads them (with overrides) for library code and tools that are not Hydra entry points.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from ai_singer.errors import UserError


@dataclass(frozen=True)
class F0Settings:
    """How F0 is extracted (``ai_singer.features.pitch.extract_f0``).

    method:            a key of ``ai_singer.features.pitch.F0_EXTRACTORS``.
    f0_min, f0_max:    search range in Hz.
    voicing_threshold: for trackers that score their confidence (the neural ones), the score at or above
                       which a frame is voiced, by method name (each tracker's score has its own scale).
    octave_repair_ms:  a voiced frame about a whole number of octaves away from the median of the voiced
                       frames within this window (centred) is moved by those octaves; 0 = off. A note must
                       last more than half the window to count as a real octave leap.
    median_ms:         median smoothing of log-F0 over this window within each voiced run (removes
                       single-frame spikes, keeps vibrato, whose period is ~150 ms); 0 = off.
    rmvpe_path:        the user's copy of RVC's ``rmvpe.pt`` (method ``rmvpe``; relative to the working folder).
    device:            where the torch trackers (rmvpe, fcpe, crepe_tiny) run: ``auto`` (a GPU when there is
                       one), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    """

    method: str
    f0_min: float
    f0_max: float
    voicing_threshold: Mapping[str, float]
    octave_repair_ms: float
    median_ms: float
    rmvpe_path: str
    device: str

    def __post_init__(self) -> None:
        from ai_singer.features.pitch import F0_EXTRACTORS

        if self.method not in F0_EXTRACTORS:
            raise UserError(f"f0.method={self.method!r}", "unknown F0 method",
                            f"use one of {', '.join(sorted(F0_EXTRACTORS))}")
        if not 0.0 < float(self.f0_min) < float(self.f0_max):
            raise UserError(f"f0.f0_min={self.f0_min:g} f0.f0_max={self.f0_max:g}", "need 0 < f0_min < f0_max")
        for key in ("octave_repair_ms", "median_ms"):
            if float(getattr(self, key)) < 0:
                raise UserError(f"f0.{key}={getattr(self, key):g}", "must be >= 0 (0 = off)")
        for name, value in dict(self.voicing_threshold).items():
            if not 0.0 <= float(value) <= 1.0:
                raise UserError(f"f0.voicing_threshold.{name}={value:g}", "must be within 0..1")

    def threshold(self) -> float:
        """This method's voicing threshold; a UserError naming the setting when conf/f0 has none for it."""
        if self.method not in self.voicing_threshold:
            raise UserError(f"f0.voicing_threshold.{self.method}", "missing for this method",
                            f"add it to conf/f0 (e.g. f0.voicing_threshold.{self.method}=0.5)")
        return float(self.voicing_threshold[self.method])

    def torch_device(self):
        """``device`` as a ``torch.device`` checked against this machine (a DeviceError naming ``f0.device``)."""
        from ai_singer.device import pick_device

        return pick_device(self.device, what="f0.device")

    def identity(self) -> dict[str, Any]:
        """The settings that change this method's output (for hashes of processed data): method and range,
        plus the method's voicing threshold and each post-processing step only when they apply (so adding
        a setting to conf/f0 that is off does not invalidate data processed before it existed)."""
        found: dict[str, Any] = {"method": self.method, "f0_min": float(self.f0_min), "f0_max": float(self.f0_max)}
        if self.method in self.voicing_threshold:
            found["voicing_threshold"] = float(self.voicing_threshold[self.method])
        for key in ("octave_repair_ms", "median_ms"):
            if float(getattr(self, key)) > 0:
                found[key] = float(getattr(self, key))
        return found

    @classmethod
    def from_values(cls, values: Mapping[str, Any], where: str = "conf/f0") -> "F0Settings":
        """From a plain mapping (a composed config group); an unknown or a missing key is a UserError."""
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        if unknown or missing:
            raise UserError(where, f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}",
                            f"the keys are {', '.join(sorted(names))}")
        return cls(method=str(values["method"]), f0_min=float(values["f0_min"]), f0_max=float(values["f0_max"]),
                   voicing_threshold={str(k): float(v) for k, v in dict(values["voicing_threshold"]).items()},
                   octave_repair_ms=float(values["octave_repair_ms"]), median_ms=float(values["median_ms"]),
                   rmvpe_path=str(values["rmvpe_path"]), device=str(values["device"]))

    @classmethod
    def from_conf(cls, **overrides: Any) -> "F0Settings":
        """``conf/f0/default.yaml`` with some fields replaced (``None`` values are ignored)."""
        from ai_singer.config import conf_group

        values = conf_group("f0")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.from_values(values)
