"""Remixing a converted vocal with its accompaniment, and joining tracks end to end.

The signal processing here is plain numpy (no torch); decoding, resampling and writing go through
:mod:`ai_singer.audio`. Arrays are float32, mono ``[samples]`` or ``[channels, samples]``.

- :func:`loudness_match_gain_db`: the gain that brings the converted vocal to the source vocal's level,
  measured as gated RMS over the active (sung) parts only, so rests do not dilute the measurement.
  :func:`match_loudness` applies it and lets the limiter take the peaks that would then exceed the
  ceiling (rather than giving up level), so the stem ends within a tolerance of the source's level.
- :func:`highpass`: a zero-phase Butterworth high-pass (removes DC and sub-sonic rumble).
- :func:`mix_stems`: vocal + accompaniment stems with per-stem gains in dB. Every stem is conformed to the
  mix layout: the vocal's sample rate and length, and the largest channel count among the parts (mono
  parts are up-mixed by copying; nothing is ever down-mixed in a mix).
- :func:`limit_peaks`: a look-ahead peak limiter. The gain computer looks ``lookahead_s`` ahead, ramps the
  gain down linearly over that time so it is fully reduced when the peak arrives, and releases
  exponentially (time constant ``release_s``, in dB). The output never exceeds the ceiling; a signal that
  never reaches the ceiling passes through bit-exactly.
- :func:`concat_tracks`: tracks end to end with equal-power crossfades, each converted to the first
  track's sample rate and channel count.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

#: Samples processed at once by the limiter's float64 stages (bounds their temporary memory).
_BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------

@dataclass
class LimiterSettings:
    """Peak limiter (``mix.limiter`` in ``conf/infer.yaml``, where the values live).

    enabled:     off passes the sum through unchanged (it may then exceed 0 dBFS and clip when written).
    ceiling_db:  the output's sample peak never exceeds this (dB re full scale).
    lookahead_s: the gain starts falling this long before a peak (linear ramp), so nothing is clipped.
    release_s:   time constant of the exponential recovery of the gain reduction afterwards.
    """

    enabled: bool
    ceiling_db: float
    lookahead_s: float
    release_s: float


@dataclass
class MixSettings:
    """How the final mix is made and written (``mix`` in ``conf/infer.yaml``, where the values live).

    format:         ``wav`` or ``flac`` (the mix file is ``mix.<format>``; the converted stem too).
    subtype:        sample format written (soundfile subtype, e.g. PCM_16, PCM_24, FLOAT for wav).
    match_loudness: scale the converted vocal to the source vocal's level on its active parts.
    vocal_gain_db:  extra gain on the vocal in the mix (after loudness matching).
    stem_gains:     accompaniment gains in dB by stem name (the file name without suffix, e.g. ``drums``);
                    stems not named here get 0 dB.
    limiter:        see :class:`LimiterSettings`.
    """

    format: str
    subtype: str
    match_loudness: bool
    vocal_gain_db: float
    stem_gains: dict[str, float]
    limiter: LimiterSettings

    def __post_init__(self) -> None:
        if self.format not in ("wav", "flac"):
            raise ValueError(f"mix.format must be 'wav' or 'flac', got {self.format!r}")


@dataclass
class MixResult:
    """A finished mix: ``audio`` float32 ``[channels, samples]`` at ``sample_rate``, the gains applied (dB)
    and the limiter's largest gain reduction (dB, 0 when it never engaged)."""

    audio: np.ndarray
    sample_rate: int
    vocal_gain_db: float
    stem_gains_db: dict[str, float]
    limiter_reduction_db: float
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Small conversions
# --------------------------------------------------------------------------------------------------

def db_to_gain(db: float) -> float:
    """Linear amplitude factor of a level change in dB."""
    return 10.0 ** (float(db) / 20.0)


