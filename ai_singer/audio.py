"""Audio in and out: decode, mono, resample, loudness, and slicing a recording on its silences.

Arrays are numpy ``float32``: mono ``[samples]``, multi-channel ``[channels, samples]``. Anything a user
hands us that cannot be used (not audio, empty, NaN/inf samples, digital silence where a level is
needed) raises :class:`AudioError` naming the file and the reason. No torch here.

Slicer in one paragraph: the mono signal is cut into non-overlapping frames of ``hop_s``; a frame is
silent when its RMS (dB relative to full scale) is below ``threshold_db``; a run of silent frames at
least ``min_silence_s`` long separates two phrases; each clip keeps at most ``max_silence_kept_s`` of
the silence on each side; phrases longer than ``max_length_s`` are split at their quietest frame; clips
shorter than ``min_length_s`` are merged into a neighbour when the silence between them is short
(see :func:`slice_frames`) or dropped otherwise. The same function over the per-frame dB array serves
the in-memory :func:`slice_on_silence` and the streaming :func:`slice_file`, so both give identical
sample ranges.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from ai_singer.atomic import atomic_path
from ai_singer.errors import UserError

#: Suffixes of the audio files the stages pick up from folders (anything libsndfile decodes).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")

#: Formats :func:`write_audio` writes, by file suffix.
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}

#: Peak below which a signal counts as digital silence (one 24-bit LSB).
_DIGITAL_SILENCE_PEAK = 2.0 ** -23

#: Floor for frame levels, so an all-zero frame has a finite level.
_FLOOR_DB = -200.0


class AudioError(UserError):
    """Unusable audio: ``AudioError(path, reason)``; ``str()`` is ``"{path}: {reason}"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        super().__init__(path, reason)

    def __reduce__(self):  # keep it picklable for worker processes
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, read from its header without decoding."""

    sample_rate: int
    channels: int
    frames: int
    seconds: float


# --------------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------------

def _open(path: str | os.PathLike) -> sf.SoundFile:
    """Open ``path`` for reading, turning every failure into an AudioError naming the file."""
    if not Path(path).exists():
        raise AudioError(path, "file does not exist")
    if Path(path).is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(path, f"not a readable audio file ({error})") from error


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channel count, length in samples and seconds of an audio file.

    Raises AudioError when the file is not readable audio or holds no samples.
    """
    with _open(path) as handle:
        frames, sample_rate, channels = handle.frames, handle.samplerate, handle.channels
    if frames <= 0:
        raise AudioError(path, "contains no audio samples")
    return AudioInfo(sample_rate=int(sample_rate), channels=int(channels), frames=int(frames),
                     seconds=frames / sample_rate)


