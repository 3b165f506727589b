"""One source file of the preprocess stage: slice it on silence, make each clip (read its range, downmix,
resample, loudness-normalise, F0, content features, volume), write the clips and the source's record.

:mod:`ai_singer.preprocess` runs these over every source of a raw folder, in this process or in worker
processes; a long source is cut into pieces (:class:`SplitSource`) that several workers share. Formats of the
clip and feature files: ``docs/architecture.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ai_singer import preprocess_pieces as pieces_store
from ai_singer.atomic import atomic_path, atomic_write_json
from ai_singer.audio import (AudioError, audio_info, load_audio, normalize_loudness, resample, slice_file, to_mono,
                             write_audio)
from ai_singer.preprocess_records import clip_id, record_files, record_path
from ai_singer.preprocess_settings import PreprocessSettings

FEATURE_FORMAT_VERSION = "1"
CONTENT_SAMPLE_RATE = 16000


# ----------------------------------------------------------------------------------------- one clip

class ClipRejected(Exception):
    """A clip that cannot be used (its reason goes to report.json)."""


@dataclass
class ClipFeatures:
    """One processed clip. ``audio`` float32 [n_frames * hop] at the model rate; per-frame streams
    [n_frames]; ``content`` float16 [n_frames, D]."""

    audio: np.ndarray
    content: np.ndarray
    f0: np.ndarray
    voiced: np.ndarray
    volume: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.f0.shape[0])


def process_clip(source: Path, start: int, stop: int, settings: PreprocessSettings, encoder) -> ClipFeatures:
    """Read samples ``[start, stop)`` of ``source`` and compute the clip audio and its features.

    Raises ClipRejected (too short, silent, no voiced frame) or AudioError (undecodable range).
    """
    from ai_singer.features.content import align_to_frames, encode_audio
    from ai_singer.features.pitch import extract_f0, interpolate_unvoiced
    from ai_singer.features.volume import frame_rms

    sample_rate, hop = settings.framing.sample_rate, settings.framing.hop_length
    audio, source_rate = load_audio(source, start, stop)
    clip = resample(to_mono(audio), source_rate, sample_rate)
    del audio
    n_frames = clip.shape[0] // hop
    seconds = n_frames * hop / sample_rate
    if seconds < settings.min_clip_seconds or n_frames < 1:
        raise ClipRejected(f"too short ({seconds:.2f} s < min_clip_seconds {settings.min_clip_seconds} s)")
    clip = clip[: n_frames * hop]
    try:
        clip = normalize_loudness(clip, sample_rate, settings.loudness.target_lufs, settings.loudness.peak_dbfs,
                                  source=source)
    except AudioError as error:
        raise ClipRejected(error.reason) from error
    raw_f0 = extract_f0(clip, sample_rate, hop, n_frames, settings.f0)
    f0, voiced = interpolate_unvoiced(raw_f0)
    if not voiced.any():
        raise ClipRejected("no voiced frames (no singing pitch found)")
    voiced_fraction = float(np.mean(raw_f0 > 0))
    if voiced_fraction < settings.min_voiced_fraction:
        raise ClipRejected(f"too little voiced sound ({voiced_fraction:.0%} of frames have a pitch < "
                           f"min_voiced_fraction {settings.min_voiced_fraction:.0%}): noise, breath or "
                           f"instruments rather than singing")
    wav16k = resample(clip, sample_rate, CONTENT_SAMPLE_RATE)
    content = align_to_frames(encode_audio(encoder, wav16k), n_frames, hop, sample_rate)
    volume = frame_rms(clip, hop)
    features = ClipFeatures(audio=clip, content=np.asarray(content, dtype=np.float16),
                            f0=np.asarray(f0, dtype=np.float32), voiced=np.asarray(voiced, dtype=np.uint8),
                            volume=np.asarray(volume, dtype=np.float32))
    for name in ("content", "f0", "voiced", "volume"):
        frames = getattr(features, name).shape[0]
        if frames != n_frames:
            raise RuntimeError(f"{source} [{start}:{stop}]: {name} has {frames} frames, expected {n_frames}")
    if features.audio.shape[0] != n_frames * hop:
        raise RuntimeError(f"{source}: clip has {features.audio.shape[0]} samples, expected {n_frames * hop}")
    return features


def write_clip(audio_path: Path, features_path: Path, clip: ClipFeatures, settings: PreprocessSettings,
               encoder: str | Mapping[str, Any]) -> None:
    """Write the clip wav (PCM_16) and its safetensors feature file, each atomically.

    ``encoder``: the encoder's record ``{name, dim, path, layer, final_proj}`` (``describe_encoder``) or
    just its name; the metadata stores each known value as a string."""
    from safetensors.numpy import save_file

    write_audio(audio_path, clip.audio, settings.framing.sample_rate)
    info = {"name": encoder} if isinstance(encoder, str) else dict(encoder)
    metadata = {
        "format_version": FEATURE_FORMAT_VERSION, "sample_rate": str(settings.framing.sample_rate),
        "hop_length": str(settings.framing.hop_length), "n_frames": str(clip.n_frames),
        "content_encoder": str(info["name"]), "content_dim": str(clip.content.shape[1]),
        "f0_method": settings.f0.method,
    }
    for key, meta_key in (("path", "content_path"), ("layer", "content_layer"), ("final_proj", "content_final_proj")):
        if info.get(key) is not None:
            metadata[meta_key] = str(info[key]).lower() if isinstance(info[key], bool) else str(info[key])
    tensors = {"content": np.ascontiguousarray(clip.content), "f0": clip.f0, "voiced": clip.voiced,
               "volume": clip.volume}
    with atomic_path(features_path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# --------------------------------------------------------------------------------------- one source

@dataclass(frozen=True)
class SourceJob:
    """A source file to (re)process. ``source`` is relative to ``paths.raw`` (posix separators); ``seconds`` is
    its duration from the header (0 when unreadable)."""

    singer: str
    source: str
    path: Path
    fingerprint: dict
    seconds: float
    old_files: tuple[str, ...] = ()


def remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def reason_of(error: Exception) -> str:
    return error.reason if isinstance(error, AudioError) else str(error)


def new_record(job: SourceJob, settings: PreprocessSettings, encoder_info: Mapping[str, Any]) -> dict:
    """Forget the source's previous record and clips; return its new record, without clips yet."""
    processed = settings.processed
    remove_quietly(record_path(processed, job.source))
    for name in job.old_files:
        remove_quietly(processed / name)
    return {"format_version": 1, "source": job.source, "singer": job.singer, "fingerprint": job.fingerprint,
            "settings_hash": settings.output_hash(), "status": "ok", "reason": None,
            "content_encoder": dict(encoder_info), "clips": [], "rejected_clips": []}