def as_channels(x: np.ndarray) -> np.ndarray:
    """``[samples]`` -> ``[1, samples]``; ``[channels, samples]`` passes through. float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x[None, :]
    if x.ndim != 2:
        raise ValueError(f"audio must be [samples] or [channels, samples], got shape {x.shape}")
    return x


def conform_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """``[C, samples]`` -> ``[channels, samples]``.

    Up-mix: output channel ``j`` copies input channel ``j % C`` (mono goes to every channel).
    Down-mix: output channel ``j`` is the mean of the input channels ``i`` with ``i % channels == j``
    (to mono: the mean of all channels).
    """
    x = as_channels(x)
    n_in = x.shape[0]
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if n_in == channels:
        return x
    if channels > n_in:
        return np.ascontiguousarray(x[[j % n_in for j in range(channels)]])
    return np.stack([x[j::channels].mean(axis=0, dtype=np.float32) for j in range(channels)])


def conform_length(x: np.ndarray, n_samples: int) -> np.ndarray:
    """Trim or zero-pad the last axis to exactly ``n_samples``."""
    length = x.shape[-1]
    if length == n_samples:
        return x
    if length > n_samples:
        return x[..., :n_samples]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, n_samples - length)]
    return np.pad(x, pad)


def conform(x: np.ndarray, sr: int, target_sr: int, channels: int, n_samples: int | None = None) -> np.ndarray:
    """Resample ``x`` to ``target_sr``, map it to ``channels`` and (if given) trim/pad to ``n_samples``.
    Returns float32 ``[channels, samples]``."""
    from ai_singer.audio import resample

    x = as_channels(x)
    if sr != target_sr:
        x = resample(x, sr, target_sr)
    x = conform_channels(x, channels)
    return x if n_samples is None else conform_length(x, n_samples)


# --------------------------------------------------------------------------------------------------
# Loudness matching
# --------------------------------------------------------------------------------------------------

def active_level_db(x: np.ndarray, sr: int, block_s: float = 0.05, gate_db: float = -30.0,
                    floor_dbfs: float = -70.0) -> float | None:
    """Level in dB re full scale of the active parts of ``x`` (``[samples]`` or ``[channels, samples]``).

    The signal is cut into blocks of ``block_s``; a block's energy is the mean square over its samples and
    channels. Blocks below ``floor_dbfs`` or more than ``-gate_db`` below the loudest block are rests and
    are ignored; the level is the mean energy of the remaining blocks. Returns None for (near) silence.
    """
    x = as_channels(x)
    hop = max(1, int(round(block_s * sr)))
    n_blocks = x.shape[1] // hop
    if n_blocks == 0:
        energy = np.array([np.mean(np.square(x, dtype=np.float64))]) if x.size else np.zeros(0)
    else:
        per_pass = max(1, _BLOCK // hop)  # blocks measured at once (bounded float64 temporaries)
        energy = np.concatenate([
            np.mean(np.square(x[:, first * hop: min(first + per_pass, n_blocks) * hop]
                              .reshape(x.shape[0], -1, hop), dtype=np.float64), axis=(0, 2))
            for first in range(0, n_blocks, per_pass)])
    if energy.size == 0:
        return None
    loudest = float(energy.max())
    floor = 10.0 ** (floor_dbfs / 10.0)
    if loudest <= floor:
        return None
    active = energy[(energy >= floor) & (energy >= loudest * 10.0 ** (gate_db / 10.0))]
    return 10.0 * math.log10(float(active.mean()))


def loudness_match_gain_db(converted: np.ndarray, reference: np.ndarray, sr: int,
                           max_gain_db: float = 24.0) -> float:
    """The gain (dB) that brings ``converted`` to ``reference``'s active level (both at ``sr``), clamped to
    ``±max_gain_db``. 0 when either is silent."""
    level_converted = active_level_db(converted, sr)
    level_reference = active_level_db(reference, sr)
    if level_converted is None or level_reference is None:
        return 0.0
    return float(np.clip(level_reference - level_converted, -max_gain_db, max_gain_db))


@dataclass
class LoudnessMatch:
    """What :func:`match_loudness` did: the gain applied (dB), the limiter's largest gain reduction (dB)
    and the level of the result minus the reference's (dB; ``None`` when either is silent)."""

    gain_db: float
    limiter_reduction_db: float
    level_difference_db: float | None


