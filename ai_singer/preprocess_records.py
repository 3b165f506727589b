"""Preprocess records: what the stage remembers of each source so that a re-run skips what it already did.

A record ``<processed>/.sources/<key>.json`` (:func:`record_path`) holds the source's fingerprint
(:func:`source_fingerprint`: size, mtime and a hash of three blocks, cheap on long files), the settings hash and
the clips written from it, whose file stems (:func:`clip_id`) are readable, unique per source and stable.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

#: the records' folder inside the processed folder
RECORDS_DIR = ".sources"


def source_fingerprint(path: Path, block_bytes: int = 65536) -> dict:
    """Size, mtime and a sha256 of the first, middle and last ``block_bytes`` of a file."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, stat.st_size // 2 - block_bytes // 2), max(0, stat.st_size - block_bytes)}):
            handle.seek(offset)
            digest.update(handle.read(block_bytes))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "blocks_sha256": digest.hexdigest()}


def _source_key(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8")).hexdigest()


def record_path(processed: Path, source: str) -> Path:
    """Where the record of ``source`` (a path relative to ``paths.raw``) lives."""
    return processed / RECORDS_DIR / f"{_source_key(source)[:20]}.json"


def clip_id(source: str, index: int) -> str:
    """A clip's file stem: readable (the source's stem), unique (a hash of the source's relative path)
    and stable (the index of the slice in its source)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(source).stem).strip("._") or "clip"
    return f"{stem[:60]}-{_source_key(source)[:6]}-{index:03d}"


def read_record(path: Path) -> dict | None:
    """A source's record, or None where it is missing, unreadable or not a record."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "source" in record else None


def record_files(record: dict) -> list[str]:
    """The clip files (audio and features, relative to the processed folder) a record lists."""
    return [name for clip in record.get("clips", []) for name in (clip["audio"], clip["features"])]
