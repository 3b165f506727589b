"""Synthetic singers: the voice parameters that make one singer sound unlike another.

A singer is drawn deterministically from ``(seed, index)``. Voice types cycle so that any number of
singers spans low and high voices; within a type, every parameter is drawn from a range.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .phones import N_FORMANTS

# name: (tonic MIDI note, vocal-tract formant factor range). The tonic sits near the bottom third of the
# range: melodies span about -7..+14 semitones around it.
VOICE_TYPES: dict[str, tuple[float, tuple[float, float]]] = {
    "soprano": (64.0, (1.17, 1.30)),
    "bass": (45.0, (0.86, 0.96)),
    "tenor": (52.0, (0.98, 1.10)),
    "alto": (57.0, (1.08, 1.20)),
    "baritone": (48.0, (0.92, 1.03)),
    "mezzo": (60.0, (1.12, 1.24)),
}
VOICE_TYPE_ORDER = tuple(VOICE_TYPES)

SINGER_STREAM = 1  # seed stream id for singers (see corpus.derive_rng)


@dataclass(frozen=True)
class SingerVoice:
    """Everything that defines one synthetic singer.

    ``formant_factor``: vocal-tract factor, all formants are multiplied by it (shorter tract = higher).
    ``formant_fine``: an extra per-formant factor (F1..F7), the singer's own tract shape.
    ``tilt_db_per_octave``: glottal source slope above the glottal formant (more negative = darker).
    ``breathiness``: aspiration noise level relative to the harmonics (0 = none).
    ``jitter``: relative F0 perturbation (fraction); ``shimmer``: relative amplitude perturbation.
    """

    name: str
    voice_type: str
    tonic_midi: float
    formant_factor: float
    formant_fine: tuple[float, ...]
    bandwidth_factor: float
    tilt_db_per_octave: float
    singer_formant_db: float
    singer_formant_hz: float
    breathiness: float
    jitter: float
    shimmer: float
    vibrato_rate_hz: float
    vibrato_depth_cents: float
    vibrato_onset_s: float
    portamento_s: float
    drift_cents: float
    level_db: float

    def to_json(self) -> dict:
        data = asdict(self)
        data["formant_fine"] = list(self.formant_fine)
        return data


def make_singer(index: int, rng: np.random.Generator) -> SingerVoice:
    """Singer number ``index`` (its voice type cycles through ``VOICE_TYPE_ORDER``) drawn from ``rng``."""
    voice_type = VOICE_TYPE_ORDER[index % len(VOICE_TYPE_ORDER)]
    tonic, (factor_low, factor_high) = VOICE_TYPES[voice_type]
    u = rng.uniform

    def r(x: float) -> float:
        return float(round(x, 4))

    return SingerVoice(
        name=f"s{index:02d}_{voice_type}",
        voice_type=voice_type,
        tonic_midi=r(tonic + u(-2.0, 2.0)),
        formant_factor=r(u(factor_low, factor_high)),
        formant_fine=tuple(r(x) for x in np.exp(rng.normal(0.0, 0.07, N_FORMANTS))),
        bandwidth_factor=r(u(0.7, 1.6)),
        tilt_db_per_octave=r(u(-13.0, -2.0)),
        singer_formant_db=r(u(0.0, 14.0)),
        singer_formant_hz=r(u(2600.0, 3300.0)),
        breathiness=r(u(0.0, 0.4)),
        jitter=r(u(0.002, 0.01)),
        shimmer=r(u(0.02, 0.12)),
        vibrato_rate_hz=r(u(4.6, 6.8)),
        vibrato_depth_cents=r(u(15.0, 90.0)),
        vibrato_onset_s=r(u(0.12, 0.4)),
        portamento_s=r(u(0.04, 0.14)),
        drift_cents=r(u(3.0, 12.0)),
        level_db=r(u(-3.0, 0.0)),
    )
