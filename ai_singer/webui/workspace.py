"""The web interface's working folder: one folder per browser session, uploads taken in under generated names.

Nothing a browser sends is used as a path. A session is known by a random token the server makes (never by
the id the browser presents); an upload is copied into that session's folder under a name the server chooses
(``vocals.flac``, ``stem1.wav``, ``take03.wav``) after its kind (file suffix), size and content (it must decode
as audio) are checked; a zip is read member by member, only audio members are taken, with the same checks and
a cap on the uncompressed size. A display name derived from the user's file name (letters, digits, ``_ -``)
labels songs in reports and never holds a separator. Session folders are removed when the page is closed (once
their jobs are done) and after ``max_age_s`` without use; the whole working folder goes when the server stops
if it was a temporary one.

No gradio and no torch here: the app (``ai_singer.webui.app``) and the tests use it directly.
"""
from __future__ import annotations

import re
import secrets
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ai_singer.audio import AUDIO_SUFFIXES, AudioError, audio_info
from ai_singer.errors import UserError

#: What an upload may be: audio (decoded to check), or a zip of audio files (song folders, recordings).
ARCHIVE_SUFFIXES = (".zip",)
#: Accepted upload suffixes, as the page's file pickers list them.
UPLOAD_SUFFIXES = AUDIO_SUFFIXES + ARCHIVE_SUFFIXES
#: The stem name of a song folder's vocal (as :mod:`ai_singer.songs` expects).
VOCAL_STEM = "vocals"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class UploadRejected(UserError):
    """An upload that is not taken: wrong kind, too large, or not decodable audio."""


@dataclass(frozen=True)
class Limits:
    """Upload limits: bytes per uploaded file, uncompressed bytes per zip, audio files per zip."""

    max_file_bytes: int
    max_archive_bytes: int
    max_archive_files: int


def display_name(filename: str, fallback: str = "song") -> str:
    """A label from a user's file name: its stem with anything but letters, digits, ``_`` and ``-`` turned
    into ``_``, at most 40 characters (``"My Song (v2).wav"`` -> ``"My_Song_v2"``); never a path."""
    stem = Path(str(filename).replace("\\", "/")).name
    for suffix in UPLOAD_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = _UNSAFE.sub("_", stem).strip("_-")[:40]
    return name or fallback


def _suffix(filename: str) -> str:
    return Path(str(filename).replace("\\", "/")).suffix.lower()


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def check_kind(filename: str, allowed: Iterable[str] = UPLOAD_SUFFIXES) -> str:
    """The upload's suffix (lower case) if it is one of ``allowed``, else UploadRejected naming the file."""
    allowed = tuple(allowed)
    suffix = _suffix(filename)
    if suffix not in allowed:
        raise UploadRejected(f"upload {Path(str(filename)).name!r}", f"not an accepted file type "
                             f"({suffix or 'no suffix'})", f"upload {', '.join(s.lstrip('.') for s in allowed)} files")
    return suffix


def _check_audio(path: Path, shown: str) -> None:
    """UploadRejected naming the user's file (never our copy's path) unless ``path`` decodes as audio."""
    try:
        audio_info(path)
    except AudioError as error:
        detail = str(error.reason).replace(f"Error opening '{path}': ", "").replace(str(path), shown)
        raise UploadRejected(f"upload {shown!r}", detail,
                             f"upload {', '.join(s.lstrip('.') for s in AUDIO_SUFFIXES)} audio files") from None


def take_audio(source: str | Path, filename: str, folder: Path, stem: str, limits: Limits) -> Path:
    """Copy the uploaded audio file ``source`` (the user named it ``filename``) to ``folder/<stem><suffix>``
    after checking its kind, size and that it decodes; returns the new path. UploadRejected otherwise."""
    shown = Path(str(filename)).name
    suffix = check_kind(filename, AUDIO_SUFFIXES)
    size = Path(source).stat().st_size
    if size > limits.max_file_bytes:
        raise UploadRejected(f"upload {shown!r}", f"too large ({_megabytes(size)}; the limit is "
                             f"{_megabytes(limits.max_file_bytes)})", "upload a shorter or compressed (flac) file")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}{suffix}"
    shutil.copyfile(source, target)
    try:
        _check_audio(target, shown)
    except UploadRejected:
        target.unlink(missing_ok=True)
        raise
    return target


