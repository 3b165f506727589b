"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A reader (or a run started again after a crash) sees either the old file or the new one,
never a half-written one. Every artifact, manifest, feature file and output goes through here.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode for finished files: what ``open()`` would give (0666 less the umask). ``mkstemp`` makes 0600.
_FILE_MODE = 0o666 & ~_umask()

#: Temporary names carry the writer's pid: ``.<name>.<pid>.<random>.tmp[<suffix>]``, so a later run can
#: tell the leftovers of a killed writer from the files of one still running.
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")


def _prefix(stem: str) -> str:
    return f".{stem}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


#: A folder set aside while a new one takes its place: ``.<name>.<pid>.old.tmp``.
_OLD_FOLDER = re.compile(r"^\.(.+)\.(\d+)\.old\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries in ``folder`` (not below it) that a killed writer left behind: those whose
    writer's process is gone — files of :func:`atomic_write`/:func:`atomic_path` and folders of
    :func:`atomic_folder`. A folder set aside by :func:`replace_folder` whose replacement never arrived (the
    writer died between its two renames) is renamed back into place instead. Files and folders of a writer
    still running, and anything not named like our temporaries, are left alone. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = _TEMPORARY.match(path.name)
        if not match or _alive(int(match.group(1))):
            continue
        old = _OLD_FOLDER.match(path.name)
        if old and path.is_dir() and not (folder / old.group(1)).exists():
            _put_back(path, folder / old.group(1))  # never deleted: it is the only complete version
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _put_back(aside: Path, target: Path) -> bool:
    """Rename the set-aside folder ``aside`` back to the missing ``target`` (its replacement never arrived);
    False where the rename failed (a read-only folder: left for a run that can write there)."""
    try:
        os.rename(aside, target)  # the old version is the complete one: put it back
    except OSError:
        return False
    return True


def restore_set_aside(target: str | os.PathLike) -> bool:
    """Where a :func:`replace_folder` was killed between its two renames, ``target`` is missing and its
    complete old version waits beside it as ``.<name>.<pid>.old.tmp``: rename that back (only when its
    writer is gone). For readers that look for ``target`` before any writer has cleaned up; True when a
    folder came back."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return False
    for aside in sorted(target.parent.glob(f".{glob_escape(target.name)}.*.old.tmp")):
        match = _OLD_FOLDER.match(aside.name)
        if match and match.group(1) == target.name and aside.is_dir() and not _alive(int(match.group(2))):
            return _put_back(aside, target)
    return False


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the OS or the file
    system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``new`` at ``target`` (same parent), replacing an existing ``target`` as
    atomically as the OS allows: one swap where Linux offers it, else old -> ``.<name>.<pid>.old.tmp``,
    new -> target, then the old is deleted. A reader sees the complete old folder or the complete new
    one; after a kill between the two renames, :func:`remove_stale_temporaries` puts the old one back."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # holds the old version now
    else:
        aside = target.parent / f".{target.name}.{os.getpid()}.old.tmp"
        os.rename(target, aside)
        os.rename(new, target)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` (``.<name>.<pid>.<random>.tmp``); on a clean exit it
    replaces ``path`` (:func:`replace_folder`), on an error it is deleted and ``path`` is left untouched.
    For outputs that belong together (a song's stems and report): all of them appear, or none."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _renamed_onto(tmp_name: str, target: Path) -> Iterator[None]:
    """Around the writing of the temporary file ``tmp_name`` (synced by the body): on a clean exit it gets the
    finished files' mode and is renamed onto ``target``; on an error it is removed and ``target`` is left as
    it was."""
    try:
        yield
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(target.name), suffix=".tmp", dir=target.parent)
    with _renamed_onto(tmp_name, target):
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for libraries that want a file name (soundfile,
    safetensors, torch.save); rename it onto ``path`` on a clean exit, remove it on an error.

    The temporary name keeps ``path``'s suffix so format detection by extension still works.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(target.stem), suffix=f".tmp{target.suffix}",
                                    dir=target.parent)
    os.close(fd)
    with _renamed_onto(tmp_name, target):
        yield Path(tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) for the ``with`` block, so two
    processes never run it at once. ``wait=False``: raise :class:`BlockingIOError` at once when another process
    holds it. The lock goes with the process, so a killed one never leaves it stale. Not POSIX: no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
