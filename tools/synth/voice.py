"""The source-filter singing synthesiser.

Source: a band-limited pulse train (a closed-form sum of equal-amplitude harmonics up to 0.45 * SR)
following the F0 contour, with jitter, shimmer and pulse-synchronous aspiration noise.
Filter: per STFT frame, a minimum-phase vocal-tract envelope built from a cascade of formant
resonators (F1..F7, targets interpolated between phones and smoothed for coarticulation, scaled by
the singer's vocal-tract factor), an optional nasal anti-resonance, the singer's glottal spectral
tilt and "singer's formant". Voiceless consonants are band-passed noise added in the time domain
(fricatives as shaped noise, plosives as closure silence + a decaying burst).

Everything is vectorised over samples or frames; a 4 s phrase at 44.1 kHz renders in a few tens of
milliseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft

from .melody import Phrase, phone_segments
from .phones import (N_FORMANTS, PHONES, PHONE_IDS, PLOSIVE_CLOSURE_FRACTION, UPPER_BANDWIDTHS_HZ,
                     UPPER_FORMANTS_HZ)
from .singers import SingerVoice

VOICED_RMS = 0.1          # RMS of the voiced part before the singer's level
NOISE_FLOOR_DB = -72.0    # a faint noise floor, so silence is never digital zero
HARMONIC_LIMIT = 0.45     # highest harmonic, as a fraction of the sample rate
COARTICULATION_S = 0.06   # smoothing of formant tracks between phones
VOICING_RAMP_S = 0.012    # onset/offset ramp of the voiced source
HIGH_RESONANCE_SPACING_HZ = 1050.0   # spacing of the resonances above F7 (reference tract)
HIGH_RESONANCE_BANDWIDTH_HZ = 600.0   # bandwidth of the first of them; grows with frequency
FRAME_BLOCK = 256                     # STFT frames filtered at a time
VOICED_THRESHOLD = 0.1    # voiced-source gain above which a frame counts as voiced in the F0 labels


@dataclass(frozen=True)
class Rendition:
    """One rendered clip.

    ``audio``: float32 [n_frames * label_hop]; ``labels``: int16 [n_frames] phone ids (phones.PHONES),
    frame i labelled by the phone at sample ``i * label_hop + label_hop // 2``; ``f0_hz``: float32
    [n_frames], the intended F0 (melody + portamento + vibrato + drift, no jitter) at the same frame
    centres, 0 where the voice is off.
    """

    audio: np.ndarray
    labels: np.ndarray
    f0_hz: np.ndarray
    sample_rate: int
    label_hop: int


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(midi) - 69.0) / 12.0)


def _smooth_noise(rng: np.random.Generator, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """Unit-variance random values at ``rate_hz`` linearly interpolated to ``n`` samples [n]."""
    n_points = int(math.ceil(n * rate_hz / sr)) + 2
    points = rng.standard_normal(n_points)
    return np.interp(np.arange(n) * (rate_hz / sr), np.arange(n_points), points)


def _moving_average(x: np.ndarray, size: int) -> np.ndarray:
    """Centred moving average of ``x`` [N] over ``size`` samples, edges held: [N]."""
    if size <= 1:
        return x.copy()
    left = size // 2
    padded = np.concatenate([np.full(left + 1, x[0]), x, np.full(size - left, x[-1])])
    sums = np.cumsum(padded)
    return (sums[size:size + len(x)] - sums[:len(x)]) / size


def _fft_convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full linear convolution of two 1-D arrays via the FFT: [len(x) + len(kernel) - 1]."""
    n = len(x) + len(kernel) - 1
    size = sp_fft.next_fast_len(n, real=True)
    return sp_fft.irfft(sp_fft.rfft(x, size) * sp_fft.rfft(kernel, size), size)[:n]


