"""Post-processing of an F0 track on its tracker's own time grid: what singing needs after the tracker.

- :func:`repair_octaves`: a voiced frame that sits about a whole number of octaves away from the median of
  the voiced frames around it (a tracker that locked onto the second harmonic or the sub-harmonic for a
  moment) is moved back by those octaves. A centred median keeps real leaps: a note longer than half
  the window owns the median on its side of the leap.
- :func:`median_smooth`: median of log-F0 over a short window inside each voiced run (single-frame spikes
  go; vibrato, ~150 ms per cycle, stays when the window is a few tens of ms).

Tracks are float64 ``[T]`` in Hz with ``0`` = unvoiced, at a regular step of ``step_s`` seconds.
"""
from __future__ import annotations

import warnings

import numpy as np

#: A frame counts as an octave error when its distance from the local median is within this many
#: octaves of a non-zero whole number of octaves (0.25 octave = 3 semitones).
OCTAVE_TOLERANCE = 0.25


def _window_frames(window_s: float, step_s: float) -> int:
    """Half-width in frames of a centred window of ``window_s`` seconds (0 = no window)."""
    return int(round(window_s / step_s / 2.0)) if step_s > 0 else 0


def _windows(values: np.ndarray, half: int) -> np.ndarray:
    """Centred windows of ``2 * half + 1`` frames over ``values`` [T], NaN beyond the edges: a view [T, W]."""
    return np.lib.stride_tricks.sliding_window_view(np.pad(values, half, constant_values=np.nan), 2 * half + 1)


def _nanmedian_rows(rows: np.ndarray) -> np.ndarray:
    """Median of each row's non-NaN values (NaN for a row without any): [rows]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row gives NaN, which is what we want
        return np.nanmedian(rows, axis=1)


def repair_octaves(f0: np.ndarray, step_s: float, window_s: float) -> np.ndarray:
    """Move voiced frames that are a whole number of octaves off the local median back onto it.

    Args:
        f0: Hz [T], 0 = unvoiced.
        step_s: seconds between frames.
        window_s: width of the centred window of voiced frames the median is taken over (0 = off).

    Returns:
        float64 [T]; unvoiced frames stay 0, voicing is unchanged.
    """
    f0 = np.asarray(f0, dtype=np.float64).copy()
    half = _window_frames(window_s, step_s)
    voiced = f0 > 0
    if half < 1 or voiced.sum() < 3:
        return f0
    octaves = np.where(voiced, np.log2(np.where(voiced, f0, 1.0)), np.nan)
    reference = _nanmedian_rows(_windows(octaves, half))
    offset = octaves - reference
    jump = np.round(offset)
    wrong = voiced & np.isfinite(offset) & (jump != 0) & (np.abs(offset - jump) <= OCTAVE_TOLERANCE)
    f0[wrong] = f0[wrong] / 2.0 ** jump[wrong]
    return f0


def median_smooth(f0: np.ndarray, step_s: float, window_s: float) -> np.ndarray:
    """Median of log-F0 over a centred window of ``window_s`` seconds, within each voiced run (unvoiced
    frames are neither changed nor used): float64 [T]. Near a run's ends the window shrinks symmetrically
    (a one-sided window would drag a gliding or vibrating edge toward the run's inside). ``window_s``
    shorter than three frames: unchanged."""
    f0 = np.asarray(f0, dtype=np.float64).copy()
    half = _window_frames(window_s, step_s)
    voiced = f0 > 0
    if half < 1 or not voiced.any():
        return f0
    octaves = np.log2(np.where(voiced, f0, 1.0))
    index = np.arange(len(f0))
    run_start = np.maximum.accumulate(np.where(voiced & ~np.r_[False, voiced[:-1]], index, 0))
    run_end = np.minimum.accumulate(np.where(voiced & ~np.r_[voiced[1:], False], index, len(f0))[::-1])[::-1]
    reach = np.minimum(np.minimum(index - run_start, run_end - index), half)  # the half-width each frame gets
    smoothed = octaves.copy()
    for k in range(1, half + 1):
        frames = voiced & (reach == k)
        if frames.any():
            smoothed[frames] = np.median(_windows(octaves, k)[frames], axis=1)  # whole windows inside the run
    f0[voiced] = 2.0 ** smoothed[voiced]
    return f0