@dataclass
class ArchiveFolder:
    """The audio members of one folder of a zip (its top level, or a sub-folder), in archive order."""

    name: str  # a display name (the folder's or the zip's)
    members: list[zipfile.ZipInfo] = field(default_factory=list)


def read_archive(source: str | Path, filename: str, limits: Limits) -> tuple[zipfile.ZipFile, list[ArchiveFolder]]:
    """Open the uploaded zip and group its audio members by the folder holding them (hidden files, macOS
    resource forks and non-audio members are left out). UploadRejected for a file that is no zip, holds no
    audio, or whose audio would exceed the limits once uncompressed."""
    shown = Path(str(filename)).name
    check_kind(filename, ARCHIVE_SUFFIXES)
    if Path(source).stat().st_size > limits.max_file_bytes:
        raise UploadRejected(f"upload {shown!r}", f"too large (the limit is {_megabytes(limits.max_file_bytes)})")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadRejected(f"upload {shown!r}", f"not a zip file ({error})") from None
    folders: dict[str, ArchiveFolder] = {}
    total = count = 0
    for member in archive.infolist():
        parts = [p for p in member.filename.replace("\\", "/").split("/") if p]
        if member.is_dir() or not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if _suffix(parts[-1]) not in AUDIO_SUFFIXES:
            continue
        count += 1
        total += member.file_size
        if count > limits.max_archive_files or total > limits.max_archive_bytes:
            archive.close()
            raise UploadRejected(f"upload {shown!r}", f"holds more audio than accepted (at most "
                                 f"{limits.max_archive_files} files, {_megabytes(limits.max_archive_bytes)} "
                                 "uncompressed)", "upload fewer or shorter files")
        key = "/".join(parts[:-1])
        label = display_name(parts[-2] if len(parts) > 1 else filename)
        folders.setdefault(key, ArchiveFolder(name=label)).members.append(member)
    if not folders:
        archive.close()
        raise UploadRejected(f"upload {shown!r}", "holds no audio files",
                             f"put {', '.join(s.lstrip('.') for s in AUDIO_SUFFIXES)} files in the zip")
    return archive, list(folders.values())


def extract_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, folder: Path, stem: str, limits: Limits) -> Path:
    """Write one audio member of ``archive`` to ``folder/<stem><suffix>`` (reading at most the limit, whatever
    the zip claims) and check that it decodes."""
    name = member.filename.replace("\\", "/").split("/")[-1]
    suffix = check_kind(name, AUDIO_SUFFIXES)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}{suffix}"
    written = 0
    with archive.open(member) as reader, open(target, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            written += len(block)
            if written > limits.max_file_bytes:
                writer.close()
                target.unlink(missing_ok=True)
                raise UploadRejected(f"upload {name!r}", f"too large once uncompressed (the limit is "
                                     f"{_megabytes(limits.max_file_bytes)})")
            writer.write(block)
    try:
        _check_audio(target, name)
    except UploadRejected:
        target.unlink(missing_ok=True)
        raise
    return target


def unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3`` ... when taken; the result is added to ``taken``."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def take_song_folder(vocal: tuple[str, str], stems: list[tuple[str, str]], songs_dir: Path, name: str,
                     limits: Limits) -> Path:
    """One song from separate uploads: ``songs_dir/<name>/vocals.<ext>`` and ``stem1.<ext>`` ... (each
    ``(path, filename)``). Returns the song folder."""
    folder = songs_dir / name
    take_audio(vocal[0], vocal[1], folder, VOCAL_STEM, limits)
    for i, (path, filename) in enumerate(stems, start=1):
        take_audio(path, filename, folder, f"stem{i}", limits)
    return folder


