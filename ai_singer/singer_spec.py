"""Who sings: a singer's name (``alice``) or a weighted blend of singers (``alice:0.6,bob:0.4``).

The same text works for ``singer=`` in ``ai-singer convert``, in a sections file's singer column and for
``ai-singer blend``. A blend lists ``NAME:WEIGHT`` pairs separated by commas, without spaces; every weight
is a number above 0 and they are normalised to sum to 1 (``alice:3,bob:1`` = ``alice:0.75,bob:0.25``). A
name alone, or ``NAME:W`` alone, is that singer. How the adapters are combined: :mod:`ai_singer.blend`.

No torch here (parsed while settings are checked, before anything heavy loads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ai_singer.errors import UserError
from ai_singer.values import plain_name


@dataclass(frozen=True)
class SingerSpec:
    """Parent singer names and their weights (normalised: they sum to 1), in the order given."""

    names: tuple[str, ...]
    weights: tuple[float, ...]

    @property
    def is_blend(self) -> bool:
        return len(self.names) > 1

    def describe(self) -> str:
        """``alice:0.6,bob:0.4`` (weights as normalised), or the name of a single singer."""
        if not self.is_blend:
            return self.names[0]
        return ",".join(f"{name}:{weight:g}" for name, weight in zip(self.names, self.weights))


def parse_singer_spec(text: str, where: str = "singer") -> SingerSpec:
    """Parse ``NAME`` or ``NAME:W,NAME:W,...`` (module docstring). ``where`` names the setting or file line
    in the :class:`UserError` raised for a bad name, a missing/non-numeric/non-positive weight or a singer
    named twice."""
    text = str(text).strip()
    if ":" not in text and "," not in text:
        return SingerSpec((plain_name(text, where),), (1.0,))
    names, weights = [], []
    for part in text.split(","):
        name, colon, weight_text = part.partition(":")
        here = f"{where}={text!r}"
        if not colon:
            raise UserError(here, f"{part!r} has no weight", "write each singer of a blend as NAME:WEIGHT, "
                                                             "e.g. alice:0.6,bob:0.4")
        plain_name(name, f"{where}={text!r}: {name!r}")
        try:
            weight = float(weight_text)
        except ValueError:
            raise UserError(here, f"the weight of {name!r}, {weight_text!r}, is not a number") from None
        if not math.isfinite(weight) or weight <= 0:
            raise UserError(here, f"the weight of {name!r} is {weight_text}: every weight must be a number above 0",
                            "leave a singer out rather than giving it weight 0")
        if name in names:
            raise UserError(here, f"singer {name!r} is named twice")
        names.append(name)
        weights.append(weight)
    total = sum(weights)
    return SingerSpec(tuple(names), tuple(w / total for w in weights))