def match_loudness(x: np.ndarray, reference: np.ndarray, sr: int, limiter: LimiterSettings,
                   tolerance_db: float = 0.5, max_rounds: int = 4) -> tuple[np.ndarray, LoudnessMatch]:
    """Bring ``x`` to ``reference``'s active level (see :func:`loudness_match_gain_db`), limiting peaks.

    The gain is never reduced to avoid clipping: the peaks that the gain pushes above
    ``limiter.ceiling_db`` go through :func:`limit_peaks` instead. Limiting lowers the level a little, so
    the gain is raised by the remaining difference and the result limited again, for at most
    ``max_rounds`` rounds or until it is within ``tolerance_db``. With the limiter disabled the gain is
    capped so the peak stays at 0 dBFS (the result then falls short; ``level_difference_db`` says by
    how much). Returns (float32 audio, :class:`LoudnessMatch`); ``x`` itself is not modified.
    """
    x = np.asarray(x, dtype=np.float32)
    reference_level = active_level_db(reference, sr)
    gain_db = loudness_match_gain_db(x, reference, sr)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not limiter.enabled and peak > 0:
        gain_db = min(gain_db, -20.0 * math.log10(peak))
    reduction = 0.0
    out = x
    for _ in range(max(1, max_rounds)):
        out, round_reduction = limit_peaks(x * np.float32(db_to_gain(gain_db)), sr, limiter)
        reduction = max(reduction, round_reduction)
        level = active_level_db(out, sr)
        if level is None or reference_level is None or not limiter.enabled:
            break
        short = reference_level - level
        if abs(short) <= tolerance_db:
            break
        gain_db += short
    level = active_level_db(out, sr)
    difference = None if level is None or reference_level is None else level - reference_level
    return out, LoudnessMatch(gain_db=float(gain_db), limiter_reduction_db=float(reduction),
                              level_difference_db=difference)


# --------------------------------------------------------------------------------------------------
# High-pass
# --------------------------------------------------------------------------------------------------