def _check_finite(path: str | os.PathLike, block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise AudioError(path, "contains NaN or infinite samples")


def load_audio(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` (wav/flac/ogg/mp3/... anything libsndfile reads; any rate, depth, channels).

    ``start``/``stop`` are sample indices (``stop`` exclusive, ``None`` = end of file); only that part
    of the file is read. Returns ``(float32 [channels, samples], sample_rate)``; integer formats are
    scaled to [-1, 1).

    Raises AudioError for unreadable files, files without samples, an empty or out-of-range
    ``start``/``stop`` selection, and NaN/inf samples.
    """
    if start < 0 or (stop is not None and stop < start):
        raise AudioError(path, f"invalid sample range start={start} stop={stop}")
    with _open(path) as handle:
        total, sample_rate = handle.frames, handle.samplerate
        if total <= 0:
            raise AudioError(path, "contains no audio samples")
        end = total if stop is None else min(stop, total)
        if start >= end:
            raise AudioError(path, f"sample range start={start} stop={stop} is empty (file has {total} samples)")
        if start:
            handle.seek(start)
        try:
            data = handle.read(end - start, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(path, f"could not decode audio ({error})") from error
    if data.shape[0] == 0:
        raise AudioError(path, "contains no audio samples")
    _check_finite(path, data)
    return np.ascontiguousarray(data.T), int(sample_rate)


def write_audio(path: str | os.PathLike, x: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write mono ``[samples]`` or ``[channels, samples]`` audio to ``path`` atomically.

    The format follows the suffix (``.wav`` or ``.flac``). For integer subtypes samples are clipped to
    [-1, 1] first, so loud peaks saturate instead of wrapping around.
    """
    target = Path(path)
    file_format = WRITE_FORMATS.get(target.suffix.lower())
    if file_format is None:
        raise ValueError(f"{target}: cannot write audio with suffix {target.suffix!r}; "
                         f"use one of {sorted(WRITE_FORMATS)}")
    data = np.asarray(x, dtype=np.float32)
    if data.ndim not in (1, 2):
        raise ValueError(f"{target}: audio must be [samples] or [channels, samples], got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{target}: refusing to write NaN or infinite samples")
    if subtype.startswith("PCM") or subtype in ("ULAW", "ALAW"):
        data = np.clip(data, -1.0, 1.0)
    frames_first = data if data.ndim == 1 else data.T
    with atomic_path(target) as tmp:
        sf.write(str(tmp), frames_first, int(sr), subtype=subtype, format=file_format)


# --------------------------------------------------------------------------------------------------
# Channels and sample rate
# --------------------------------------------------------------------------------------------------

def to_mono(x: np.ndarray) -> np.ndarray:
    """Average the channels: ``[channels, samples]`` -> float32 ``[samples]``; mono passes through."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    if x.ndim != 2:
        raise ValueError(f"to_mono expects [samples] or [channels, samples], got shape {x.shape}")
    if x.shape[0] == 1:
        return x[0].astype(np.float32, copy=False)
    return np.mean(x, axis=0, dtype=np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along the last axis with soxr (high quality); any leading shape. Returns float32.

    The output has ``round(samples * sr_out / sr_in)`` samples.
    """
    x = np.asarray(x, dtype=np.float32)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return x.copy()
    import soxr

    lead_shape, n_samples = x.shape[:-1], x.shape[-1]
    if n_samples == 0:
        return np.zeros(lead_shape + (0,), dtype=np.float32)
    frames_first = np.ascontiguousarray(x.reshape(-1, n_samples).T)  # [samples, channels]
    out = soxr.resample(frames_first, sr_in, sr_out, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32).reshape(lead_shape + (out.shape[0],))


# --------------------------------------------------------------------------------------------------
# Loudness
# --------------------------------------------------------------------------------------------------

def _rms_loudness(x_frames_first: np.ndarray) -> float:
    """Ungated, unweighted BS.1770-style level: -0.691 + 10 log10(sum over channels of mean square)."""
    mean_square = np.mean(np.square(x_frames_first, dtype=np.float64), axis=0).sum()
    return -0.691 + 10.0 * math.log10(max(float(mean_square), 1e-30))


def measure_loudness(x: np.ndarray, sr: int) -> float:
    """Integrated loudness in LUFS (BS.1770 via pyloudnorm) of ``[samples]`` or ``[channels, samples]``.

    Clips shorter than one 400 ms gating block, or so quiet that every block is gated away, fall back
    to the ungated RMS level (same -0.691 dB offset, no K-weighting).
    """
    import pyloudnorm

    data = np.asarray(x, dtype=np.float64)
    if data.ndim == 2 and data.shape[0] > 5:  # BS.1770 channel weights cover at most 5 channels
        data = data.mean(axis=0)
    frames_first = data if data.ndim == 1 else data.T
    meter = pyloudnorm.Meter(sr)
    if frames_first.shape[0] <= int(round(meter.block_size * sr)):
        return _rms_loudness(frames_first)
    loudness = float(meter.integrated_loudness(frames_first))
    if not math.isfinite(loudness):
        return _rms_loudness(frames_first)
    return loudness


def normalize_loudness(x: np.ndarray, sr: int, target_lufs: float, peak_dbfs: float, *,
                       source: str | os.PathLike = "<audio array>") -> np.ndarray:
    """Scale ``x`` (``[samples]`` or ``[channels, samples]``) to ``target_lufs`` integrated loudness.

    The gain is then lowered if needed so the sample peak stays at or below ``peak_dbfs``; such a clip
    ends up quieter than the target (a plain gain, no limiter, so the sound is never distorted).
    ``source`` names the audio in errors. Raises AudioError for NaN/inf samples or digital silence.
    Returns float32 with ``x``'s shape.
    """
    data = np.asarray(x, dtype=np.float32)
    if data.size == 0:
        raise AudioError(source, "contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(source, "contains NaN or infinite samples")
    peak = float(np.max(np.abs(data)))
    if peak < _DIGITAL_SILENCE_PEAK:
        raise AudioError(source, "is digital silence; its loudness cannot be normalised")
    gain_db = target_lufs - measure_loudness(data, sr)
    peak_limit_db = peak_dbfs - 20.0 * math.log10(peak)
    gain = 10.0 ** (min(gain_db, peak_limit_db) / 20.0)
    return (data * np.float32(gain)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Slicing on silence
# --------------------------------------------------------------------------------------------------

@dataclass
class SliceConfig:
    """Silence slicer settings, built from ``conf/slicer`` (the values live there only). Times in seconds.

    threshold_db:       a frame is silent when its RMS is below this (dB re full scale).
    min_length_s:       shorter clips are merged with a neighbour across a short silence, else dropped.
    min_silence_s:      only silences at least this long split the recording.
    max_silence_kept_s: at most this much of the silence is kept on each side of a clip.
    hop_s:              frame length of the RMS analysis (the boundaries' resolution).
    max_length_s:       longer phrases are split at their quietest frame; every clip is at most this.
    """

    threshold_db: float
    min_length_s: float
    min_silence_s: float
    max_silence_kept_s: float
    hop_s: float
    max_length_s: float

    def __post_init__(self) -> None:
        if not self.hop_s > 0:
            raise ValueError(f"SliceConfig.hop_s must be > 0, got {self.hop_s}")
        if self.min_length_s < 0 or self.min_silence_s < 0 or self.max_silence_kept_s < 0:
            raise ValueError(f"SliceConfig lengths must be >= 0: {self}")
        if not self.max_length_s >= 2 * self.hop_s:
            raise ValueError(f"SliceConfig.max_length_s must be at least two hops, got {self.max_length_s}")

    def hop_samples(self, sr: int) -> int:
        """Frame length in samples at ``sr``."""
        return max(1, int(round(self.hop_s * sr)))


def frame_db(x_mono: np.ndarray, hop: int) -> np.ndarray:
    """RMS level in dB re full scale of consecutive non-overlapping frames of ``hop`` samples.

    ``x_mono`` float ``[samples]`` -> float64 ``[ceil(samples / hop)]``; the last frame may be partial.
    Each frame's value depends only on its own samples, so computing block by block (blocks a multiple
    of ``hop``) gives exactly the same array as computing it at once.
    """
    x_mono = np.asarray(x_mono, dtype=np.float32)
    n_full = x_mono.shape[0] // hop
    full = x_mono[: n_full * hop].reshape(n_full, hop)
    mean_square = np.mean(np.square(full), axis=1, dtype=np.float64)
    if x_mono.shape[0] > n_full * hop:
        tail = x_mono[n_full * hop:]
        mean_square = np.append(mean_square, np.mean(np.square(tail), dtype=np.float64))
    with np.errstate(divide="ignore"):
        level = 10.0 * np.log10(mean_square)
    return np.maximum(level, _FLOOR_DB)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, end) index ranges where the boolean ``mask`` is True."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def _split_long(db: np.ndarray, start: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    """Split the frame range [start, end) into pieces of at most ``max_frames``, each cut at the
    quietest frame of a window that keeps every piece at least ``max_frames // 2`` long and leaves a
    remainder that fits in the pieces still needed."""
    pieces = []
    while end - start > max_frames:
        length = end - start
        pieces_needed = math.ceil(length / max_frames)
        lowest = start + max(length - (pieces_needed - 1) * max_frames, max_frames // 2, 1)
        highest = start + min(max_frames, length - max_frames // 2)
        cut = lowest + int(np.argmin(db[lowest: highest + 1]))
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def slice_frames(db: np.ndarray, hop: int, n_samples: int, sr: int, cfg: SliceConfig) -> list[tuple[int, int]]:
    """The slicer's core over per-frame levels ``db`` (float ``[n_frames]``, frames of ``hop`` samples).

    Returns sample ranges ``[(start, end), ...]`` (end exclusive, sorted, non-overlapping) into a signal
    of ``n_samples``. Steps:

    1. Silent frames: ``db < threshold_db``. Silent runs of at least ``min_silence_s`` (and silent runs
       touching either end of the recording) separate phrases; shorter pauses stay inside a phrase.
    2. Each phrase keeps up to ``max_silence_kept_s`` of the silence on each side; a silence between two
       phrases is shared so the two clips never overlap (each side gets at most half of it).
    3. Clips longer than ``max_length_s`` are split at the quietest frame of an allowed window
       (pieces between ``max_length_s / 2`` and ``max_length_s``).
    4. Merge rule: a clip shorter than ``min_length_s`` is merged with the neighbouring clip across the
       shorter silence, provided that silence is at most ``2 * max_silence_kept_s`` (the two clips'
       kept silences then already touch, so the merged clip holds no more silence than the two kept
       separately) and the merged clip stays within ``max_length_s``. Otherwise it is dropped. Shortest
       clips are handled first, and a merged clip that is still short is considered again.
    """
    n_frames = int(db.shape[0])
    if n_frames == 0:
        return []
    frames_per_s = sr / hop
    min_silence = max(1, int(round(cfg.min_silence_s * frames_per_s)))
    keep = int(math.floor(cfg.max_silence_kept_s * frames_per_s + 1e-9))
    max_frames = max(2, int(math.floor(cfg.max_length_s * sr / hop)))
    min_length_samples = cfg.min_length_s * sr
    max_length_samples = cfg.max_length_s * sr

    # 1. phrases = the complement of the separating silences
    separating = [(a, b) for a, b in _runs(db < cfg.threshold_db)
                  if b - a >= min_silence or a == 0 or b == n_frames]
    phrases, cursor = [], 0
    for a, b in separating:
        if a > cursor:
            phrases.append((cursor, a))
        cursor = b
    if cursor < n_frames:
        phrases.append((cursor, n_frames))
    if not phrases:
        return []

    # 2. keep some of the silence around each phrase
    clips = []  # [clip_start, clip_end, sound_start, sound_end] in frames
    for index, (a, b) in enumerate(phrases):
        gap_before = a if index == 0 else a - phrases[index - 1][1]
        gap_after = n_frames - b if index == len(phrases) - 1 else phrases[index + 1][0] - b
        share_before = gap_before if index == 0 else gap_before - gap_before // 2
        share_after = gap_after if index == len(phrases) - 1 else gap_after // 2
        clips.append([a - min(keep, share_before), b + min(keep, share_after), a, b])

    # 3. split long clips at their quietest frame (pieces touch: no silence between them)
    pieces = []
    for clip_start, clip_end, sound_start, sound_end in clips:
        split = _split_long(db, clip_start, clip_end, max_frames)
        for i, (a, b) in enumerate(split):
            pieces.append([a, b, sound_start if i == 0 else a, sound_end if i == len(split) - 1 else b])

    def samples(clip) -> tuple[int, int]:
        return clip[0] * hop, min(clip[1] * hop, n_samples)

    def length(clip) -> int:
        start, end = samples(clip)
        return end - start

    # 4. merge or drop clips that are too short
    max_merge_gap = 2 * keep
    while True:
        short = [i for i, clip in enumerate(pieces) if length(clip) < min_length_samples]
        if not short:
            break
        index = min(short, key=lambda i: (length(pieces[i]), i))
        options = []
        for neighbour in (index - 1, index + 1):
            if not 0 <= neighbour < len(pieces):
                continue
            first, second = sorted((index, neighbour))
            gap = pieces[second][2] - pieces[first][3]
            merged = [pieces[first][0], pieces[second][1], pieces[first][2], pieces[second][3]]
            if gap <= max_merge_gap and length(merged) <= max_length_samples:
                options.append((gap, first, merged))
        if options:
            _, first, merged = min(options, key=lambda option: (option[0], option[1]))
            pieces[first: first + 2] = [merged]
        else:
            del pieces[index]
    return [samples(clip) for clip in pieces]


def _blocks_of(x_mono: np.ndarray, block: int) -> Iterator[np.ndarray]:
    for offset in range(0, x_mono.shape[0], block):
        yield x_mono[offset: offset + block]


def _block_frames(sr: int, hop: int, block_seconds: float) -> int:
    """Block length in samples: a whole number of hops, at least one."""
    return hop * max(1, int(round(block_seconds * sr / hop)))


def _frame_db_blocks(blocks: Iterable[np.ndarray], hop: int) -> tuple[np.ndarray, int]:
    levels, n_samples = [], 0
    for block in blocks:
        levels.append(frame_db(block, hop))
        n_samples += block.shape[0]
    db = np.concatenate(levels) if levels else np.zeros(0)
    return db, n_samples


def slice_on_silence(x_mono: np.ndarray, sr: int, cfg: SliceConfig,
                     block_seconds: float = 60.0) -> list[tuple[int, int]]:
    """Slice a mono recording (float ``[samples]``) on silence: sample ranges ``[(start, end), ...]``.

    See :func:`slice_frames` for the rules. The level analysis runs block by block (``block_seconds``),
    like :func:`slice_file`, so the result is the same as slicing the file the signal came from.
    """
    x_mono = np.asarray(x_mono)
    if x_mono.ndim != 1:
        raise ValueError(f"slice_on_silence expects mono [samples], got shape {x_mono.shape}")
    hop = cfg.hop_samples(sr)
    db, n_samples = _frame_db_blocks(_blocks_of(x_mono, _block_frames(sr, hop, block_seconds)), hop)
    return slice_frames(db, hop, n_samples, sr, cfg)


def slice_file(path: str | os.PathLike, cfg: SliceConfig,
               block_seconds: float = 60.0) -> list[tuple[int, int]]:
    """Slice an audio file on silence without decoding it all at once.

    The file is read ``block_seconds`` at a time as float32, each block downmixed to mono, and only the
    per-frame levels (one float per ``hop_s``) are kept, so memory stays at a block plus ~0.3 MB per
    hour of audio. Returns the same sample ranges as ``slice_on_silence(to_mono(load_audio(path)[0]), sr, cfg)``.
    Raises AudioError for unreadable, empty or non-finite audio.
    """
    with _open(path) as handle:
        sr = handle.samplerate
        if handle.frames <= 0:
            raise AudioError(path, "contains no audio samples")
        hop = cfg.hop_samples(sr)
        block = _block_frames(sr, hop, block_seconds)

        def mono_blocks() -> Iterator[np.ndarray]:
            while True:
                try:
                    data = handle.read(block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as error:
                    raise AudioError(path, f"could not decode audio ({error})") from error
                if data.shape[0] == 0:
                    return
                _check_finite(path, data)
                yield to_mono(np.ascontiguousarray(data.T))  # same layout as load_audio's output
                if data.shape[0] < block:
                    return

        db, n_samples = _frame_db_blocks(mono_blocks(), hop)
    if n_samples == 0:
        raise AudioError(path, "contains no audio samples")
    return slice_frames(db, hop, n_samples, sr, cfg)