def take_songs(uploads: list[tuple[str, str]], songs_dir: Path, limits: Limits) -> list[str]:
    """A batch of songs from uploads ``(path, filename)``: an audio file is a song of its own (a vocal alone);
    a zip gives one song per folder holding audio (the vocal is the member named ``vocals.*``, every other
    audio member an accompaniment stem, as in a song folder on disk). Returns the songs' names."""
    taken: set[str] = set()
    for path, filename in uploads:
        if _suffix(filename) in ARCHIVE_SUFFIXES:
            archive, folders = read_archive(path, filename, limits)
            with archive:
                for group in folders:
                    names = [m.filename.replace("\\", "/").split("/")[-1] for m in group.members]
                    vocals = [n for n in names if Path(n).stem.lower() == VOCAL_STEM]
                    if len(group.members) > 1 and len(vocals) != 1:
                        raise UploadRejected(f"upload {Path(filename).name!r}", f"folder {group.name!r} holds "
                                             f"{len(vocals)} files named {VOCAL_STEM}.* among {names}",
                                             f"a song folder holds one {VOCAL_STEM}.* and its accompaniment stems")
                    folder = songs_dir / unique(group.name, taken)
                    stems = 0
                    for member, member_name in zip(group.members, names):
                        if len(group.members) == 1 or Path(member_name).stem.lower() == VOCAL_STEM:
                            stem = VOCAL_STEM
                        else:
                            stems += 1
                            stem = f"stem{stems}"
                        extract_member(archive, member, folder, stem, limits)
        else:
            name = unique(display_name(filename), taken)
            take_audio(path, filename, songs_dir / name, VOCAL_STEM, limits)
    return sorted(taken)


def take_recordings(uploads: list[tuple[str, str]], singer_dir: Path, limits: Limits) -> int:
    """Raw recordings of one singer from uploads (audio files, or zips of them, flattened) into ``singer_dir``
    as ``take001.<ext>`` ...; returns how many were taken."""
    n = len(list(singer_dir.glob("take*"))) if singer_dir.is_dir() else 0
    for path, filename in uploads:
        if _suffix(filename) in ARCHIVE_SUFFIXES:
            archive, folders = read_archive(path, filename, limits)
            with archive:
                for member in (m for group in folders for m in group.members):
                    n += 1
                    extract_member(archive, member, singer_dir, f"take{n:03d}", limits)
        else:
            n += 1
            take_audio(path, filename, singer_dir, f"take{n:03d}", limits)
    return n


class Workspace:
    """``root/sessions/<token>/``: the files of one browser session; ``root`` is the UI's working folder."""

    def __init__(self, root: str | Path, limits: Limits, max_age_s: float = 24 * 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.root = Path(root)
        self.limits = limits
        self.max_age_s = max_age_s
        self._clock = clock
        self._tokens: dict[str, str] = {}  # the browser's session id -> our token
        self._used: dict[str, float] = {}  # token -> last use
        self._lock = threading.Lock()
        (self.root / "sessions").mkdir(parents=True, exist_ok=True)

    def folder(self, session_id: str) -> Path:
        """The session's folder (made on first use)."""
        with self._lock:
            token = self._tokens.get(session_id)
            if token is None:
                token = self._tokens[session_id] = secrets.token_hex(8)
            self._used[token] = self._clock()
        path = self.root / "sessions" / token
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_folder(self, session_id: str, kind: str) -> Path:
        """A fresh folder ``<session>/<kind>-<n>`` for one job's inputs or outputs."""
        base = self.folder(session_id)
        with self._lock:
            n = 1 + sum(1 for p in base.iterdir() if p.name.startswith(f"{kind}-"))
            path = base / f"{kind}-{n}"
            path.mkdir()
        return path

    def close(self, session_id: str, busy: Callable[[str], bool] = lambda token: False) -> bool:
        """Remove the session's folder (the page was closed) unless ``busy(token)``; whether it was removed."""
        with self._lock:
            token = self._tokens.get(session_id)
            if token is None or busy(token):
                return False
            del self._tokens[session_id]
            self._used.pop(token, None)
        shutil.rmtree(self.root / "sessions" / token, ignore_errors=True)
        return True

    def token(self, session_id: str) -> str | None:
        with self._lock:
            return self._tokens.get(session_id)

    def sweep(self, busy: Callable[[str], bool] = lambda token: False) -> list[str]:
        """Remove the folders of sessions unused for ``max_age_s`` (and of sessions this server does not know,
        left by an earlier run) unless busy; returns the tokens removed."""
        now = self._clock()
        removed = []
        with self._lock:
            known = {token: used for token, used in self._used.items()}
        for path in sorted((self.root / "sessions").iterdir()):
            token = path.name
            used = known.get(token)
            if busy(token) or (used is not None and now - used < self.max_age_s):
                continue
            with self._lock:
                for session_id in [s for s, t in self._tokens.items() if t == token]:
                    del self._tokens[session_id]
                self._used.pop(token, None)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(token)
        return removed
