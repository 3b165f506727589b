"""Command-line options from a settings dataclass (tools/synth_corpus.py, tools/real_corpus.py): one
``--field-name`` per described field, with the field's default and type, so each default stays in the
dataclass alone."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_settings_arguments(parser: argparse.ArgumentParser, settings: type, helps: dict[str, str]) -> None:
    """``--field-name`` for each field of the dataclass ``settings`` named in ``helps`` (field -> help text,
    ``(default: ...)`` appended); a ``Path`` default reads a path."""
    defaults = {field.name: field.default for field in dataclasses.fields(settings)}
    for name, text in helps.items():
        default = defaults[name]
        kind = Path if isinstance(default, Path) else type(default)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                            help=f"{text} (default: {default})")


def settings_values(args: argparse.Namespace, helps: dict[str, str]) -> dict:
    """The parsed values of the options :func:`add_settings_arguments` added (field -> value)."""
    return {name: getattr(args, name) for name in helps}
