"""Songs on disk and batches: finding songs, converting each into its output folder (all of its outputs
appear together or not at all), resuming a batch, and the batch report.

A song is a folder holding a vocal stem ``vocals.*`` plus any number of accompaniment stems (every other
audio file), or a single vocal file. For each song, ``<paths.output>/<song>/`` receives the converted
vocal (``vocals.<format>``, mono), the remix (``mix.<format>``) and ``report.json``, written into a temporary
folder beside it that then replaces the song's folder; the batch rewrites ``<paths.output>/batch_report.json``
after each song. Outputs have the source vocal's sample rate and exact length. A rerun skips the songs whose
folder holds a complete conversion with the same sources, singer(s) and settings (``overwrite=true`` redoes
them).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_singer.atomic import atomic_folder, atomic_write_json, remove_stale_temporaries
from ai_singer.audio import AUDIO_SUFFIXES, audio_info, load_audio, to_mono, write_audio
from ai_singer.convert import Converter, InferError, VocalConversion, resolve_base_dir, singer_dir
from ai_singer.errors import OutOfSpace, UserError, is_out_of_space
from ai_singer.file_hash import sha256_file
from ai_singer.mix import match_loudness, mix_stem_files
from ai_singer.sections import Section, parse_sections
from ai_singer.singer_spec import parse_singer_spec
from ai_singer.values import as_bool, plain

if TYPE_CHECKING:
    from ai_singer.infer import ConvertSettings

log = logging.getLogger(__name__)

#: Stem name of the vocal in a song folder (``vocals.wav``, ``vocals.flac``, ...).
VOCAL_STEM = "vocals"
#: Names of a song folder's own sections file (used when ``sections`` is not set).
SONG_SECTIONS_FILES = ("sections.txt",)
#: The converted vocal stem should end within this many dB of the source's level; a report warns if not.
LOUDNESS_TOLERANCE_DB = 1.0


# --------------------------------------------------------------------------------------------------
# Songs on disk
# --------------------------------------------------------------------------------------------------

@dataclass
class Song:
    """One song to convert: its vocal, its accompaniment stems and (optionally) a sections file."""

    name: str
    vocal: Path | None
    accompaniment: list[Path] = field(default_factory=list)
    sections: Path | None = None
    folder: Path | None = None
    problem: str | None = None  # why the song cannot be converted (reported, not raised, in a batch)


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                  and not p.name.startswith("."))


def read_song_folder(folder: Path) -> Song:
    """A song folder: ``vocals.*`` is the vocal, every other audio file an accompaniment stem."""
    files = _audio_files(folder)
    vocals = [p for p in files if p.stem.lower() == VOCAL_STEM]
    sections = next((folder / name for name in SONG_SECTIONS_FILES if (folder / name).is_file()), None)
    song = Song(name=folder.name, vocal=None, folder=folder, sections=sections,
                accompaniment=[p for p in files if p.stem.lower() != VOCAL_STEM])
    if not vocals:
        song.problem = (f"no vocal stem: expected a file named {VOCAL_STEM}.* "
                        f"({', '.join(s.lstrip('.') for s in AUDIO_SUFFIXES)}) in {folder}; "
                        f"found {[p.name for p in files] or 'no audio files'}")
    elif len(vocals) > 1:
        song.problem = f"several vocal stems {[p.name for p in vocals]} in {folder}: keep exactly one"
    else:
        song.vocal = vocals[0]
    return song


def find_songs(path: str | os.PathLike) -> list[Song]:
    """Songs under ``path``: a single audio file (a vocal alone), a song folder (it holds ``vocals.*``), or
    a folder of songs (every sub-folder is a song folder; loose audio files are vocals alone).

    Raises InferError when ``path`` does not exist or holds no songs.
    """
    root = Path(path)
    if not root.exists():
        raise InferError(root, "songs path does not exist")
    if root.is_file():
        if root.suffix.lower() not in AUDIO_SUFFIXES:
            raise InferError(root, f"not an audio file (expected one of {', '.join(AUDIO_SUFFIXES)})")
        return [Song(name=root.stem, vocal=root)]
    if any(p.stem.lower() == VOCAL_STEM for p in _audio_files(root)):
        return [read_song_folder(root)]
    songs = [read_song_folder(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    songs += [Song(name=p.stem, vocal=p) for p in _audio_files(root)]
    if not songs:
        raise InferError(root, "no songs found: give a song folder (with vocals.*), a folder of song folders, "
                               "or an audio file")
    names = [song.name for song in songs]
    for song in songs:
        if names.count(song.name) > 1:
            song.problem = song.problem or f"two songs are named {song.name!r} (a folder and a file?); rename one"
    return songs


# --------------------------------------------------------------------------------------------------
# Songs and batches
# --------------------------------------------------------------------------------------------------

@dataclass
class SongResult:
    """How one song went: ``status`` ``ok``, ``skipped`` (already converted with the same singer and settings)
    or ``failed`` (with ``reason``), output files, report."""

    song: str
    status: str
    reason: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchResult:
    songs: list[SongResult]
    report_path: Path | None = None

    @property
    def failed(self) -> list[SongResult]:
        return [song for song in self.songs if song.status not in ("ok", "skipped")]

    @property
    def skipped(self) -> list[SongResult]:
        return [song for song in self.songs if song.status == "skipped"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        done = len(self.songs) - len(self.failed) - len(self.skipped)
        lines = [f"converted {done} of {len(self.songs)} song(s)"
                 + (f", {len(self.skipped)} already done (skipped; overwrite=true redoes them)" if self.skipped else "")]
        for song in self.songs:
            if song.status == "ok":
                lines.append(f"  ok      {song.song}: {song.outputs.get('mix', '')}")
            elif song.status == "skipped":
                lines.append(f"  skipped {song.song}: {song.outputs.get('mix', '')}")
            else:
                lines.append(f"  FAILED  {song.song}: {song.reason}")
        if self.report_path:
            lines.append(f"batch report: {self.report_path}")
        return "\n".join(lines)


def _settings_report(settings: ConvertSettings) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(settings), default=str))


def convert_song(converter: Converter, song: Song, output_dir: Path, singer: str | None,
                 sections_path: str | os.PathLike | None = None, chunk_progress: Any = None,
                 resume_key: str | None = None, extra_warnings: list[str] | None = None) -> SongResult:
    """Convert one song into ``output_dir/<song>/`` (vocal stem, mix, report.json). The three are written
    into a temporary folder beside it that then replaces the song's folder: a song folder always holds a
    complete conversion (the old one or the new one), never a mix of both. ``resume_key`` is recorded in
    report.json (see :func:`song_resume_key`). Raises on bad input (InferError, AudioError, SectionsError);
    :func:`run_batch` turns that into a failed entry."""
    settings = converter.settings
    if song.problem:
        raise InferError(f"song {song.name!r}", song.problem)
    started = time.perf_counter()
    info = audio_info(song.vocal)
    for stem in song.accompaniment:
        audio_info(stem)  # unreadable stems fail before the long part
    sections_file = Path(sections_path) if sections_path else song.sections
    sections = parse_sections(sections_file) if sections_file else None
    source, sr = load_audio(song.vocal)
    mono = to_mono(source)
    del source
    n_samples = int(mono.shape[0])
    load_s = time.perf_counter() - started

    def on_stage(stage: str, total: int) -> None:  # "F0" (extraction, piece by piece), then "convert" (model)
        if chunk_progress is not None:
            chunk_progress.reset(total=total)
            chunk_progress.set_description(f"{song.name} {stage}")

    conversion = converter.convert_vocal(mono, sr, singer, sections, on_stage=on_stage,
                                         progress=chunk_progress.update if chunk_progress is not None else None)
    warnings = list(extra_warnings or []) + list(conversion.warnings)

    started = time.perf_counter()
    mix = settings.mix
    vocal = conversion.audio
    loudness = {"vocal_loudness_match_db": 0.0}
    if mix.match_loudness:  # to the source's level; the limiter takes the peaks that would exceed its ceiling
        vocal, matched = match_loudness(vocal, mono, sr, mix.limiter)
        loudness = {"vocal_loudness_match_db": matched.gain_db,
                    "vocal_limiter_reduction_db": matched.limiter_reduction_db,
                    "vocal_level_vs_source_db": matched.level_difference_db}
        if matched.level_difference_db is not None and abs(matched.level_difference_db) > LOUDNESS_TOLERANCE_DB:
            why = ("mix.limiter is off, so the gain stopped where the stem's peak reaches 0 dBFS"
                   if not mix.limiter.enabled else "even with its peaks limited to mix.limiter.ceiling_db")
            warnings.append(f"the converted vocal stem is {matched.level_difference_db:+.1f} dB from the source "
                            f"vocal's level ({why}); loudness match applied {matched.gain_db:+.1f} dB")
    song_dir = output_dir / song.name
    vocal_path = song_dir / f"vocals.{mix.format}"
    mix_path = song_dir / f"mix.{mix.format}"
    with atomic_folder(song_dir) as writing:
        write_audio(writing / vocal_path.name, vocal, sr, subtype=mix.subtype)
        del mono  # only the vocal and one block of a stem at a time while mixing
        mixed = mix_stem_files(vocal, sr, song.accompaniment, mix)
        write_audio(writing / mix_path.name, mixed.audio if mixed.audio.shape[0] > 1 else mixed.audio[0], sr,
                    subtype=mix.subtype)
        warnings += mixed.warnings
        mix_s = time.perf_counter() - started
        report = _song_report(converter, song, singer, info, sr, n_samples, conversion, sections, sections_file,
                              loudness, mixed, vocal_path, mix_path, vocal, load_s, mix_s, warnings, resume_key)
        atomic_write_json(writing / "report.json", report)
    return SongResult(song=song.name, status="ok", outputs={"vocals": str(vocal_path), "mix": str(mix_path),
                                                             "report": str(song_dir / "report.json")},
                      report=report)


def _song_report(converter: Converter, song: Song, singer: str | None, info: Any, sr: int, n_samples: int,
                 conversion: VocalConversion, sections: list[Section] | None, sections_file: Path | None,
                 loudness: dict[str, Any], mixed: Any, vocal_path: Path, mix_path: Path, vocal: np.ndarray,
                 load_s: float, mix_s: float, warnings: list[str], resume_key: str | None) -> dict[str, Any]:
    """The song's report.json."""
    settings = converter.settings

    timings = {"load_s": load_s, **conversion.timings, "mix_write_s": mix_s}
    timings["total_s"] = load_s + conversion.timings["total_s"] + mix_s
    report = {
        "song": song.name,
        "source": {"vocal": str(song.vocal), "accompaniment": [str(p) for p in song.accompaniment],
                   "sample_rate": sr, "channels": info.channels, "samples": n_samples,
                   "seconds": n_samples / sr, "f0_median_hz": conversion.source_f0_median_hz},
        "base": {"path": str(converter.base_dir), "sha256": getattr(converter.base, "sha256", None)},
        "singer": singer,
        "sections": ([{"start_s": s.start_s, "end_s": None if math.isinf(s.end_s) else s.end_s, "singer": s.singer}
                      for s in sections] if sections else None),
        "sections_file": str(sections_file) if sections_file else None,
        "transpose_semitones": conversion.transpose,
        "transpose_auto": conversion.transpose_decisions or None,
        "pieces": conversion.pieces,
        "settings": _settings_report(settings),
        "device": str(converter.device),
        "adapters": "merged" if converter.merge else "unmerged",
        "engines": conversion.engines,
        "refine": conversion.refine,
        "mix": {**loudness, "vocal_gain_db": mixed.vocal_gain_db,
                "stem_gains_db": mixed.stem_gains_db, "limiter_reduction_db": mixed.limiter_reduction_db,
                "channels": int(mixed.audio.shape[0])},
        "outputs": {"vocals": str(vocal_path), "mix": str(mix_path), "sample_rate": sr,
                    "samples": int(vocal.shape[0])},
        "timings": timings,
        "real_time_factor": timings["total_s"] / max(n_samples / sr, 1e-9),
        "warnings": warnings,
        "resume_key": resume_key,
    }
    return report