def _butterworth_filter(x: np.ndarray, sr: int, low_hz: float | None, high_hz: float | None,
                        order: int) -> np.ndarray:
    """Zero-phase Butterworth-magnitude high-pass (``low_hz``), low-pass (``high_hz``) or band-pass
    (both) of ``x`` [N], applied in the frequency domain over the whole signal: [N]."""
    size = sp_fft.next_fast_len(len(x), real=True)
    freqs = np.maximum(sp_fft.rfftfreq(size, 1.0 / sr), 1e-3)
    gain = np.ones_like(freqs)
    if low_hz is not None:
        gain /= np.sqrt(1.0 + (low_hz / freqs) ** (2 * order))
    if high_hz is not None:
        gain /= np.sqrt(1.0 + (freqs / high_hz) ** (2 * order))
    return sp_fft.irfft(sp_fft.rfft(x, size) * gain, size)[:len(x)]


def _stft_sizes(sr: int) -> tuple[int, int]:
    n_fft = 2048 if sr >= 32000 else 1024
    return n_fft, n_fft // 4


def _log_resonance(freqs: np.ndarray, centre: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """Natural-log magnitude of a DC-normalised two-pole resonator: freqs [1, K], centre/bandwidth
    [F, 1] -> [F, K]."""
    half_bw2 = (0.5 * bandwidth) ** 2
    return (np.log(centre ** 2 + half_bw2)
            - 0.5 * np.log(((freqs - centre) ** 2 + half_bw2) * ((freqs + centre) ** 2 + half_bw2)))


def _minimum_phase(log_magnitude: np.ndarray, n_fft: int) -> np.ndarray:
    """Minimum-phase spectra [F, n_fft//2+1] (complex) from natural-log magnitudes of the same shape."""
    cepstrum = np.fft.irfft(log_magnitude, n=n_fft, axis=-1)
    cepstrum[:, 1:n_fft // 2] *= 2.0
    cepstrum[:, n_fft // 2 + 1:] = 0.0
    return np.exp(np.fft.rfft(cepstrum, axis=-1))


def _fill_and_smooth(track: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Fill NaN rows of ``track`` [F, C] by linear interpolation (edges held), then smooth along F."""
    frames = np.arange(track.shape[0])
    out = np.empty_like(track)
    for c in range(track.shape[1]):
        valid = ~np.isnan(track[:, c])
        out[:, c] = np.interp(frames, frames[valid], track[valid, c]) if valid.any() else 0.0
    pad = len(kernel) // 2
    padded = np.pad(out, ((pad, pad), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(out.shape[1])], axis=1)


def _phone_targets(singer: SingerVoice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per phone id: formants F1..F7 [P, 7] and bandwidths [P, 7] in Hz (NaN for voiceless phones and
    silence, which take their neighbours' values), nasal zero frequency [P] (NaN where none) and zero
    depth [P]."""
    n = len(PHONES)
    formants = np.full((n, N_FORMANTS), np.nan)
    bandwidths = np.full((n, N_FORMANTS), np.nan)
    zero_hz = np.full(n, np.nan)
    zero_depth = np.zeros(n)
    fine = np.asarray(singer.formant_fine)
    for index, phone in enumerate(PHONES):
        if phone.formants_hz is None:
            continue
        formants[index] = np.asarray(phone.formants_hz + UPPER_FORMANTS_HZ) * singer.formant_factor * fine
        bandwidths[index] = np.asarray(phone.bandwidths_hz + UPPER_BANDWIDTHS_HZ) * singer.bandwidth_factor
        if phone.zero_hz > 0:
            zero_hz[index] = phone.zero_hz * singer.formant_factor
            zero_depth[index] = 1.0
    return formants, bandwidths, zero_hz, zero_depth


def _static_log_envelope(singer: SingerVoice, freqs: np.ndarray, sr: int) -> np.ndarray:
    """The part of the envelope that does not change with the phone [1, K]: the uniform-tube
    resonances above F7 up to past the highest harmonic (a cascade needs those higher poles, or the
    spectrum collapses above F7) and the singer's formant."""
    spacing = HIGH_RESONANCE_SPACING_HZ * singer.formant_factor
    top = UPPER_FORMANTS_HZ[-1] * singer.formant_factor
    count = int((HARMONIC_LIMIT * sr + 2000.0 - top) / spacing)
    centres = top + spacing * np.arange(1, count + 1)
    log_env = np.zeros_like(freqs)
    for centre in centres:
        bandwidth = HIGH_RESONANCE_BANDWIDTH_HZ + 0.1 * (centre - centres[0])
        log_env += _log_resonance(freqs, np.array([[centre]]), np.array([[bandwidth]]))
    singer_formant_hz = singer.singer_formant_hz * singer.formant_factor
    log_env += (np.log(10.0) / 20.0 * singer.singer_formant_db
                * np.exp(-0.5 * ((freqs - singer_formant_hz) / 350.0) ** 2))
    return log_env


def _vocal_tract_filter(excitation: np.ndarray, frame_ids: np.ndarray, frame_f0: np.ndarray,
                        singer: SingerVoice, sr: int) -> np.ndarray:
    """Filter ``excitation`` [N] with the time-varying envelope; ``frame_ids``/``frame_f0`` give the
    phone and F0 at each STFT frame centre (frame f is centred on sample f * hop). Returns [N]."""
    n_fft, hop = _stft_sizes(sr)
    n = len(excitation)
    padded = np.pad(excitation, (n_fft // 2, n_fft // 2 + hop))
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    n_frames = frames.shape[0]
    ids = frame_ids[np.minimum(np.arange(n_frames), len(frame_ids) - 1)]
    f0 = frame_f0[np.minimum(np.arange(n_frames), len(frame_f0) - 1)][:, None]

    formants, bandwidths, zero_hz, zero_depth = _phone_targets(singer)
    kernel_len = max(1, int(round(COARTICULATION_S * sr / hop)) | 1)
    kernel = np.hanning(kernel_len + 2)[1:-1]
    kernel /= kernel.sum()
    tracks = _fill_and_smooth(np.concatenate([formants[ids], bandwidths[ids], zero_hz[ids, None],
                                              zero_depth[ids, None]], axis=1), kernel)
    freqs = (np.arange(n_fft // 2 + 1) * (sr / n_fft))[None, :]
    static_env = _static_log_envelope(singer, freqs, sr)
    db = np.log(10.0) / 20.0
    out = np.zeros(len(padded) + n_fft)
    quarters = n_fft // hop
    for first in range(0, n_frames, FRAME_BLOCK):  # blocks of frames bound the memory on long songs
        block = slice(first, min(first + FRAME_BLOCK, n_frames))
        part = tracks[block]
        log_env = np.repeat(static_env, part.shape[0], axis=0)
        for k in range(N_FORMANTS):
            log_env += _log_resonance(freqs, part[:, k:k + 1], part[:, N_FORMANTS + k:N_FORMANTS + k + 1])
        zero_track, depth_track = part[:, 2 * N_FORMANTS:2 * N_FORMANTS + 1], part[:, 2 * N_FORMANTS + 1:]
        log_env -= depth_track * _log_resonance(freqs, zero_track, np.full_like(zero_track, 250.0))
        glottal_hz = np.maximum(f0[block], 80.0)
        log_env += db * singer.tilt_db_per_octave * 0.5 * np.log2(1.0 + (freqs / glottal_hz) ** 2)
        spectra = np.fft.rfft(frames[block] * window, axis=-1) * _minimum_phase(log_env, n_fft)
        out_frames = (np.fft.irfft(spectra, n=n_fft, axis=-1) * window).reshape(-1, quarters, hop)
        count = out_frames.shape[0]
        for q in range(quarters):  # overlap-add: frame f, quarter q lands at (f + q) * hop
            start = (first + q) * hop
            out[start:start + count * hop] += out_frames[:, q, :].reshape(-1)
    norm = np.zeros_like(out)
    for q in range(quarters):
        norm[q * hop:q * hop + n_frames * hop] += np.tile(window[q * hop:(q + 1) * hop] ** 2, n_frames)
    start = n_fft // 2
    return out[start:start + n] / np.maximum(norm[start:start + n], 1e-3)


def _phone_timeline(phrase: Phrase, n: int, sr: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, float]]]:
    """Per sample: phone id (int16 [n]) and voiced-source target gain ([n], before ramps); plus the
    voiceless segments ``(phone id, start, end, level)``. Each note gets a random level (+-1.5 dB)."""
    phone_at = np.zeros(n, dtype=np.int16)
    voiced_target = np.zeros(n)
    noise_segments: list[tuple[int, int, int, float]] = []
    sung = [nt for nt in phrase.notes if nt.syllable]
    levels = [10 ** (rng.normal(0.0, 1.5) / 20) for _ in sung]
    note_starts = [phrase.note_times(nt)[0] for nt in sung]
    for symbol, start_s, end_s in phone_segments(phrase):
        a, b = int(round(start_s * sr)), int(round(end_s * sr))
        if b <= a:
            continue
        pid = PHONE_IDS[symbol]
        phone = PHONES[pid]
        phone_at[a:b] = pid
        level = levels[max(0, int(np.searchsorted(note_starts, start_s + 1e-9)) - 1)]
        voiced_target[a:b] = phone.voiced_gain * level
        if phone.kind in ("fricative", "plosive"):
            noise_segments.append((pid, a, b, level))
    return phone_at, voiced_target, noise_segments


def _f0_contour(phrase: Phrase, singer: SingerVoice, n: int, sr: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """(intended F0, source F0), Hz [n] each. Intended: the notes in the singer's key, joined by
    portamento glides, with delayed vibrato and slow drift; the source adds jitter. Rests hold the
    previous note's pitch (the voice is off there)."""
    sung = [nt for nt in phrase.notes if nt.syllable]
    starts = np.array([int(round(phrase.note_times(nt)[0] * sr)) for nt in sung])
    semitones = np.array([phrase.semitones(nt) for nt in sung])
    current = np.clip(np.searchsorted(starts, np.arange(n), side="right") - 1, 0, len(sung) - 1)
    glide_len = max(1, int(singer.portamento_s * sr))
    glide = np.hanning(glide_len + 2)[1:-1]
    glide /= glide.sum()
    target = np.concatenate([np.full(glide_len, semitones[current[0]]), semitones[current]])
    pitch = _fft_convolve(target, glide)[glide_len:glide_len + n]
    since_onset = (np.arange(n) - starts[current]) / sr
    vibrato_env = np.clip((since_onset - singer.vibrato_onset_s) / 0.3, 0.0, 1.0)
    rate = singer.vibrato_rate_hz * (1.0 + 0.04 * _smooth_noise(rng, n, sr, 2.0))
    pitch += singer.vibrato_depth_cents / 100.0 * vibrato_env * np.sin(2 * np.pi * np.cumsum(rate) / sr)
    pitch += singer.drift_cents / 100.0 * _smooth_noise(rng, n, sr, 3.0)
    f0_intended = midi_to_hz(singer.tonic_midi + pitch)
    f0_source = f0_intended * (1.0 + singer.jitter * _smooth_noise(rng, n, sr, 1000.0))
    return f0_intended, f0_source


def _glottal_source(f0_source: np.ndarray, voiced_gain: np.ndarray, singer: SingerVoice, sr: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Band-limited pulse train (sum of cos(k * phase), k = 1..H, H below HARMONIC_LIMIT * sr) with
    shimmer, plus pulse-synchronous high-passed aspiration noise, gated by ``voiced_gain``: [n]."""
    n = len(f0_source)
    phase = np.mod(2 * np.pi * np.cumsum(f0_source) / sr, 2 * np.pi)
    n_harmonics = np.floor(HARMONIC_LIMIT * sr / f0_source)
    denominator = 2.0 * np.sin(0.5 * phase)
    safe = np.abs(denominator) > 1e-9
    pulses = np.where(safe, np.sin((n_harmonics + 0.5) * phase) / np.where(safe, denominator, 1.0) - 0.5,
                      n_harmonics)
    pulses *= np.maximum(0.0, 1.0 + singer.shimmer * _smooth_noise(rng, n, sr, 200.0))
    aspiration = rng.standard_normal(n) * singer.breathiness * np.sqrt(sr / (2.0 * f0_source)) * 0.7
    aspiration *= 0.35 + 0.325 * (1.0 + np.cos(phase))
    pulses += _butterworth_filter(aspiration, sr, 1500.0, None, order=2)
    pulses *= voiced_gain
    return pulses


def _add_consonant_noise(audio: np.ndarray, noise_segments: list[tuple[int, int, int, float]],
                         singer: SingerVoice, sr: int, rng: np.random.Generator) -> None:
    """Add voiceless consonants to ``audio`` [n] in place: band-passed noise, level relative to the
    voiced RMS, made segment by segment (fricatives: the whole segment; plosives: closure silence,
    then a decaying burst)."""
    n = len(audio)
    smooth = max(1, int(0.004 * sr))
    margin = 4 * smooth
    for pid, a, b, level in noise_segments:
        phone = PHONES[pid]
        low, high = (np.asarray(phone.noise_band_hz) * singer.formant_factor).tolist()
        high = min(high, HARMONIC_LIMIT * sr)
        low = min(low, 0.6 * high)
        lo, hi = max(0, a - margin), min(n, b + margin)
        envelope = np.zeros(hi - lo)
        if phone.kind == "fricative":
            envelope[a - lo:b - lo] = level
        else:
            burst = a + int(round(PLOSIVE_CLOSURE_FRACTION * (b - a)))
            envelope[burst - lo:b - lo] = level * np.exp(-np.arange(b - burst) / (0.012 * sr))
        band = _butterworth_filter(rng.standard_normal(hi - lo), sr, low, high, order=4)
        band /= max(float(np.sqrt(np.mean(band ** 2))), 1e-12)
        audio[lo:hi] += VOICED_RMS * phone.noise_level * _moving_average(envelope, smooth) * band


def render_phrase(phrase: Phrase, singer: SingerVoice, sample_rate: int, rng: np.random.Generator,
                  label_rate_hz: int = 50) -> Rendition:
    """Sing ``phrase`` with ``singer``. Deterministic given ``rng``'s state.

    The clip is ``ceil(phrase.seconds * sr / hop) * hop`` samples long with ``hop = sr // label_rate_hz``,
    so the timing (and the labels) depend only on the phrase, never on the singer.
    """
    sr = int(sample_rate)
    if sr % label_rate_hz:
        raise ValueError(f"sample rate {sr} is not a multiple of the label rate {label_rate_hz} Hz")
    label_hop = sr // label_rate_hz
    n_labels = int(math.ceil(phrase.seconds * sr / label_hop - 1e-9))
    n = n_labels * label_hop

    phone_at, voiced_target, noise_segments = _phone_timeline(phrase, n, sr, rng)
    ramp = max(1, int(VOICING_RAMP_S * sr))
    voiced_gain = _moving_average(_moving_average(voiced_target, ramp), ramp)
    del voiced_target
    f0_intended, f0_source = _f0_contour(phrase, singer, n, sr, rng)
    excitation = _glottal_source(f0_source, voiced_gain, singer, sr, rng)
    del f0_source

    _, stft_hop = _stft_sizes(sr)
    frame_centres = np.minimum(np.arange(0, n + stft_hop, stft_hop), n - 1)
    audio = _vocal_tract_filter(excitation, phone_at[frame_centres], f0_intended[frame_centres], singer, sr)
    del excitation
    voiced_mask = voiced_gain > 0.5 * max(voiced_gain.max(), 1e-9)
    voiced_rms = float(np.sqrt(np.mean(audio[voiced_mask] ** 2))) if voiced_mask.any() else 1.0
    audio *= VOICED_RMS / max(voiced_rms, 1e-9)
    _add_consonant_noise(audio, noise_segments, singer, sr, rng)
    audio += 10 ** (NOISE_FLOOR_DB / 20) * rng.standard_normal(n)
    audio *= 10 ** (singer.level_db / 20)
    peak = float(np.max(np.abs(audio)))
    if peak > 0.95:
        audio *= 0.95 / peak

    centres = np.arange(n_labels) * label_hop + label_hop // 2
    labels = phone_at[centres].astype(np.int16)
    f0_labels = np.where(voiced_gain[centres] > VOICED_THRESHOLD, f0_intended[centres], 0.0).astype(np.float32)
    return Rendition(audio.astype(np.float32), labels, f0_labels, sr, label_hop)
