"""The sha256 of a file, read in chunks (torch-free: for tools and stages that hash files without loading
models; :mod:`ai_singer.checkpoint` re-exports it for artifact hashes)."""
from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
