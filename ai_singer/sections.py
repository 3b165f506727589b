"""Per-section singers: a small text file that says who sings which part of a song (for duets).

Format: one section per line, ``START END SINGER``, separated by spaces or tabs; ``#`` starts a comment.
Times are seconds (``12.5``), ``m:ss[.fff]`` or ``h:mm:ss[.fff]``; ``END`` may be ``end`` (the end of
the song). Sections must not overlap. Example::

    # start  end     singer
    0:00     0:31.5  alice
    0:31.5   1:02    bob
    1:02     1:30    alice:0.5,bob:0.5
    1:30     end     alice

A singer may be a blend, ``NAME:WEIGHT,NAME:WEIGHT`` without spaces (:mod:`ai_singer.singer_spec`).
Parts of the song that no section covers are sung by the default singer (``singer=`` in the config);
with no default singer they are left silent (a warning in the song's report says so).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ai_singer.errors import UserError
from ai_singer.singer_spec import parse_singer_spec
from ai_singer.values import SINGER_NAME as _SINGER_NAME


class SectionsError(UserError, ValueError):
    """A sections file that cannot be used: ``str()`` is ``"{path}: {reason}"`` (with the line number)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        super().__init__(path, reason)


@dataclass(frozen=True)
class Section:
    """Seconds ``[start_s, end_s)`` (``end_s`` may be ``math.inf``) sung by ``singer``."""

    start_s: float
    end_s: float
    singer: str


def parse_time(text: str) -> float:
    """Seconds from ``"12.5"``, ``"1:02.5"``, ``"1:02:03"`` or ``"end"`` (-> ``math.inf``).
    Raises ValueError for anything else."""
    text = text.strip()
    if text.lower() == "end":
        return math.inf
    parts = text.split(":")
    if len(parts) > 3 or not all(re.fullmatch(r"\d+(\.\d*)?", part) for part in parts):
        raise ValueError(f"{text!r} is not a time (use seconds like 12.5, m:ss like 1:02.5, or 'end')")
    if any(not re.fullmatch(r"\d+", part) for part in parts[:-1]):
        raise ValueError(f"{text!r}: only the seconds may have a fraction")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60.0 + float(part)
    if len(parts) > 1 and float(parts[-1]) >= 60.0:
        raise ValueError(f"{text!r}: seconds must be below 60 in m:ss")
    return seconds


def parse_sections(path: str | os.PathLike) -> list[Section]:
    """Read a sections file (format in the module docstring). Returns sections sorted by start.

    Raises SectionsError naming the file and line for a missing file, a malformed line, a section
    that ends before it starts, overlapping sections, or a file with no sections.
    """
    path = Path(path)
    if not path.is_file():
        raise SectionsError(path, "sections file does not exist")
    sections: list[tuple[Section, int]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            raise SectionsError(path, f"line {number}: expected 'START END SINGER', got {raw.strip()!r}")
        try:
            start, end = parse_time(fields[0]), parse_time(fields[1])
        except ValueError as error:
            raise SectionsError(path, f"line {number}: {error}") from None
        if math.isinf(start):
            raise SectionsError(path, f"line {number}: a section cannot start at 'end'")
        if not end > start:
            raise SectionsError(path, f"line {number}: end {fields[1]} is not after start {fields[0]}")
        if ":" not in fields[2] and (not _SINGER_NAME.match(fields[2]) or fields[2] in (".", "..")):
            raise SectionsError(path, f"line {number}: {fields[2]!r} is not a singer name "
                                      "(letters, digits, '_', '-', '.'; not starting with '.')")
        try:
            parse_singer_spec(fields[2], "singer")  # a blend: NAME:WEIGHT,NAME:WEIGHT
        except UserError as error:
            raise SectionsError(path, f"line {number}: {error.reason}") from None
        sections.append((Section(start, end, fields[2]), number))
    if not sections:
        raise SectionsError(path, "no sections found (expected lines 'START END SINGER')")
    sections.sort(key=lambda item: item[0].start_s)
    for (previous, previous_line), (current, line) in zip(sections, sections[1:]):
        if current.start_s < previous.end_s:
            raise SectionsError(path, f"line {line} overlaps line {previous_line} "
                                      f"({current.start_s:g} s starts before {previous.end_s:g} s)")
    return [section for section, _ in sections]


def assign_singers(ranges: list[tuple[int, int]], sample_rate: int, sections: list[Section] | None,
                   default_singer: str | None) -> list[tuple[int, int, str | None]]:
    """Split sample ranges at section boundaries and name the singer of each piece.

    Args:
        ranges: sorted, non-overlapping ``(start, end)`` sample ranges (end exclusive).
        sample_rate: the rate the ranges count samples at.
        sections: from :func:`parse_sections`, or None (everything goes to ``default_singer``).
        default_singer: singer of the parts no section covers (None: nobody, the part stays silent).

    Returns:
        ``(start, end, singer or None)`` pieces covering exactly the input ranges, in order.
    """
    if not sections:
        return [(start, end, default_singer) for start, end in ranges]
    # Boundaries in samples, with the owner of each span between consecutive boundaries.
    spans: list[tuple[int, int, str | None]] = []
    cursor = 0
    for section in sections:
        start = int(round(section.start_s * sample_rate))
        end = math.inf if math.isinf(section.end_s) else int(round(section.end_s * sample_rate))
        if start > cursor:
            spans.append((cursor, start, default_singer))
        spans.append((start, end, section.singer))
        cursor = end
    if not math.isinf(cursor):
        spans.append((cursor, math.inf, default_singer))
    pieces = []
    for start, end in ranges:
        for span_start, span_end, singer in spans:
            a, b = max(start, span_start), min(end, span_end)
            if a < b:
                pieces.append((int(a), int(b), singer))
    return pieces