def song_resume_key(song: Song, settings: ConvertSettings, singer: str | None, sections_file: Path | None,
                    singers_dir: str | os.PathLike, base: str | None, adapter_digests: dict[str, str],
                    content: Any = None) -> str | None:
    """A hash of what shapes the song's outputs: its source files (path, size, modification time), the
    conversion settings, the default singer, the sections file's bytes, the ``base`` and ``content`` settings
    and the bytes of every adapter involved (``adapter_digests`` caches them by singer). None when it cannot
    be known (a song with a problem, an unknown singer): such a song is never skipped."""
    import hashlib

    if song.problem or song.vocal is None:
        return None
    try:
        singers = {singer} if singer else set()
        sections_bytes = b""
        if sections_file is not None:
            sections_bytes = Path(sections_file).read_bytes()
            singers |= {section.singer for section in parse_sections(sections_file)}
        singers = {name for spec in singers for name in parse_singer_spec(spec).names}  # a blend's parents
        for name in sorted(singers):
            if name not in adapter_digests:
                folder = singer_dir(name, singers_dir)
                adapter_digests[name] = hashlib.sha256("".join(
                    sha256_file(folder / file) for file in ("adapter.yaml", "adapter.safetensors",
                                                             "retrieval.safetensors") if (folder / file).is_file()
                ).encode()).hexdigest()
        sources = []
        for path in [song.vocal, *song.accompaniment]:
            stat = Path(path).stat()
            sources.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    except (OSError, UserError):
        return None
    record = {"sources": sources, "settings": _settings_report(settings), "singer": singer, "base": base,
              "content": plain(content) if content is not None else None,
              "sections": hashlib.sha256(sections_bytes).hexdigest() if sections_file else None,
              "adapters": {name: adapter_digests[name] for name in sorted(singers)}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def finished_song(song_dir: Path, resume_key: str | None) -> dict[str, str] | None:
    """The outputs of a complete conversion in ``song_dir`` made with ``resume_key``, else None."""
    if resume_key is None:
        return None
    try:
        report = json.loads((song_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("resume_key") != resume_key:
        return None
    outputs = report.get("outputs") or {}
    names = [Path(str(outputs.get(key, ""))).name for key in ("vocals", "mix")]
    if not all(names) or not all((song_dir / name).is_file() for name in names):
        return None
    return {"vocals": str(song_dir / names[0]), "mix": str(song_dir / names[1]), "report": str(song_dir / "report.json")}


def _song_bytes(song: Song, settings: ConvertSettings) -> float | None:
    """Roughly what one song's outputs take: the vocal stem and a stereo mix at the source's rate."""
    try:
        info = audio_info(song.vocal)
    except Exception:  # noqa: BLE001 - only an estimate
        return None
    width = {"PCM_16": 2, "PCM_24": 3}.get(settings.mix.subtype, 4)
    return info.frames * width * 3.0


def write_batch_report(path: Path, results: list[SongResult], total: int) -> None:
    """``batch_report.json`` (atomically): every song handled so far and a summary; ``total`` songs in the batch."""
    atomic_write_json(path, {
        "songs": [{"song": r.song, "status": r.status, "reason": r.reason, "outputs": r.outputs} for r in results],
        "summary": {"total": len(results), "ok": sum(r.status == "ok" for r in results),
                    "failed": sum(r.status not in ("ok", "skipped") for r in results),
                    "skipped": sum(r.status == "skipped" for r in results),
                    "remaining": total - len(results)},
    })


def sections_warnings(sections: list[Section], song_seconds: float) -> list[str]:
    """Sections that cannot take effect: those starting at or after the end of the song."""
    return [f"sections: {s.start_s:g}-{'end' if math.isinf(s.end_s) else f'{s.end_s:g}'} s ({s.singer}) starts after "
            f"the song's end ({song_seconds:.2f} s) and is unused" for s in sections if s.start_s >= song_seconds]


def run_batch(cfg: Any, converter: Converter | None = None) -> BatchResult:
    """Convert every song of ``cfg.songs`` (a composed ``conf/infer.yaml``). A song that fails is recorded
    with its reason and the batch goes on; ``batch_report.json`` is rewritten after each song. A song whose
    output folder holds a complete conversion with the same sources, singer(s) and settings is skipped unless
    ``overwrite=true`` (so an interrupted batch resumes where it stopped), and the leftovers of a killed run
    are removed first. The base is loaded only when a song needs converting. Raises InferError for problems
    that stop everything (no songs, unknown singer, missing base, content encoder mismatch)."""
    from tqdm.auto import tqdm

    from ai_singer.infer import check_batch  # the settings live with the entry point, which imports this module

    settings, songs, song_warnings = check_batch(cfg)
    singer = cfg.get("singer") or None
    paths = cfg.paths

    def load_converter() -> Converter:
        base_name = None
        if singer is not None:
            from ai_singer import checkpoint

            try:
                first = parse_singer_spec(str(singer)).names[0]  # a blend's parents share one base
                base_name = checkpoint.load_adapter(singer_dir(first, paths.singers)).config.get("base_name")
            except checkpoint.ArtifactError as error:
                raise InferError(f"singer {singer!r}", f"cannot load the adapter: {error}") from error
        base_dir = resolve_base_dir(cfg.get("base"), base_name, paths.pretrain)
        content = cfg.get("content")
        return Converter(base_dir, None if content is None else plain(content), settings, paths.singers,
                         device=str(cfg.device))

    output_dir = Path(str(paths.output))
    for leftover in remove_stale_temporaries(output_dir) + [
            path for song in songs for path in remove_stale_temporaries(output_dir / song.name)]:
        log.info("removed %s, left by a conversion that was killed", leftover)
    overwrite = as_bool(cfg.overwrite, "overwrite")
    progress = as_bool(cfg.progress, "progress")
    report_path = output_dir / "batch_report.json"
    adapter_digests: dict[str, str] = {}
    results: list[SongResult] = []
    with tqdm(total=len(songs), desc="songs", unit="song", disable=not progress, position=0) as song_bar, \
            tqdm(total=0, desc="chunks", unit="chunk", disable=not progress, position=1, leave=False) as chunk_bar:
        for song in songs:
            song_bar.set_postfix_str(song.name)
            sections_file = Path(str(cfg.sections)) if cfg.get("sections") else song.sections
            key = song_resume_key(song, settings, singer, sections_file, paths.singers, cfg.get("base"),
                                  adapter_digests, cfg.get("content"))
            done = None if overwrite else finished_song(output_dir / song.name, key)
            if done is not None:
                results.append(SongResult(song=song.name, status="skipped", outputs=done,
                                          reason="already converted with this singer and these settings"))
            else:
                if converter is None:
                    converter = load_converter()
                try:
                    results.append(convert_song(converter, song, output_dir, singer, cfg.get("sections"), chunk_bar,
                                                resume_key=key, extra_warnings=song_warnings.get(song.name, [])))
                except Exception as error:
                    if is_out_of_space(error, output_dir):  # the disk, not the song: stop (finished songs are kept)
                        with contextlib.suppress(OSError):
                            write_batch_report(report_path, results, len(songs))
                        per_song = _song_bytes(song, settings)
                        raise OutOfSpace(output_dir, needed_bytes=per_song and per_song * (len(songs) - len(results))
                                         ) from None
                    if isinstance(error, (UserError, ValueError)):  # bad input of this song
                        reason = str(error)
                    else:  # an unexpected failure of one song must not stop the batch
                        log.debug("song %s failed", song.name, exc_info=True)
                        reason = (f"{type(error).__name__}: {error} "
                                  f"({traceback.extract_tb(error.__traceback__)[-1].name})")
                    results.append(SongResult(song=song.name, status="failed", reason=reason))
            write_batch_report(report_path, results, len(songs))
            song_bar.update(1)
    return BatchResult(songs=results, report_path=report_path)
