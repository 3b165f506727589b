"""Accompaniment stems for a synthetic song: a harmonic pad on the chords and a drum track in tempo.

Both follow the song's ``Phrase`` (tempo, scale, key shift, chord per bar counted from the end of the
lead-in) and have exactly the vocal stem's length. Chords are triads on the scale, voiced in a
fixed middle register whatever the singer's range.
"""
from __future__ import annotations

import numpy as np

from .melody import BEATS_PER_BAR, Phrase, degree_to_semitones
from .voice import midi_to_hz

PAD_ROOT_LOW_MIDI = 48.0   # chord roots are voiced in [48, 60): C3..B3
PAD_PARTIALS = 6
PAD_DETUNE_CENTS = 7.0
PAD_RMS = 0.05
DRUMS_PEAK = 0.5
FADE_OUT_S = 0.5


def _fade_out(x: np.ndarray, sr: int) -> np.ndarray:
    """Fade the last FADE_OUT_S seconds, so a stem cut at the vocal length ends without a click."""
    n = min(len(x), int(FADE_OUT_S * sr))
    x[len(x) - n:] *= np.linspace(1.0, 0.0, n)
    return x


def pad_stem(phrase: Phrase, tonic_midi: float, n_samples: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A soft pad playing one triad per bar: float32 [n_samples]. ``tonic_midi`` is the singer's tonic."""
    bar_s = BEATS_PER_BAR * phrase.beat_s
    key_midi = tonic_midi + phrase.key_shift
    key_pc = PAD_ROOT_LOW_MIDI + np.mod(key_midi - PAD_ROOT_LOW_MIDI, 12.0)
    out = np.zeros(n_samples)
    attack, release = 0.08, 0.25
    first_bar = -int(round(phrase.lead_in_s / bar_s))
    n_bars = int(np.ceil(n_samples / sr / bar_s)) + 1
    for bar in range(first_bar, first_bar + n_bars):
        start = int(round((phrase.lead_in_s + bar * bar_s) * sr))
        if start >= n_samples:
            break
        length = int(round((bar_s + release) * sr))
        a, b = max(start, 0), min(start + length, n_samples)
        if b <= a:
            continue
        t = (np.arange(a, b) - start) / sr
        env = np.minimum(1.0, t / attack) * np.clip((bar_s + release - t) / release, 0.0, 1.0)
        root = phrase.chords[bar % len(phrase.chords)] if bar >= 0 else phrase.chords[0]
        for offset in (0, 2, 4):
            semis = degree_to_semitones(root + offset, phrase.scale) - degree_to_semitones(root, phrase.scale)
            root_midi = key_pc + degree_to_semitones(root, phrase.scale)
            root_midi -= 12.0 * (root_midi >= PAD_ROOT_LOW_MIDI + 12.0)
            hz = float(midi_to_hz(root_midi + semis))
            for detune in (-PAD_DETUNE_CENTS, PAD_DETUNE_CENTS):
                f = hz * 2 ** (detune / 1200)
                phase0 = rng.uniform(0, 2 * np.pi)
                for k in range(1, PAD_PARTIALS + 1):
                    out[a:b] += env * np.sin(2 * np.pi * k * f * t + k * phase0) / k ** 1.5
    out = _fade_out(out, sr)
    rms = float(np.sqrt(np.mean(out ** 2)))
    return (out * (PAD_RMS / max(rms, 1e-12))).astype(np.float32)


def _kick(sr: int) -> np.ndarray:
    t = np.arange(int(0.35 * sr)) / sr
    sweep = 50.0 + 90.0 * np.exp(-t / 0.03)
    return np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.exp(-t / 0.12)


def _snare(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.25 * sr)) / sr
    noise = rng.standard_normal(len(t))
    noise = np.diff(noise, prepend=0.0) * 0.6  # brighter
    return (0.5 * np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.04) + noise * np.exp(-t / 0.06)) * 0.8


def _hat(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.06 * sr)) / sr
    noise = np.diff(rng.standard_normal(len(t)), n=2, prepend=(0.0, 0.0)) * 0.25
    return noise * np.exp(-t / 0.015)


def drum_stem(phrase: Phrase, n_samples: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Kick on beats 1 and 3, snare on 2 and 4, closed hats on eighths, from time 0 (the count-in bar
    included) to the end: float32 [n_samples]."""
    kick, snare, hat = _kick(sr), _snare(sr, rng), _hat(sr, rng)
    out = np.zeros(n_samples + len(kick))
    beat_s = phrase.beat_s
    first_beat = -int(round(phrase.lead_in_s / beat_s))
    eighth = 0
    while True:
        t = phrase.lead_in_s + (first_beat + eighth / 2) * beat_s
        start = int(round(t * sr))
        if start >= n_samples:
            break
        if start >= 0:
            velocity = 0.8 + 0.2 * rng.random()
            if eighth % 2 == 0:
                beat_in_bar = (eighth // 2) % BEATS_PER_BAR
                sample = kick if beat_in_bar in (0, 2) else snare
                out[start:start + len(sample)] += velocity * sample
            out[start:start + len(hat)] += 0.6 * velocity * hat
        eighth += 1
    out = _fade_out(out[:n_samples], sr)
    peak = float(np.max(np.abs(out)))
    return (out * (DRUMS_PEAK / max(peak, 1e-12))).astype(np.float32)
