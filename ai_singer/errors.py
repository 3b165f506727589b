"""One error type for the user's mistakes: a setting, a file or a folder that cannot be used.

Every stage raises a :class:`UserError` (or one of its per-stage subclasses: ``AudioError``,
``PreprocessError``, ``ManifestError``, ``ArtifactError``, ``InferError``, ``SectionsError``,
``TrainSetupError``, ``DeviceError``, ...) for what the user can fix, and the one Hydra entry wrapper
(:func:`ai_singer.conf_dir.run_hydra_app`) turns it into one line on stderr, ``<stage>: error: <message>``,
and exit code 2. Anything else is a bug or an environment failure and keeps its traceback.

No torch, no Hydra here: every module may import this one.
"""
from __future__ import annotations

import os
import sys
from typing import Any

#: Exit code of a run stopped by a user's mistake (bad setting, missing or unusable file).
USER_ERROR_EXIT = 2


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


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is a user's mistake: a :class:`UserError`, or the content encoder's
    ``ContentEncoderMissing`` (a FileNotFoundError subclass, defined where torch is imported; checked only
    when that module is loaded, so this stays import-free)."""
    if isinstance(error, UserError):
        return True
    content = sys.modules.get("ai_singer.features.content")
    missing = getattr(content, "ContentEncoderMissing", None)
    return missing is not None and isinstance(error, missing)


def report(stage: str, error: BaseException) -> int:
    """Print ``<stage>: error: <message>`` as one line on stderr; returns :data:`USER_ERROR_EXIT`."""
    text = " ".join(line.strip() for line in str(error).splitlines())
    print(f"{stage}: error: {text}", file=sys.stderr)
    return USER_ERROR_EXIT