def slice_source(job: SourceJob, settings: PreprocessSettings) -> tuple[int, list[tuple[int, int]]]:
    """The source's sample rate and its clips' sample ranges ``[(start, stop), ...]`` (one streaming pass over
    the file). Raises ClipRejected (too short, nothing above the slicer's threshold) or AudioError."""
    info = audio_info(job.path)
    if info.seconds < settings.min_clip_seconds:
        raise ClipRejected(f"too short ({info.seconds:.2f} s < min_clip_seconds {settings.min_clip_seconds} s)")
    ranges = slice_file(job.path, settings.slicer)
    if not ranges:
        raise ClipRejected(f"no sound above the slicer threshold ({settings.slicer.threshold_db} dB) long "
                           f"enough for a clip: silent, too quiet or too short")
    return info.sample_rate, ranges


def process_ranges(job: SourceJob, settings: PreprocessSettings, encoder, encoder_info: Mapping[str, Any],
                   sample_rate: int, ranges: Iterable[tuple[int, tuple[int, int]]],
                   on_progress: Callable[[float], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Process and write the clips ``ranges`` (``(index, (start, stop))``: the clip's index in its source and
    its samples there) of a source; return their record entries ``(clips, rejected_clips)`` in that order.

    Unusable clips are listed with their reason; an AudioError while writing propagates.
    ``on_progress(seconds)`` is called after each clip with the seconds of the source it covered."""
    processed = settings.processed
    clips, rejected = [], []
    for index, (start, stop) in ranges:
        span = {"index": index, "start_s": round(start / sample_rate, 3), "end_s": round(stop / sample_rate, 3)}
        try:
            clip = process_clip(job.path, start, stop, settings, encoder)
        except (ClipRejected, AudioError) as error:
            rejected.append({**span, "reason": reason_of(error)})
            continue
        finally:
            if on_progress is not None:
                on_progress((stop - start) / sample_rate)
        stem = clip_id(job.source, index)
        audio_rel, features_rel = f"{job.singer}/{stem}.wav", f"{job.singer}/{stem}.features.safetensors"
        write_clip(processed / audio_rel, processed / features_rel, clip, settings, encoder_info)
        voiced_f0 = clip.f0[clip.voiced.astype(bool)]
        clips.append({**span, "clip_id": stem, "audio": audio_rel, "features": features_rel,
                      "n_frames": clip.n_frames,
                      "seconds": round(clip.n_frames * settings.framing.hop_length / settings.framing.sample_rate, 4),
                      "f0_median_hz": round(float(np.median(voiced_f0)), 3)})
    return clips, rejected


def seal_record(record: dict, settings: PreprocessSettings, n_ranges: int = 0,
                 error: ClipRejected | AudioError | None = None) -> dict:
    """Finish a source's record and write it (atomically): rejected, its clips removed, when ``error`` is
    given or none of its ``n_ranges`` clips was usable."""
    if error is None and not record["clips"]:
        reasons = sorted({clip["reason"] for clip in record["rejected_clips"]})
        error = ClipRejected(f"no usable clip ({n_ranges} rejected: {'; '.join(reasons)})")
    if error is not None:
        record["status"], record["reason"] = "rejected", reason_of(error)
        for name in record_files(record):
            remove_quietly(settings.processed / name)
        record["clips"] = []
    path = record_path(settings.processed, record["source"])
    atomic_write_json(path, record)
    pieces_store.remove_pieces(path)  # the record has them now
    return record


def process_source(job: SourceJob, settings: PreprocessSettings, encoder,
                   on_progress: Callable[[float], None] | None = None) -> dict:
    """Process one source file; write its clips, then its record; return the record.

    Sources that cannot be used get a record with ``status: "rejected"`` and the reason (so a re-run
    does not retry an unchanged bad file). Unexpected errors propagate (no record: retried next run).
    ``on_progress(seconds)`` is called after each slice with the seconds of the source it covered.
    """
    from ai_singer.features.content import describe_encoder

    record = new_record(job, settings, describe_encoder(encoder))
    try:
        sample_rate, ranges = slice_source(job, settings)
        record["clips"], record["rejected_clips"] = process_ranges(
            job, settings, encoder, record["content_encoder"], sample_rate, enumerate(ranges), on_progress)
    except (ClipRejected, AudioError) as error:
        return seal_record(record, settings, error=error)
    return seal_record(record, settings, len(ranges))


def error_outcome(job: SourceJob, error: Exception) -> dict:
    """What an unexpected error in a source leaves: no record (the source is retried next run)."""
    return {"source": job.source, "singer": job.singer, "status": "error",
            "reason": f"unexpected error: {type(error).__name__}: {error}"}


def piece_plan(ranges: list[tuple[int, int]], sample_rate: int, seconds: float,
               done: Iterable[int] = ()) -> list[list[tuple[int, tuple[int, int]]]]:
    """A long source's clips ``ranges`` cut into pieces for the workers: runs of consecutive
    ``(index, (start, stop))`` of about ``seconds`` of audio each (a piece ends at the first clip that
    reaches it), leaving out the clips ``done`` (indices; a piece also ends where they begin)."""
    done = set(done)
    pieces, current, length = [], [], 0.0
    for index, (start, stop) in enumerate(ranges):
        if index in done:
            if current:
                pieces.append(current)
            current, length = [], 0.0
            continue
        current.append((index, (start, stop)))
        length += (stop - start) / sample_rate
        if length >= seconds:
            pieces.append(current)
            current, length = [], 0.0
    if current:
        pieces.append(current)
    return pieces


class SplitSource:
    """A long source shared among the workers: sliced here, its pieces processed anywhere, and its record
    written when every piece is back, exactly as :func:`process_source` would have written it (the clips in
    the order of the source; a piece's rejection, the first in that order, rejects the whole source).
    ``done``: pieces finished by an earlier run (:func:`ai_singer.preprocess_pieces.load_pieces`), not planned
    again."""

    def __init__(self, job: SourceJob, record: dict, sample_rate: int, ranges: list[tuple[int, int]],
                 piece_seconds: float, done: Mapping[int, dict] | None = None):
        self.job, self.record, self.n_ranges, self.sample_rate = job, record, len(ranges), sample_rate
        done = dict(done or {})
        self.resumed = len(done)
        self.pieces = piece_plan(ranges, sample_rate, piece_seconds,
                                 {index for entry in done.values() for index in pieces_store.piece_indices(entry)})
        self.outstanding = {piece[0][0] for piece in self.pieces}
        self.results: dict[int, dict] = done
        self.workers: set[int] = set()
        self.failure: dict | None = None

    def add(self, first: int, result: dict) -> bool:
        """Take the result of the piece starting at clip ``first``; True when no piece is outstanding."""
        self.outstanding.discard(first)
        if result["status"] == "error":
            self.failure = self.failure or result
        else:
            self.results[first] = result
            self.workers.add(result["worker"])
        return not self.outstanding

    def drop(self, first: int) -> None:
        """A piece that will not run (an earlier piece failed)."""
        self.outstanding.discard(first)

    def seal(self, settings: PreprocessSettings) -> dict:
        """The source's outcome: its written record, or (a piece failed unexpectedly) an error without one."""
        if self.failure is not None:
            return self.failure
        rejection = None
        for first in sorted(self.results):
            result = self.results[first]
            self.record["clips"] += result["clips"]
            self.record["rejected_clips"] += result["rejected_clips"]
            if result["status"] == "rejected" and rejection is None:
                rejection = ClipRejected(result["reason"])
        for key in ("clips", "rejected_clips"):  # pieces kept from an earlier run may interleave with new ones
            self.record[key].sort(key=lambda clip: clip["index"])
        return seal_record(self.record, settings, self.n_ranges, rejection)
