"""One error type for the user's mistakes: a setting, a file or a folder that cannot be used.

Every stage raises a :class:`UserError` (or one of its per-stage subclasses: ``AudioError``,
``PreprocessError``, ``ManifestError``, ``ArtifactError``, ``InferError``, ``SectionsError``,
``TrainSetupError``, ``DeviceError``, ...) for what the user can fix, and the one Hydra entry wrapper
(:func:`ai_singer.conf_dir.run_hydra_app`) turns it into one line on stderr, ``<stage>: error: <message>``,
and exit code 2. Anything else is a bug or an environment failure and keeps its traceback.

No torch, no Hydra here: every module may import this one.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from typing import Any

#: Exit code of a run stopped by a user's mistake (bad setting, missing or unusable file).
USER_ERROR_EXIT = 2
#: Exit code of a run stopped by its environment (a full disk): neither the input's fault nor a bug.
ENVIRONMENT_EXIT = 3
#: libsndfile says only "System error." when a write fails; with less than this free it was the full disk.
NEARLY_FULL_BYTES = 64 << 20


class UserError(Exception):
    """What went wrong, where, and (optionally) how to fix it.

    ``where``: the setting (``transpose=abc``), file or folder concerned; ``reason``: what is wrong with it;
    ``fix``: what to do instead. ``str()`` is ``"where: reason"``, plus ``" — fix"`` when one is given.
    Picklable (worker processes send it back to the main process).
    """

    def __init__(self, where: str | os.PathLike, reason: str, fix: str | None = None):
        self.where = str(where)
        self.reason = str(reason)
        self.fix = fix
        super().__init__(self.message())

    def message(self) -> str:
        text = f"{self.where}: {self.reason}"
        return f"{text} — {self.fix}" if self.fix else text

    def __str__(self) -> str:
        return self.message()

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type, state: dict) -> UserError:
    """Unpickle any UserError subclass whatever its constructor's signature: bypass ``__init__`` and restore
    the attributes (the message is derived from them)."""
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error.message())
    return error


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space (bytes) of the file system holding ``folder`` (or its nearest existing ancestor)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class OutOfSpace(Exception):
    """The disk holding ``folder`` is full: an environment failure, not a bad input file. ``needed_bytes``
    estimates what finishing the run would take (None when unknown). Picklable (raised in workers)."""

    def __init__(self, folder: str | os.PathLike, needed_bytes: float | None = None, free: int | None = None):
        self.folder = str(folder)
        self.needed_bytes = needed_bytes
        self.free = free_bytes(folder) if free is None else free
        super().__init__(self.message())

    def message(self) -> str:
        need = (f"the rest of the run needs about {_size(self.needed_bytes)}" if self.needed_bytes
                else "more free space is needed")
        return (f"{self.folder}: out of disk space ({_size(self.free)} free; {need}) — free space there (or choose "
                "a folder on another disk) and run the same command again: what was finished is kept")

    def __str__(self) -> str:
        return self.message()

    def __reduce__(self) -> Any:
        return (type(self), (self.folder, self.needed_bytes, self.free))


def is_out_of_space(error: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether ``error`` (or an error it was raised from) means the disk is full: ENOSPC/EDQUOT, a library's
    "No space left on device" / "StorageFull", or libsndfile's bare "System error" while the disk holding
    ``folder`` has less than :data:`NEARLY_FULL_BYTES` free."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OutOfSpace):
            return True
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if any(marker in text for marker in ("No space left on device", "StorageFull", "os error 28",
                                             "Disk quota exceeded")):
            return True
        if "System error" in text and folder is not None:
            free = free_bytes(folder)
            if free is not None and free < NEARLY_FULL_BYTES:
                return True
        error = error.__cause__ or error.__context__
    return False


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is a user's mistake (a :class:`UserError` or one of its per-stage subclasses)."""
    return isinstance(error, UserError)


def one_line(stage: str, error: BaseException) -> str:
    """``<stage>: error: <message>`` on one line: what the command line prints (and the web page shows)."""
    text = " ".join(line.strip() for line in str(error).splitlines())
    return f"{stage}: error: {text}"


def report(stage: str, error: BaseException) -> int:
    """Print ``<stage>: error: <message>`` as one line on stderr; returns :data:`USER_ERROR_EXIT`."""
    print(one_line(stage, error), file=sys.stderr)
    return USER_ERROR_EXIT
