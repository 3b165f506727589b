"""The preprocess stage: raw recordings -> sliced, normalised clips + feature files + manifest.

    python -m ai_singer.preprocess paths.raw=data/raw paths.processed=data/processed

Input: ``<raw>/<singer>/**/*.wav|flac|ogg|mp3`` (any rate, channels, depth). For every source file:
slice on silence (streaming), and for each clip read only its range, downmix, resample to the model rate,
loudness-normalise, trim to ``n_frames * hop``, then F0 (+ voiced mask, gaps interpolated), content
features (16 kHz encoder aligned to the model frames) and frame volume; write the clip wav and its
safetensors feature file atomically (formats in ``docs/architecture.md``; one source's work is
:mod:`ai_singer.preprocess_source`). With ``num_workers > 1`` each
source goes whole to a worker, except sources longer than ``split_seconds``: they are sliced in the main
process and their clips shared among the workers in pieces (the result is the same); each finished piece is
recorded (:mod:`ai_singer.preprocess_pieces`), so a killed run resumes inside a long file.

Resumable: after a source's clips are written, a record ``<processed>/.sources/<key>.json`` stores the
source's fingerprint, the settings hash and its clips. A re-run skips sources whose record still matches,
redoes changed ones (removing their old clips), forgets deleted ones, and rebuilds ``manifest.jsonl``,
``stats.json``, ``report.json`` and the pitch-range plots from the records. Killing the run at any point
loses at most the sources in flight and corrupts nothing (every file is written atomically; clips
without a record are swept at the end of the next complete run).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import re
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ai_singer.atomic import atomic_write_json, file_lock
from ai_singer.audio import AUDIO_SUFFIXES, AudioError, audio_info
from ai_singer.errors import OutOfSpace, is_out_of_space
from ai_singer.manifest import (MANIFEST_NAME, STATS_NAME, DatasetStats, ManifestEntry, assign_splits,
                                singer_stats, write_manifest, write_stats)
from ai_singer import preprocess_pieces as pieces_store
from ai_singer.preprocess_progress import StageProgress
from ai_singer.preprocess_records import (RECORDS_DIR, read_record, record_files, record_path,
                                         source_fingerprint)
from ai_singer.preprocess_settings import PreprocessError, PreprocessSettings, settings_from_config
from ai_singer.preprocess_source import (ClipRejected, SourceJob, SplitSource, error_outcome, new_record,
                                         process_ranges, process_source, reason_of, remove_quietly, seal_record,
                                         slice_source)

REPORT_NAME = "report.json"
PITCH_PLOT_NAME = "pitch_range.png"
#: What our clip files look like (``<stem>-<6 hex>-<3+ digits>``); only such files are ever swept.
_CLIP_FILE = re.compile(r"^.+-[0-9a-f]{6}-\d{3,}(\.wav|\.features\.safetensors)$")


# --------------------------------------------------------------------------------- worker processes

_WORKER_STATE: dict[str, Any] = {}


def _load_encoder(settings: PreprocessSettings):
    from ai_singer.features.content import load_content_encoder

    return load_content_encoder(settings.content.name, settings.content.path, **dict(settings.content.options))


def _exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """Make this worker end itself once the main process is gone, even killed with SIGKILL (a worker's
    parent is the fork server, so the kernel's parent-death signal cannot see the main process): a daemon
    thread checks the main pid every ``every_s`` seconds. Without it, ``kill -9`` of the main process left
    the workers, the fork server and the resource tracker running for ever."""
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(every_s)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # pid reused by another user's process: ours is gone
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(settings: PreprocessSettings, threads: int, parent_pid: int, progress_queue) -> None:
    import torch

    _exit_with_parent(parent_pid)
    torch.set_num_threads(threads)
    _WORKER_STATE["progress"] = progress_queue
    _WORKER_STATE["settings"] = settings
    _WORKER_STATE["encoder"] = _load_encoder(settings)  # once per worker process


def _in_worker(job: SourceJob, work: Callable[[Callable[[float], None]], dict]) -> dict:
    """``work(on_progress)`` in a worker: progress goes to the main process; an unexpected error becomes the
    source's error outcome (the batch goes on); a full disk stops the run."""
    queue, settings = _WORKER_STATE["progress"], _WORKER_STATE["settings"]
    try:
        return work(lambda seconds: queue.put((job.source, seconds)))
    except Exception as error:  # noqa: BLE001 - reported per source, the batch goes on
        if is_out_of_space(error, settings.processed):  # the disk, not the file: stops the run
            raise OutOfSpace(settings.processed) from None
        return error_outcome(job, error)


def _run_job(job: SourceJob) -> dict:
    """A whole source, in a worker."""
    return _in_worker(job, lambda on_progress: process_source(job, _WORKER_STATE["settings"],
                                                              _WORKER_STATE["encoder"], on_progress))


def _run_piece(job: SourceJob, sample_rate: int, piece: list[tuple[int, tuple[int, int]]]) -> dict:
    """A piece of a :class:`SplitSource`, in a worker: ``{status, reason, clips, rejected_clips, worker}``."""
    from ai_singer.features.content import describe_encoder

    def work(on_progress: Callable[[float], None]) -> dict:
        settings, encoder = _WORKER_STATE["settings"], _WORKER_STATE["encoder"]
        outcome = {"status": "ok", "reason": None, "clips": [], "rejected_clips": [], "worker": os.getpid()}
        try:
            outcome["clips"], outcome["rejected_clips"] = process_ranges(
                job, settings, encoder, describe_encoder(encoder), sample_rate, piece, on_progress)
        except AudioError as error:  # writing a clip: as in process_source, the source is rejected
            outcome.update(status="rejected", reason=reason_of(error))
        return outcome

    return _in_worker(job, work)


def _bytes_per_second(settings: PreprocessSettings, encoder: Any) -> float:
    """What one second of source audio becomes on disk, roughly: the PCM_16 clip and its feature file
    (content features as float32; 768 dimensions when the encoder is not at hand)."""
    frames = settings.framing.sample_rate / settings.framing.hop_length
    dim = int(getattr(encoder, "dim", 0) or 768)
    return settings.framing.sample_rate * 2 + frames * (dim * 4 + 13)


def _out_of_space(settings: PreprocessSettings, encoder: Any, progress: StageProgress) -> OutOfSpace:
    remaining = max(0.0, progress.total - progress.done)
    return OutOfSpace(settings.processed, needed_bytes=1.1 * remaining * _bytes_per_second(settings, encoder))


# ------------------------------------------------------------------------------------------ the run

@dataclass
class PreprocessResult:
    """What a run did. Source lists hold paths relative to ``paths.raw``."""

    processed_dir: Path
    processed_sources: list[str] = field(default_factory=list)   # (re)processed in this run
    unchanged_sources: list[str] = field(default_factory=list)   # skipped: record still valid
    removed_sources: list[str] = field(default_factory=list)     # deleted from raw since the last run
    rejected_sources: dict[str, str] = field(default_factory=dict)  # source -> reason (all runs)
    failed_sources: dict[str, str] = field(default_factory=dict)    # unexpected errors (retried next run)
    rejected_clips: int = 0
    clips_per_singer: dict[str, int] = field(default_factory=dict)
    singers_without_clips: list[str] = field(default_factory=list)  # singer folders that gave nothing
    seconds_per_singer: dict[str, float] = field(default_factory=dict)
    stats: DatasetStats | None = None
    split_counts: dict[str, int] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    ignored_files: dict[str, int] = field(default_factory=dict)  # suffix -> files that are not audio by name
    #: long sources shared among the workers in this run: source -> {"pieces": n, "workers": k}
    split_sources: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def n_clips(self) -> int:
        return sum(self.clips_per_singer.values())

    @property
    def ok(self) -> bool:
        """True when the run produced at least one usable clip."""
        return self.n_clips > 0

    @property
    def manifest_path(self) -> Path:
        return self.processed_dir / MANIFEST_NAME

    @property
    def stats_path(self) -> Path:
        return self.processed_dir / STATS_NAME

    @property
    def report_path(self) -> Path:
        return self.processed_dir / REPORT_NAME

    def summary(self) -> str:
        """A short human-readable summary of the dataset and of what went wrong."""
        from ai_singer.pitch_plot import midi_note_name
        from ai_singer.features.pitch import hz_to_midi

        def note(hz: float) -> str:
            return midi_note_name(float(hz_to_midi(hz)))

        n_sources = len(self.processed_sources) + len(self.unchanged_sources)
        lines = [f"preprocess: {n_sources} source file(s): {len(self.processed_sources)} processed, "
                 f"{len(self.unchanged_sources)} unchanged (skipped), {len(self.removed_sources)} removed"]
        for singer in sorted(self.clips_per_singer):
            text = (f"  {singer}: {self.clips_per_singer[singer]} clips, "
                    f"{self.seconds_per_singer[singer] / 60.0:.1f} min")
            stats = self.stats.singers.get(singer) if self.stats else None
            if stats:
                text += (f", F0 median {stats.f0_median_hz:.0f} Hz ({note(stats.f0_median_hz)}), range "
                         f"{note(stats.f0_p05_hz)}–{note(stats.f0_p95_hz)} (p05–p95), "
                         f"{stats.f0_min_hz:.0f}–{stats.f0_max_hz:.0f} Hz (min–max)")
            lines.append(text)
        for singer in self.singers_without_clips:
            lines.append(f"  {singer}: no usable clips (no audio files, or every file rejected)")
        if self.rejected_sources or self.failed_sources:
            lines.append(f"  rejected {len(self.rejected_sources) + len(self.failed_sources)} file(s):")
            for source, reason in sorted({**self.rejected_sources, **self.failed_sources}.items()):
                lines.append(f"    {source}: {reason}")
        if self.split_sources:
            pieces = sum(split["pieces"] for split in self.split_sources.values())
            resumed = sum(split.get("resumed", 0) for split in self.split_sources.values())
            lines.append(f"  {len(self.split_sources)} long file(s) (> split_seconds) shared among the workers "
                         f"in {pieces} pieces" + (f" ({resumed} kept from an interrupted run)" if resumed else ""))
        if self.rejected_clips:
            lines.append(f"  rejected {self.rejected_clips} clip(s) inside usable files (see {REPORT_NAME})")
        if self.ignored_files:
            listing = ", ".join(f"{suffix} x{count}" for suffix, count in self.ignored_files.items())
            lines.append(f"  ignored {sum(self.ignored_files.values())} file(s) that are not audio by name ({listing}); "
                         f"audio is {' '.join(AUDIO_SUFFIXES)} (convert other formats, e.g. .m4a, to WAV or FLAC)")
        if self.ok:
            lines.append(f"  wrote {self.manifest_path} ({self.split_counts.get('train', 0)} train / "
                         f"{self.split_counts.get('val', 0)} val clips), {STATS_NAME}, {REPORT_NAME}, "
                         f"{len(self.plots)} pitch-range plot(s)")
        else:
            lines.append(f"  no usable clips: nothing to train on (see {self.report_path})")
        return "\n".join(lines)


def find_sources(raw: Path) -> tuple[dict[str, list[tuple[str, Path]]], dict[str, dict[str, int]]]:
    """One walk of ``<raw>/<singer>/`` (recursively; hidden files and folders left out):
    ``{singer: [(source relative to raw, absolute path), ...]}`` for every audio file, and
    ``{singer: {suffix: count}}`` of the files that are not audio by name, reported so that recordings in
    an unsupported format (.m4a, .aac, ...) are not silently missing from the dataset."""
    if not raw.is_dir():
        raise PreprocessError(f"paths.raw={raw}: folder not found. Put one folder per singer there "
                              f"(<raw>/<singer>/*.wav|flac|ogg|mp3).")
    singers = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not singers:
        raise PreprocessError(f"paths.raw={raw}: no singer folders. Put one folder per singer there "
                              f"(<raw>/<singer>/*.wav|flac|ogg|mp3).")
    found: dict[str, list[tuple[str, Path]]] = {}
    ignored: dict[str, dict[str, int]] = {}
    for singer_dir in singers:
        files, other = [], {}
        for path in sorted(singer_dir.rglob("*")):
            relative = path.relative_to(raw)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if path.suffix.lower() in AUDIO_SUFFIXES:
                files.append((relative.as_posix(), path))
            else:
                suffix = path.suffix.lower() or "(no suffix)"
                other[suffix] = other.get(suffix, 0) + 1
        found[singer_dir.name], ignored[singer_dir.name] = files, other
    return found, ignored


def count_ignored(ignored: dict[str, dict[str, int]], singers: Iterable[str]) -> dict[str, int]:
    """``{suffix: count}`` over ``singers`` of :func:`find_sources`'s files that are not audio by name."""
    counts: dict[str, int] = {}
    for singer in singers:
        for suffix, count in ignored.get(singer, {}).items():
            counts[suffix] = counts.get(suffix, 0) + count
    return dict(sorted(counts.items()))


def select_singers(sources: dict[str, list[tuple[str, Path]]],
                   settings: PreprocessSettings) -> dict[str, list[tuple[str, Path]]]:
    """Keep the singer folders named in ``settings.singers`` (all when ``None``) minus ``exclude_singers``.

    A name in ``singers`` that is not a singer folder of ``paths.raw`` is a PreprocessError listing the
    folders there; names in ``exclude_singers`` that match no folder are ignored. Singers left out are
    treated like folders deleted from raw: their clips leave the processed dataset."""
    available = sorted(sources)
    if settings.singers is not None:
        unknown = [name for name in settings.singers if name not in sources]
        if unknown:
            raise PreprocessError(f"singers={list(settings.singers)}: no singer folder named "
                                  f"{', '.join(repr(name) for name in unknown)} in paths.raw={settings.raw}; "
                                  f"available singer folders: {', '.join(available)}")
    wanted = set(available if settings.singers is None else settings.singers) - set(settings.exclude_singers)
    selected = {name: files for name, files in sources.items() if name in wanted}
    if not selected:
        raise PreprocessError(f"paths.raw={settings.raw}: singers={None if settings.singers is None else list(settings.singers)} "
                              f"and exclude_singers={list(settings.exclude_singers)} leave no singer folder; "
                              f"available singer folders: {', '.join(available)}")
    return selected


def _check_folders(settings: PreprocessSettings) -> None:
    raw, processed = settings.raw.resolve(), settings.processed.resolve()
    if raw == processed or raw in processed.parents or processed in raw.parents:
        raise PreprocessError(f"paths.processed={settings.processed} must be outside paths.raw={settings.raw} "
                              f"(and the other way round)")


def _plan(settings: PreprocessSettings, sources: dict[str, list[tuple[str, Path]]],
          result: PreprocessResult) -> tuple[list[SourceJob], dict[str, dict]]:
    """Decide which sources to (re)do; remove what belongs to deleted sources. Returns the jobs and the
    records that are still valid."""
    processed = settings.processed
    settings_hash = settings.output_hash()
    records: dict[str, dict] = {}
    records_dir = processed / RECORDS_DIR
    if records_dir.is_dir():
        for path in sorted(records_dir.glob("*.json")):
            record = read_record(path)
            if record is None or path != record_path(processed, record["source"]):
                remove_quietly(path)
                continue
            records[record["source"]] = record
    current = {source: (singer, path) for singer, files in sources.items() for source, path in files}
    for source in sorted(set(records) - set(current)):  # deleted from raw: forget it and its clips
        for name in record_files(records.pop(source)):
            remove_quietly(processed / name)
        remove_quietly(record_path(processed, source))
        result.removed_sources.append(source)
    for folder, source in pieces_store.piece_folders(records_dir):
        if source not in current:  # pieces of a deleted source: its clips are swept at the end
            pieces_store.remove_pieces(folder.with_suffix(".json"))
    jobs, valid = [], {}
    for source, (singer, path) in sorted(current.items()):
        fingerprint = source_fingerprint(path)
        record = records.get(source)
        if (record is not None and record.get("fingerprint") == fingerprint
                and record.get("settings_hash") == settings_hash and record.get("singer") == singer
                and record.get("status") in ("ok", "rejected")
                and all((processed / name).is_file() for name in record_files(record))):
            valid[source] = record
            result.unchanged_sources.append(source)
            continue
        old_files = tuple(record_files(record)) if record else ()
        jobs.append(SourceJob(singer=singer, source=source, path=path, fingerprint=fingerprint,
                              seconds=_seconds_of(path), old_files=old_files))
    jobs.sort(key=lambda job: -job.fingerprint["size"])  # largest first: better balance across workers
    return jobs, valid


#: Imported once by the fork server, so that each worker starts without importing torch/transformers.
_WORKER_PRELOAD = ["ai_singer.audio", "ai_singer.features.content", "ai_singer.features.pitch",
                   "ai_singer.features.volume", "transformers.models.hubert.modeling_hubert"]


def _worker_context():
    """Worker processes never ``fork`` this process (it may hold torch/OpenMP threads): they come from a
    fresh fork server that has imported the heavy modules once (``spawn`` where there is none)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_WORKER_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _seconds_of(path: Path) -> float:
    try:
        return audio_info(path).seconds
    except AudioError:
        return 0.0


def _is_long(job: SourceJob, settings: PreprocessSettings) -> bool:
    return job.seconds > settings.split_seconds


def _uses_workers(jobs: list[SourceJob], settings: PreprocessSettings) -> bool:
    """Whether ``jobs`` run in worker processes: ``num_workers > 1`` and more than one source, or one long
    enough to be shared among the workers."""
    return settings.num_workers > 1 and (len(jobs) > 1 or any(_is_long(job, settings) for job in jobs))


def _run_jobs(jobs: list[SourceJob], settings: PreprocessSettings, encoder, encoder_info: Mapping[str, Any],
              result: PreprocessResult) -> list[dict]:
    """Run ``jobs`` in this process or (:func:`_uses_workers`) in a pool of worker processes; return the
    sources' outcomes (their records, or errors)."""
    progress = StageProgress(jobs, settings.progress)
    try:
        if _uses_workers(jobs, settings):
            return _run_in_workers(jobs, settings, encoder, encoder_info, progress, result)
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(process_source(job, settings, encoder,
                                               on_progress=lambda seconds, s=job.source: progress.advance(s, seconds)))
            except Exception as error:  # noqa: BLE001 - reported per source, the batch goes on
                if is_out_of_space(error, settings.processed):  # the disk, not the file: stop, keep the rest
                    raise _out_of_space(settings, encoder, progress) from None
                outcomes.append(error_outcome(job, error))
            progress.finish_file(job.source)
        return outcomes
    finally:
        progress.close()


def _run_in_workers(jobs: list[SourceJob], settings: PreprocessSettings, encoder, encoder_info: Mapping[str, Any],
                    progress: StageProgress, result: PreprocessResult) -> list[dict]:
    """Short sources go whole to a worker. A source longer than ``split_seconds`` is sliced here (a cheap
    streaming pass) when the workers run out of queued work, and its pieces (about ``split_seconds`` of audio
    each, at least one per worker) are shared among the workers; its record is written here when every piece
    is back. At most two tasks per worker are queued, so the pieces do not wait behind the other sources."""
    workers = settings.num_workers if any(_is_long(job, settings) for job in jobs) else min(settings.num_workers,
                                                                                           len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = _worker_context()
    queue = context.SimpleQueue()
    todo: deque = deque(job for job in jobs if not _is_long(job, settings))  # SourceJob | (SplitSource, piece)
    unsliced = deque(job for job in jobs if _is_long(job, settings))
    pending: dict[concurrent.futures.Future, Any] = {}
    outcomes: list[dict] = []

    def done(source: str, outcome: dict) -> None:
        outcomes.append(outcome)
        progress.finish_file(source)

    def here(job: SourceJob, work: Callable[[], dict]) -> dict:
        """Work on a source in this process: an unexpected error is the source's, a full disk stops the run."""
        try:
            return work()
        except Exception as error:  # noqa: BLE001 - reported per source, the batch goes on
            if is_out_of_space(error, settings.processed):
                raise _out_of_space(settings, encoder, progress) from None
            return error_outcome(job, error)

    def split(job: SourceJob) -> None:
        def start() -> dict:
            record = new_record(job, settings, encoder_info)
            try:
                sample_rate, ranges = slice_source(job, settings)
            except (ClipRejected, AudioError) as error:
                return seal_record(record, settings, error=error)
            done = pieces_store.load_pieces(record_path(settings.processed, job.source), record, ranges,
                                            settings.processed)  # finished by a run that was killed
            done_seconds = sum((stop - start) / sample_rate for entry in done.values()
                               for _, start, stop in entry["ranges"])
            progress.advance(job.source, done_seconds)
            parts = SplitSource(job, record, sample_rate, ranges,
                                min(settings.split_seconds, max(job.seconds - done_seconds, 0.0) / workers), done)
            if not parts.pieces:  # every piece was done: only the record was missing
                result.split_sources[job.source] = {"pieces": parts.resumed, "workers": 0, "resumed": parts.resumed}
                return parts.seal(settings)
            todo.extend((parts, piece) for piece in parts.pieces)
            return {"status": "split"}

        outcome = here(job, start)
        if outcome["status"] != "split":
            done(job.source, outcome)

    def keep(parts: SplitSource, piece: list, value: dict) -> dict:
        pieces_store.save_piece(record_path(settings.processed, parts.job.source), parts.record, piece, value)
        return value

    def piece_back(parts: SplitSource, piece: list, value: dict) -> None:
        if value["status"] != "error":  # recorded, so that a run after a kill does not redo its clips
            value = here(parts.job, lambda: keep(parts, piece, value))
        parts.add(piece[0][0], value)
        if parts.failure is not None:  # the source is lost for this run: its queued pieces need not run
            for task in [task for task in todo if isinstance(task, tuple) and task[0] is parts]:
                todo.remove(task)
                parts.drop(task[1][0][0])
        if not parts.outstanding:
            outcome = here(parts.job, lambda: parts.seal(settings))
            result.split_sources[parts.job.source] = {"pieces": len(parts.pieces) + parts.resumed,
                                                      "workers": len(parts.workers), "resumed": parts.resumed}
            done(parts.job.source, outcome)

    def submit(pool: concurrent.futures.ProcessPoolExecutor) -> None:
        while len(pending) < 2 * workers and (todo or unsliced):
            if not todo:
                split(unsliced.popleft())
                continue
            task = todo.popleft()
            if isinstance(task, SourceJob):
                pending[pool.submit(_run_job, task)] = task
            else:
                parts, piece = task
                pending[pool.submit(_run_piece, parts.job, parts.sample_rate, piece)] = task

    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                initargs=(settings, threads, os.getpid(), queue)) as pool:
        try:
            submit(pool)
            while pending:
                finished, _ = concurrent.futures.wait(pending, timeout=0.5,
                                                      return_when=concurrent.futures.FIRST_COMPLETED)
                while not queue.empty():
                    progress.advance(*queue.get())
                for future in finished:
                    task = pending.pop(future)
                    try:
                        value = future.result()
                    except OutOfSpace:
                        raise _out_of_space(settings, encoder, progress) from None
                    except concurrent.futures.process.BrokenProcessPool as error:
                        raise RuntimeError(
                            "a preprocess worker process died (out of memory, or a crash inside a decoder); "
                            "the finished sources are kept: run again to resume, with num_workers=0 to see "
                            "which file it was") from error
                    if isinstance(task, SourceJob):
                        done(task.source, value)
                    else:
                        piece_back(task[0], task[1], value)
                submit(pool)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return outcomes


def _sweep(processed: Path, records: dict[str, dict]) -> None:
    """Remove clip files no record refers to (left by an interrupted run or a deleted singer) and
    leftover temporary files. Only files named like our clips or temporaries are ever touched."""
    referenced = {name for record in records.values() for name in record_files(record)}
    for folder, source in pieces_store.piece_folders(processed / RECORDS_DIR):
        if source is None or source in records:  # unreadable, or its record was written
            pieces_store.remove_pieces(folder.with_suffix(".json"))
    referenced |= pieces_store.kept_files(processed / RECORDS_DIR)  # pieces of a source that failed: resumed later
    singers_with_clips = {record["singer"] for record in records.values() if record.get("clips")}
    for folder in [processed, processed / RECORDS_DIR] + sorted(
            p for p in processed.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not path.is_file():
                continue
            relative = path.relative_to(processed).as_posix()
            is_tmp = path.name.startswith(".") and ".tmp" in path.name
            is_orphan = folder.parent == processed and _CLIP_FILE.match(path.name) and relative not in referenced
            stale_plot = (folder.parent == processed and path.name == PITCH_PLOT_NAME
                          and folder.name not in singers_with_clips)
            if is_tmp or is_orphan or stale_plot:
                remove_quietly(path)
        if folder.parent == processed and folder.name != RECORDS_DIR and not any(folder.iterdir()):
            folder.rmdir()


def _read_voiced_f0(features_path: Path) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(features_path), framework="numpy") as handle:
        f0, voiced = handle.get_tensor("f0"), handle.get_tensor("voiced")
    return f0[voiced.astype(bool)]


def _complete_encoder_info(settings: PreprocessSettings, info: Mapping[str, Any] | None) -> dict:
    """The encoder record for stats.json: ``info`` (from the loaded encoder or a record), its unknown keys
    filled from the settings (every valid record was made with these settings: the settings hash says so)."""
    from ai_singer.features.content import normalize_encoder_record

    info = normalize_encoder_record(info or {"name": settings.content.name, "dim": 0})
    options = settings.content.options
    fallback = {"name": settings.content.name, "dim": 0, "path": str(settings.content.path),
                "layer": None if options.get("layer") is None else int(options["layer"]),
                "final_proj": None if options.get("final_proj") is None else bool(options["final_proj"])}
    return {key: fallback[key] if value is None else value for key, value in info.items()}


def _finish(settings: PreprocessSettings, records: dict[str, dict], encoder_info: dict | None,
            result: PreprocessResult) -> None:
    """Rebuild manifest, stats, report and plots from the records (all atomically)."""
    processed = settings.processed
    clips_by_singer: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for source in sorted(records):
        record = records[source]
        if record["status"] == "rejected":
            result.rejected_sources[source] = record["reason"]
        result.rejected_clips += len(record["rejected_clips"]) if record["status"] == "ok" else 0
        for clip in record["clips"]:
            clips_by_singer[record["singer"]].append((record, clip))
        if encoder_info is None and record.get("clips"):
            encoder_info = record["content_encoder"]
    encoder_info = _complete_encoder_info(settings, encoder_info)
    splits = assign_splits({singer: [clip["audio"] for _, clip in clips] for singer, clips in clips_by_singer.items()},
                           settings.split.val_fraction, settings.split.min_val_clips, settings.split.seed)
    entries, singer_stats_by_name = [], {}
    for singer in sorted(clips_by_singer):
        clips = sorted(clips_by_singer[singer], key=lambda pair: pair[1]["audio"])
        voiced_f0 = []
        for record, clip in clips:
            entries.append(ManifestEntry(singer=singer, audio=clip["audio"], features=clip["features"],
                                         seconds=clip["seconds"], n_frames=clip["n_frames"],
                                         split=splits[clip["audio"]], source=record["source"],
                                         f0_median_hz=clip["f0_median_hz"]))
            voiced_f0.append(_read_voiced_f0(processed / clip["features"]))
        all_f0 = np.concatenate(voiced_f0)
        stats = singer_stats([clip["seconds"] for _, clip in clips], all_f0)
        singer_stats_by_name[singer] = stats
        result.clips_per_singer[singer] = len(clips)
        result.seconds_per_singer[singer] = float(sum(clip["seconds"] for _, clip in clips))
        if settings.pitch_plots:
            from ai_singer.pitch_plot import plot_pitch_range

            result.plots.append(plot_pitch_range(all_f0, singer, processed / singer / PITCH_PLOT_NAME,
                                                 stats.f0_median_hz))
    result.split_counts = {split: sum(entry.split == split for entry in entries) for split in ("train", "val")}
    result.stats = DatasetStats(sample_rate=settings.framing.sample_rate, hop_length=settings.framing.hop_length,
                                content_encoder_name=str(encoder_info["name"]),
                                content_dim=int(encoder_info["dim"]), f0_method=settings.f0.method,
                                singers=singer_stats_by_name, content_encoder_path=encoder_info["path"],
                                content_layer=encoder_info["layer"], content_final_proj=encoder_info["final_proj"])
    write_manifest(processed / MANIFEST_NAME, entries)
    write_stats(processed / STATS_NAME, result.stats)
    report = {
        "format_version": 1,
        "raw": str(settings.raw), "processed": str(processed),
        "kept": [{"source": source, "singer": record["singer"], "clips": len(record["clips"]),
                  "seconds": round(sum(clip["seconds"] for clip in record["clips"]), 3)}
                 for source, record in sorted(records.items()) if record["status"] == "ok"],
        "rejected": [{"source": source, "singer": records[source]["singer"], "reason": reason}
                     for source, reason in sorted(result.rejected_sources.items())]
        + [{"source": source, "reason": reason, "retried_next_run": True}
           for source, reason in sorted(result.failed_sources.items())],
        "rejected_clips": [{"source": source, **clip} for source, record in sorted(records.items())
                           if record["status"] == "ok" for clip in record["rejected_clips"]],
        "singers": {singer: {"clips": result.clips_per_singer[singer],
                             "seconds": round(result.seconds_per_singer[singer], 3)}
                    for singer in sorted(result.clips_per_singer)},
        "ignored_files": result.ignored_files,
        "summary": {"processed": len(result.processed_sources), "unchanged": len(result.unchanged_sources),
                    "removed": len(result.removed_sources), "clips": result.n_clips,
                    "train": result.split_counts["train"], "val": result.split_counts["val"]},
    }
    atomic_write_json(processed / REPORT_NAME, report)


def run_preprocess(cfg: Any) -> PreprocessResult:
    """Run the stage for a composed ``conf/preprocess.yaml`` (a DictConfig) or ready ``PreprocessSettings``.

    Raises PreprocessError when the input folder is missing or has no singer folders, and
    ``ContentEncoderMissing`` when the content encoder's weights are not where the config says.
    Unusable files never raise: they are listed in ``report.json`` and in ``result.rejected_sources``.
    """
    settings = cfg if isinstance(cfg, PreprocessSettings) else settings_from_config(cfg)
    found, ignored = find_sources(settings.raw)
    sources = select_singers(found, settings)
    _check_folders(settings)
    settings.processed.mkdir(parents=True, exist_ok=True)
    with _exclusive(settings.processed):
        return _run_locked(settings, sources, count_ignored(ignored, sources))


@contextlib.contextmanager
def _exclusive(processed: Path):
    """Hold an advisory lock on ``<processed>/.lock`` so two runs never write the same folder at once
    (the lock goes away with the process, so a killed run never leaves a stale lock)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(processed / ".lock", wait=False))
        except BlockingIOError as error:
            raise PreprocessError(f"paths.processed={processed}: another preprocess run is writing this "
                                  f"folder; wait for it to finish") from error
        yield


def _run_locked(settings: PreprocessSettings, sources: dict[str, list[tuple[str, Path]]],
                ignored_files: dict[str, int]) -> PreprocessResult:
    result = PreprocessResult(processed_dir=settings.processed, ignored_files=ignored_files)
    jobs, records = _plan(settings, sources, result)
    encoder_info = None
    if jobs:
        from ai_singer.features.content import describe_encoder

        encoder = _load_encoder(settings)  # ContentEncoderMissing stops the run before any work
        encoder_info = describe_encoder(encoder)
        if _uses_workers(jobs, settings):
            del encoder  # the workers load their own
            encoder = None
        outcomes = _run_jobs(jobs, settings, encoder, encoder_info, result)
        for outcome in outcomes:
            result.processed_sources.append(outcome["source"])
            if outcome["status"] == "error":
                result.failed_sources[outcome["source"]] = outcome["reason"]
            else:
                records[outcome["source"]] = outcome
        result.processed_sources.sort()
    _sweep(settings.processed, records)
    _finish(settings, records, encoder_info, result)
    result.singers_without_clips = sorted(set(sources) - set(result.clips_per_singer))
    if result.singers_without_clips:
        report = json.loads((settings.processed / REPORT_NAME).read_text(encoding="utf-8"))
        report["singers_without_clips"] = result.singers_without_clips
        atomic_write_json(settings.processed / REPORT_NAME, report)
    return result


def run_cli(cfg: Any) -> int:
    """The command's body: run, print the summary, return the exit code (0 when usable clips came out, 1 when
    none did). A user's mistake is raised (a UserError: :func:`ai_singer.conf_dir.run_hydra_app` reports it,
    exit code 2)."""
    result = run_preprocess(cfg)
    print(result.summary())
    return 0 if result.ok else 1


def main() -> None:
    """``python -m ai_singer.preprocess [overrides]`` (Hydra)."""
    from ai_singer.conf_dir import run_hydra_app

    run_hydra_app("preprocess", run_cli)


if __name__ == "__main__":
    main()
