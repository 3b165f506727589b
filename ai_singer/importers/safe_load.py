"""Read a downloaded PyTorch checkpoint without running anything it contains.

Community checkpoints are pickles. :func:`load_checkpoint` reads them with
``torch.load(weights_only=True)``: tensors, plain containers and numbers, plus only the classes the caller
allows by their pickled name (``{"fairseq.data.dictionary.Dictionary": StandIn, ...}``), each mapped to an
object of the caller's choosing (usually an inert stand-in from this project, not the original class). A
pickle that names any other class or function is refused. Every failure is a :class:`CheckpointError`
naming the file: not a checkpoint, truncated or damaged, or a foreign class.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ai_singer.errors import UserError


class CheckpointError(UserError):
    """A checkpoint file that cannot be used: missing, of the wrong kind, damaged, or holding classes that
    are not allowed."""


#: Leading bytes of files people confuse with checkpoints -> what they are.
_KNOWN_HEADERS = ((b"RIFF", "a WAV audio file"), (b"fLaC", "a FLAC audio file"), (b"OggS", "an Ogg audio file"),
                  (b"ID3", "an MP3 audio file"), (b"\x89HDF", "an HDF5 file"), (b"{", "a JSON/text file"),
                  (b"version https://git-lfs", "a Git LFS pointer (the real file was never downloaded)"),
                  (b"<", "an HTML/XML page (a failed download?)"))

#: How many classes :func:`load_checkpoint` admits through ``stand_in_for`` (each costs one more read).
_MAX_STAND_INS = 16

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _describe_header(head: bytes, size: int) -> str | None:
    """What a file that is not a PyTorch checkpoint looks like, from its first bytes (None: a checkpoint,
    as far as the header tells)."""
    if head.startswith(b"PK") or head.startswith(b"\x80"):  # zip archive (torch >= 1.6) / legacy pickle
        return None
    if size >= 8 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return "a safetensors file"
    for prefix, kind in _KNOWN_HEADERS:
        if head.startswith(prefix):
            return kind
    if size == 0:
        return "an empty file"
    return "not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _weights_only_reason(text: str) -> str:
    """The line of torch's weights-only error message that says what was refused."""
    found = re.search(r"WeightsUnpickler error: (.*)", text)
    return _one_line(found.group(1) if found else text)


def load_checkpoint(path: str | Path, allowed: Mapping[str, Any], what: str = "a PyTorch checkpoint",
                    stand_in_for: Callable[[str], Any] | None = None) -> Any:
    """The unpickled contents of ``path``, read with ``torch.load(weights_only=True, map_location="cpu")``.

    Args:
        path: the checkpoint file (.pt/.pth, zip or legacy format).
        allowed: pickled global name (``"module.Name"``) -> the object it stands for while loading; nothing
            else beyond torch's own safe set is accepted.
        what: the kind of file expected, for messages ("a fairseq checkpoint").
        stand_in_for: for a name outside ``allowed`` found in the pickle, the object standing for it, or None
            to refuse the file (e.g. inert records for a family of harmless configuration classes).

    Raises:
        CheckpointError: no such file, a folder, not a checkpoint, truncated/damaged, or a foreign class
            (named in the message).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if path.is_dir():
        raise CheckpointError(path, f"is a folder; give the path of {what} file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(32)
    kind = _describe_header(head, size)
    if kind is not None:
        raise CheckpointError(path, f"is {kind}, not {what}")
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(path, f"is truncated or damaged (an incomplete zip archive, {size} bytes); "
                                        "download it again")
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                raise CheckpointError(path, f"is a zip archive without a pickled data.pkl: not {what}")
    entries = {name: stand_in for name, stand_in in allowed.items()}
    for _ in range(_MAX_STAND_INS):
        try:
            with torch.serialization.safe_globals([(stand_in, name) for name, stand_in in entries.items()]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            text = str(error)
            foreign = _UNSUPPORTED_GLOBAL.search(text)
            if foreign:
                name = foreign.group(1)
                stand_in = None if stand_in_for is None or name in entries else stand_in_for(name)
                if stand_in is not None:
                    entries[name] = stand_in  # a harmless class met for the first time: load again with it
                    continue
                raise CheckpointError(path, f"refused: its pickle names {name}, which is not among the classes and "
                                            f"functions {what} may hold; nothing from the file was run") from None
            if any(marker in text for marker in ("reduce", "Can only", "persistent id", "blocked")):
                raise CheckpointError(path, f"refused: its pickle asks for something weights-only loading does not "
                                            f"allow ({_weights_only_reason(text)}); nothing from the file was run"
                                      ) from None
            raise CheckpointError(path, f"is truncated or damaged ({_weights_only_reason(text)}); download it again"
                                  ) from None
        except (EOFError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                zipfile.BadZipFile, OSError) as error:
            reason = _one_line(error) or ("the file ends early" if isinstance(error, EOFError)
                                          else type(error).__name__)
            raise CheckpointError(path, f"is truncated or damaged ({reason}); download it again") from None
    raise CheckpointError(path, f"refused: its pickle names more than {_MAX_STAND_INS} different configuration "
                                "classes; nothing from the file was run")