def highpass(x: np.ndarray, sr: int, cutoff_hz: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth high-pass of ``x`` (``[samples]`` or ``[channels, samples]``) along its last
    axis: an ``order``-th order filter run forward and backward (``scipy.signal.sosfiltfilt``), so the
    response is ``|H|**2`` (-6 dB at ``cutoff_hz``) with no phase shift. Removes DC completely. The
    ends are extended by odd reflection over one period of the cutoff, so a piece starts and ends
    without a transient. ``cutoff_hz <= 0`` returns ``x`` unchanged. Returns float32."""
    from scipy.signal import butter, sosfiltfilt

    x = np.asarray(x, dtype=np.float32)
    if cutoff_hz <= 0 or x.shape[-1] < 2:
        return x
    if cutoff_hz >= sr / 2:
        raise ValueError(f"high-pass cutoff {cutoff_hz} Hz must be below half the sample rate ({sr / 2} Hz)")
    sos = butter(order, cutoff_hz, btype="highpass", fs=sr, output="sos")
    padlen = min(x.shape[-1] - 1, int(math.ceil(sr / cutoff_hz)))
    return sosfiltfilt(sos, x.astype(np.float64), axis=-1, padlen=padlen).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Limiter
# --------------------------------------------------------------------------------------------------

def _max_ahead(x: np.ndarray, window: int) -> np.ndarray:
    """``out[n] = max(x[n : n + window])`` (the window shortens at the end), in O(n log window)."""
    out = x.copy()
    span = 1
    while span < window:
        step = min(span, window - span)  # afterwards out[n] covers [n, n + span + step)
        if step < out.shape[0]:
            np.maximum(out[:-step], out[step:], out=out[:-step])
        span += step
    return out


def _release(required_db: np.ndarray, release_samples: float) -> np.ndarray:
    """Gain reduction with exponential release: ``r[n] = max(required[n], a * r[n-1])``, ``a =
    exp(-1 / release_samples)``, computed block by block without a Python loop over samples.

    Within a block ``log r[n] = n log a + max_{k<=n}(log required[k] - k log a)``, a running maximum."""
    out = np.empty_like(required_db)
    log_a = -1.0 / max(release_samples, 1e-9)
    carry = 0.0  # reduction (dB) at the end of the previous block
    for start in range(0, required_db.shape[0], _BLOCK):
        block = required_db[start: start + _BLOCK].astype(np.float64)
        index = np.arange(block.shape[0], dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_block = np.log(block)
        if carry > 0:
            log_block[0] = max(log_block[0], math.log(carry) + log_a)
        running = np.maximum.accumulate(log_block - index * log_a)
        result = np.exp(running + index * log_a)
        out[start: start + block.shape[0]] = result
        carry = float(result[-1])
    return out


def _trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """``out[n] = mean(x[n - window + 1 : n + 1])``, with values before the start taken as ``x[0]`` (for the
    look-ahead max that is the largest value of the first window, so the ceiling holds there too)."""
    if window <= 1 or x.shape[0] == 0:
        return x
    out = np.empty_like(x)
    tail = np.full(window - 1, float(x[0]), dtype=np.float64)  # the previous block's last window-1 values
    for start in range(0, x.shape[0], _BLOCK):
        block = np.concatenate([tail, x[start: start + _BLOCK].astype(np.float64)])
        csum = np.concatenate([[0.0], np.cumsum(block)])
        out[start: start + block.shape[0] - (window - 1)] = (csum[window:] - csum[:-window]) / window
        tail = block[-(window - 1):]
    return out


def limit_peaks(x: np.ndarray, sr: int, settings: LimiterSettings) -> tuple[np.ndarray, float]:
    """Look-ahead peak limiter.

    Args:
        x: float ``[samples]`` or ``[channels, samples]``; all channels share one gain (linked), so the
            stereo image does not move.
        sr: sample rate (for the time constants).
        settings: see :class:`LimiterSettings`.

    Returns:
        (limited float32 audio of ``x``'s shape, largest gain reduction in dB). The gain reduction needed
        at each sample (``peak_db - ceiling_db``) goes through an exponential release, then a max over the
        next ``lookahead_s`` and a trailing mean over the same time: every value averaged at sample ``n``
        is at least the reduction ``n`` needs, so the ceiling holds. If no sample exceeds the ceiling,
        or the limiter is disabled, ``x`` is returned unchanged (reduction 0).
    """
    x = np.asarray(x, dtype=np.float32)
    if not settings.enabled or x.size == 0:
        return x, 0.0
    ceiling = db_to_gain(settings.ceiling_db)
    peak = np.max(np.abs(as_channels(x)), axis=0)
    over = peak > ceiling
    if not over.any():
        return x, 0.0
    required_db = np.zeros(peak.shape, dtype=np.float32)
    required_db[over] = 20.0 * np.log10(peak[over] / ceiling)
    reduction = _release(required_db, settings.release_s * sr).astype(np.float32)
    window = max(1, int(round(settings.lookahead_s * sr)))
    reduction = _max_ahead(reduction, window)
    reduction = _trailing_mean(reduction, window).astype(np.float32)
    gain = np.power(np.float32(10.0), -reduction / np.float32(20.0))
    limited = x * gain  # broadcasts over channels
    # Guard against float rounding in the running sums only: the gain already holds the ceiling.
    np.clip(limited, -ceiling, ceiling, out=limited)
    return limited.astype(np.float32, copy=False), float(reduction.max())


# --------------------------------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------------------------------

def mix_stems(vocal: np.ndarray, sr: int, stems: Iterable[tuple[str, np.ndarray, int]],
              settings: MixSettings, channels: int | None = None) -> MixResult:
    """Sum the vocal and accompaniment stems, then limit.

    Args:
        vocal: the (already loudness-matched) vocal, ``[samples]`` or ``[channels, samples]`` at ``sr``;
            it sets the mix's sample rate and length.
        sr: the vocal's sample rate (the mix is written at it).
        stems: ``(name, audio, sample_rate)`` per accompaniment stem; may be a generator so only one
            stem is decoded at a time. Each is resampled to ``sr``, trimmed/padded to the vocal's length
            and gained by ``settings.stem_gains.get(name, 0)`` dB.
        settings: gains and limiter.
        channels: channel count of the mix; default: the largest among the vocal and the stems seen
            (the mix buffer grows if a later stem has more channels).

    Returns:
        MixResult with ``audio`` float32 ``[channels, samples]``. With the limiter off (or not engaged)
        ``audio == vocal * g_vocal + sum(stem_i * g_i)`` exactly as computed in float32.
    """
    vocal = as_channels(vocal)
    n_samples = vocal.shape[1]
    n_channels = max(channels or 1, vocal.shape[0])
    mix = conform_channels(vocal, n_channels) * np.float32(db_to_gain(settings.vocal_gain_db))
    applied: dict[str, float] = {}
    for name, audio, stem_sr in stems:
        audio = as_channels(audio)
        if channels is None and audio.shape[0] > mix.shape[0]:
            mix = conform_channels(mix, audio.shape[0])  # a later stem with more channels widens the mix
        gain_db = float(settings.stem_gains.get(name, 0.0))
        part = conform(audio, stem_sr, sr, mix.shape[0], n_samples)
        mix += part * np.float32(db_to_gain(gain_db))
        applied[name] = gain_db
        del part, audio
    warnings = [f"mix.stem_gains names {name!r} but the song has no such stem (stems: {sorted(applied)})"
                for name in settings.stem_gains if name not in applied]
    mix, reduction = limit_peaks(mix, sr, settings.limiter)
    return MixResult(audio=mix, sample_rate=sr, vocal_gain_db=float(settings.vocal_gain_db),
                     stem_gains_db=applied, limiter_reduction_db=reduction, warnings=warnings)


def mix_stem_files(vocal: np.ndarray, sr: int, paths: Sequence[str | os.PathLike],
                   settings: MixSettings, block_seconds: float = 30.0) -> MixResult:
    """:func:`mix_stems` for accompaniment stems on disk, with less memory: a stem at the vocal's sample
    rate is decoded and added ``block_seconds`` at a time (only one block of it is in memory); a stem at
    another rate is decoded whole and resampled. The mix has the most channels among the vocal and the
    stems (read from the headers first). The result is identical to :func:`mix_stems` on the decoded stems.
    Raises AudioError for an unreadable stem."""
    from ai_singer.audio import audio_info, load_audio

    vocal = as_channels(vocal)
    n_samples = vocal.shape[1]
    infos = [audio_info(path) for path in paths]
    channels = max([vocal.shape[0]] + [info.channels for info in infos])
    mix = conform_channels(vocal, channels) * np.float32(db_to_gain(settings.vocal_gain_db))
    applied: dict[str, float] = {}
    block = max(1, int(round(block_seconds * sr)))
    for path, info in zip(paths, infos):
        name = Path(path).stem
        gain_db = float(settings.stem_gains.get(name, 0.0))
        gain = np.float32(db_to_gain(gain_db))
        if info.sample_rate == sr:
            for start in range(0, min(n_samples, info.frames), block):
                audio, _ = load_audio(path, start, min(start + block, n_samples, info.frames))
                part = conform_channels(audio, channels)
                mix[:, start: start + part.shape[1]] += part * gain
        else:
            audio, stem_sr = load_audio(path)
            mix += conform(audio, stem_sr, sr, channels, n_samples) * gain
            del audio
        applied[name] = gain_db
    warnings = [f"mix.stem_gains names {name!r} but the song has no such stem (stems: {sorted(applied)})"
                for name in settings.stem_gains if name not in applied]
    mix, reduction = limit_peaks(mix, sr, settings.limiter)
    return MixResult(audio=mix, sample_rate=sr, vocal_gain_db=float(settings.vocal_gain_db),
                     stem_gains_db=applied, limiter_reduction_db=reduction, warnings=warnings)


def stems_from_files(paths: Sequence[str | os.PathLike]) -> Iterable[tuple[str, np.ndarray, int]]:
    """Lazily decode accompaniment stems: yields ``(file stem name, audio [channels, samples], sr)``."""
    from ai_singer.audio import load_audio

    for path in paths:
        audio, sr = load_audio(path)
        yield Path(path).stem, audio, sr


# --------------------------------------------------------------------------------------------------
# Concatenation
# --------------------------------------------------------------------------------------------------

@dataclass
class ConcatResult:
    """What :func:`concat_tracks` wrote."""

    path: Path
    sample_rate: int
    channels: int
    samples: int
    crossfade_samples: list[int]
    #: one line per join whose crossfade had to be shorter than asked (a track shorter than the crossfade)
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


def equal_power_fades(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in), float32 ``[n]``: cos/sin quarter waves with ``out**2 + in**2 == 1``."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    return np.cos(0.5 * np.pi * t).astype(np.float32), np.sin(0.5 * np.pi * t).astype(np.float32)


def concat_tracks(paths: Sequence[str | os.PathLike], out: str | os.PathLike, crossfade_s: float = 0.0,
                  subtype: str = "PCM_24") -> ConcatResult:
    """Concatenate audio files into ``out`` (``.wav`` or ``.flac``), with equal-power crossfades.

    Every track is converted to the first track's sample rate and channel count (see
    :func:`conform_channels`). Each join overlaps the end of the joined-so-far audio with the start of
    the next track by ``crossfade_s`` (shortened to the shorter of the two when a track is shorter, with a
    line in ``warnings`` saying so), so the output has ``sum(lengths) - sum(crossfades)`` samples. Raises
    AudioError for unreadable inputs and ValueError for an empty list or a negative or non-finite crossfade.
    """
    from ai_singer.audio import load_audio, write_audio

    if not paths:
        raise ValueError("concat_tracks needs at least one track")
    if not (math.isfinite(crossfade_s) and crossfade_s >= 0):
        raise ValueError(f"crossfade must be a number of seconds >= 0, got {crossfade_s}")
    first, sr = load_audio(paths[0])
    channels = first.shape[0]
    pieces: list[np.ndarray] = [first]
    crossfades: list[int] = []
    warnings: list[str] = []
    want = int(round(crossfade_s * sr))
    for index, path in enumerate(paths[1:], start=1):
        audio, track_sr = load_audio(path)
        audio = conform(audio, track_sr, sr, channels)
        n = min(want, pieces[-1].shape[1], audio.shape[1])
        if n < want:
            shorter = Path(paths[index - 1]).name if pieces[-1].shape[1] <= audio.shape[1] else Path(path).name
            warnings.append(f"the crossfade into {Path(path).name} is {n / sr:.2f} s instead of {crossfade_s:g} s: "
                            f"{shorter} is shorter than the crossfade")
        if n > 0:
            fade_out, fade_in = equal_power_fades(n)
            tail = pieces[-1][:, -n:] * fade_out + audio[:, :n] * fade_in
            pieces[-1] = pieces[-1][:, :-n]
            pieces.append(tail)
            audio = audio[:, n:]
        crossfades.append(n)
        pieces.append(audio)
    joined = np.concatenate(pieces, axis=1)
    write_audio(out, joined if channels > 1 else joined[0], sr, subtype=subtype)
    return ConcatResult(path=Path(out), sample_rate=sr, channels=channels, samples=int(joined.shape[1]),
                        crossfade_samples=crossfades, warnings=warnings)


# --------------------------------------------------------------------------------------------------
# The rest gate: the converted vocal is exactly silent where the source rests
# --------------------------------------------------------------------------------------------------

_GATE_HOP_S = 0.01


def _active_frames(mono: np.ndarray, sr: int, threshold_db: float, hold_s: float) -> tuple[np.ndarray, int]:
    """Per 10 ms frame: the source is at or above ``threshold_db`` there, widened by ``hold_s`` on both
    sides. Returns (bool [frames], hop samples). Computed block by block (no whole-song temporaries)."""
    from ai_singer.audio import frame_db

    hop = max(1, int(round(_GATE_HOP_S * sr)))
    block = hop * max(1, _BLOCK // hop)
    active = np.concatenate([frame_db(mono[start: start + block], hop) >= threshold_db
                             for start in range(0, mono.shape[0], block)] or [np.zeros(0, bool)])
    hold = int(math.ceil(hold_s * sr / hop))
    if hold and active.any():
        active = np.convolve(active.astype(np.float32), np.ones(2 * hold + 1, np.float32), mode="same") > 0.5
    return active, hop


def rest_gate(mono: np.ndarray, sr: int, threshold_db: float, hold_s: float, ramp_s: float,
              start: int = 0, stop: int | None = None, frames: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """The rest gate, float32 ``[stop - start]`` in [0, 1], for samples ``[start, stop)`` of ``mono``.

    1 where the source sings (10 ms frames at or above ``threshold_db``, widened by ``hold_s``), exactly 0 in
    the rests, with linear fades of ``ramp_s`` centred on the edges of the widened region. The fades
    reach at most ``ramp_s / 2`` beyond it, so wherever the source stays below the threshold for longer
    than ``2 * hold_s + ramp_s`` the middle of that rest is exactly 0.
    """
    active, hop = frames if frames is not None else _active_frames(mono, sr, threshold_db, hold_s)
    n_samples = mono.shape[0]
    stop = n_samples if stop is None else stop
    ramp = max(1, int(round(ramp_s * sr)))
    half = ramp // 2
    # Samples [start - half, stop - half + ramp) of the widened mask, as a running sum over ``ramp``.
    lo, hi = start - half, stop - half + ramp - 1
    index = np.arange(lo, hi)
    inside = (index >= 0) & (index < n_samples)
    mask = np.zeros(index.shape[0], dtype=np.float32)
    frame_index = np.clip(index // hop, 0, max(len(active) - 1, 0))
    if len(active):
        mask[inside] = active[frame_index[inside]]
    if ramp == 1:
        return mask
    csum = np.concatenate([[0.0], np.cumsum(mask, dtype=np.float64)])
    return ((csum[ramp:] - csum[:-ramp]) / ramp).astype(np.float32)


def apply_rest_gate(output: np.ndarray, mono: np.ndarray, sr: int, threshold_db: float, hold_s: float,
                    ramp_s: float) -> None:
    """``output *= rest_gate(mono, ...)`` block by block (bounded temporary memory)."""
    frames = _active_frames(mono, sr, threshold_db, hold_s)
    for start in range(0, output.shape[0], _BLOCK):
        stop = min(start + _BLOCK, output.shape[0])
        output[start:stop] *= rest_gate(mono, sr, threshold_db, hold_s, ramp_s, start, stop, frames)
