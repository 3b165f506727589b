"""The finished pieces of a long source, kept across runs so that a killed preprocess resumes inside the file.

A source longer than ``split_seconds`` is shared among the workers in pieces (runs of consecutive clips).
Its record (``<processed>/.sources/<key>.json``) is written only when every piece is back, so without more
a run killed after 25 of 30 minutes of one recording redid all of it. Each piece that comes back is recorded
here, beside the source's record, as ``<processed>/.sources/<key>.pieces/<first clip:06d>.json``:

    {source, singer, fingerprint, settings_hash, ranges: [[index, start, stop], ...],
     status, reason, clips, rejected_clips}

(``clips``/``rejected_clips`` are the entries the source's record takes, ``status`` is ``ok`` or
``rejected``). A later run keeps a piece when the source, its fingerprint, the settings hash and the
piece's clip ranges are unchanged and its clip files are all there, and gives the workers only the rest;
the record it seals is the one an uninterrupted run writes. Once the record is written the folder goes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from ai_singer.atomic import atomic_write_json

#: Suffix of a source's folder of finished pieces (beside its record ``<key>.json``).
PIECES_SUFFIX = ".pieces"

#: What must be unchanged for a finished piece to be kept: the source file and what is written from it.
IDENTITY_KEYS = ("source", "singer", "fingerprint", "settings_hash")

Piece = Sequence[tuple[int, tuple[int, int]]]


def pieces_folder(record_file: Path) -> Path:
    """The folder of finished pieces of the source whose record is ``record_file``."""
    return record_file.with_suffix(PIECES_SUFFIX)


def _identity(record: Mapping) -> dict:
    return {key: record.get(key) for key in IDENTITY_KEYS}


def _files(result: Mapping) -> list[str]:
    return [name for clip in result.get("clips", []) for name in (clip["audio"], clip["features"])]


def save_piece(record_file: Path, record: Mapping, piece: Piece, result: Mapping) -> None:
    """Record that ``piece`` (``(index, (start, stop))`` clips) of the source of ``record`` (its new record,
    without clips yet) is done with ``result`` (``{status, reason, clips, rejected_clips}``)."""
    entry = {**_identity(record), "ranges": [[index, start, stop] for index, (start, stop) in piece],
             **{key: result[key] for key in ("status", "reason", "clips", "rejected_clips")}}
    atomic_write_json(pieces_folder(record_file) / f"{piece[0][0]:06d}.json", entry)


def load_pieces(record_file: Path, record: Mapping, ranges: Sequence[tuple[int, int]],
                processed: Path) -> dict[int, dict]:
    """The pieces of this source already done in an earlier run, ``{first clip index: entry}``: those of the
    same source, fingerprint and settings whose clip ranges match ``ranges`` (the source sliced again) and whose
    clip files exist. Any other piece file is removed (its clips are written again)."""
    folder = pieces_folder(record_file)
    if not folder.is_dir():
        return {}
    kept: dict[int, dict] = {}
    identity = _identity(record)
    for path in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            fits = (_identity(entry) == identity and entry["ranges"]
                    and all(0 <= index < len(ranges) and list(ranges[index]) == [start, stop]
                            for index, start, stop in entry["ranges"])
                    and all((processed / name).is_file() for name in _files(entry)))
        except (OSError, ValueError, KeyError, TypeError):
            fits = False
        if fits:
            kept[int(entry["ranges"][0][0])] = entry
        else:
            path.unlink(missing_ok=True)
    return kept


def piece_indices(entry: Mapping) -> list[int]:
    """The clip indices a recorded piece covers."""
    return [int(index) for index, _, _ in entry["ranges"]]


def remove_pieces(record_file: Path) -> None:
    """Forget the finished pieces of a source (its record is written, or it is redone from the start)."""
    shutil.rmtree(pieces_folder(record_file), ignore_errors=True)


def piece_folders(records_dir: Path) -> Iterator[tuple[Path, str | None]]:
    """Every folder of finished pieces under ``records_dir`` with the source it belongs to (None when no
    piece file in it can be read)."""
    if not records_dir.is_dir():
        return
    for folder in sorted(records_dir.glob(f"*{PIECES_SUFFIX}")):
        if not folder.is_dir():
            continue
        source = None
        for path in sorted(folder.glob("*.json")):
            try:
                source = json.loads(path.read_text(encoding="utf-8"))["source"]
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
        yield folder, source


def kept_files(records_dir: Path) -> set[str]:
    """The clip files (relative to the processed folder) that recorded pieces refer to."""
    names: set[str] = set()
    for folder, _ in piece_folders(records_dir):
        for path in folder.glob("*.json"):
            try:
                names.update(_files(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return names
