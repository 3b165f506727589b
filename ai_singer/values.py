"""Checked conversion of config values (strings from the command line, numbers from YAML) into typed values.

Each function names the setting in its :class:`~ai_singer.errors.UserError` (``noise_scale='abc': not a
number``), so every stage reports a wrong value the same way, before any heavy work. No torch here.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

from ai_singer.errors import UserError

#: Singer names (folders under paths.singers, names in sections files): no path separators, no "..".
SINGER_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


def _where(key: str, value: Any) -> str:
    return f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"


def as_float(value: Any, key: str, minimum: float | None = None, maximum: float | None = None,
             above: float | None = None, below: float | None = None) -> float:
    """A finite number within ``[minimum, maximum]`` (and ``> above``, ``< below`` when given)."""
    if isinstance(value, bool):
        raise UserError(_where(key, value), "expected a number, not true/false")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(_where(key, value), "not a number") from None
    if not math.isfinite(number):
        raise UserError(_where(key, value), "must be a finite number")
    bounds = []
    if minimum is not None and number < minimum:
        bounds.append(f">= {minimum:g}")
    if maximum is not None and number > maximum:
        bounds.append(f"<= {maximum:g}")
    if above is not None and number <= above:
        bounds.append(f"> {above:g}")
    if below is not None and number >= below:
        bounds.append(f"< {below:g}")
    if bounds:
        raise UserError(_where(key, value), f"must be {' and '.join(bounds)}")
    return number


def as_int(value: Any, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number within ``[minimum, maximum]`` (``"4"`` and ``4.0`` are accepted, ``4.5`` is not)."""
    if isinstance(value, bool):
        raise UserError(_where(key, value), "expected a whole number, not true/false")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(_where(key, value), "not a whole number") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(_where(key, value), "not a whole number")
    if minimum is not None and number < minimum:
        raise UserError(_where(key, value), f"must be >= {minimum}")
    if maximum is not None and number > maximum:
        raise UserError(_where(key, value), f"must be <= {maximum}")
    return int(number)


def as_bool(value: Any, key: str) -> bool:
    """true/false (YAML booleans, or the strings true/false/yes/no/1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise UserError(_where(key, value), "expected true or false")


def one_of(value: Any, key: str, choices: Iterable[str]) -> str:
    """``value`` as a string when it is one of ``choices``."""
    choices = list(choices)
    if str(value) not in choices:
        raise UserError(_where(key, value), f"must be one of {', '.join(choices)}")
    return str(value)


def plain_name(value: Any, key: str) -> str:
    """A singer (or other folder) name: letters, digits, ``_ - .``, not starting with a dot — never a path."""
    text = str(value)
    if not SINGER_NAME.match(text) or text in (".", ".."):
        raise UserError(_where(key, value), "a singer is named by its folder name under paths.singers (letters, "
                                            "digits, _ - .), not by a path",
                        "copy or link the adapter folder into paths.singers, or set paths.singers=DIR")
    return text


def plain(node: Any) -> Any:
    """An OmegaConf node as plain Python containers (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node
