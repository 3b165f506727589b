"""The phone inventory of the synthetic corpus: vowels with formant targets and a few consonants.

Formant targets are for a reference adult vocal tract (Peterson & Barney style male averages);
each singer scales them by its vocal-tract factor. Phone id 0 is silence. Ids index the frame-level
labels (``<clip>.labels.npy``, int16) and ``phones.json``.
"""
from __future__ import annotations

from dataclasses import dataclass

# Shared upper formants (F4..F7) of the reference tract, Hz; F6/F7 extend the voiced spectrum upward.
UPPER_FORMANTS_HZ = (3350.0, 3850.0, 4900.0, 5900.0)
UPPER_BANDWIDTHS_HZ = (220.0, 280.0, 420.0, 520.0)
N_FORMANTS = 7

KINDS = ("silence", "vowel", "nasal", "liquid", "fricative", "plosive")


@dataclass(frozen=True)
class Phone:
    """One phone.

    ``formants_hz``/``bandwidths_hz``: F1..F3 targets (voiced phones only; F4.. are shared).
    ``voiced_gain``: level of the voiced source relative to an open vowel (0 = voiceless).
    ``noise_band_hz``: (low, high) band of the frication / burst noise (voiceless phones), scaled by
    the singer's vocal-tract factor. ``noise_level``: RMS of that noise relative to the voiced RMS.
    ``zero_hz``: frequency of a nasal anti-resonance (0 = none).
    """

    symbol: str
    kind: str
    formants_hz: tuple[float, float, float] | None = None
    bandwidths_hz: tuple[float, float, float] = (80.0, 100.0, 150.0)
    voiced_gain: float = 0.0
    noise_band_hz: tuple[float, float] | None = None
    noise_level: float = 0.0
    zero_hz: float = 0.0

    @property
    def is_voiced(self) -> bool:
        return self.voiced_gain > 0.0


PHONES: tuple[Phone, ...] = (
    Phone("sil", "silence"),
    # vowels
    Phone("a", "vowel", (730.0, 1090.0, 2440.0), (90.0, 110.0, 160.0), 1.0),
    Phone("e", "vowel", (530.0, 1840.0, 2480.0), (70.0, 100.0, 150.0), 1.0),
    Phone("i", "vowel", (270.0, 2290.0, 3010.0), (60.0, 110.0, 170.0), 0.9),
    Phone("o", "vowel", (570.0, 840.0, 2410.0), (80.0, 90.0, 150.0), 1.0),
    Phone("u", "vowel", (300.0, 870.0, 2240.0), (60.0, 90.0, 150.0), 0.9),
    Phone("ae", "vowel", (660.0, 1720.0, 2410.0), (90.0, 110.0, 160.0), 1.0),
    Phone("ax", "vowel", (500.0, 1500.0, 2500.0), (80.0, 100.0, 150.0), 0.95),
    # voiced consonants
    Phone("m", "nasal", (250.0, 1100.0, 2200.0), (60.0, 250.0, 350.0), 0.35, zero_hz=1000.0),
    Phone("n", "nasal", (250.0, 1500.0, 2500.0), (60.0, 250.0, 350.0), 0.35, zero_hz=1600.0),
    Phone("l", "liquid", (360.0, 1300.0, 2800.0), (70.0, 150.0, 200.0), 0.6),
    Phone("r", "liquid", (420.0, 1250.0, 1650.0), (80.0, 150.0, 150.0), 0.6),
    # voiceless fricatives: shaped noise
    Phone("s", "fricative", noise_band_hz=(4200.0, 9500.0), noise_level=0.22),
    Phone("sh", "fricative", noise_band_hz=(2100.0, 5500.0), noise_level=0.22),
    Phone("f", "fricative", noise_band_hz=(1300.0, 9000.0), noise_level=0.06),
    # voiceless plosives: closure silence, then a burst in this band
    Phone("p", "plosive", noise_band_hz=(400.0, 2000.0), noise_level=0.45),
    Phone("t", "plosive", noise_band_hz=(3000.0, 8000.0), noise_level=0.55),
    Phone("k", "plosive", noise_band_hz=(1400.0, 3400.0), noise_level=0.55),
)

PHONE_IDS: dict[str, int] = {phone.symbol: index for index, phone in enumerate(PHONES)}
SILENCE_ID = 0
VOWELS = tuple(p.symbol for p in PHONES if p.kind == "vowel")
CONSONANTS = tuple(p.symbol for p in PHONES if p.kind in ("nasal", "liquid", "fricative", "plosive"))
# Consonants that may close a syllable.
CODAS = ("m", "n", "l", "r", "s", "t")

# Nominal consonant durations in seconds (shortened on fast notes, see melody.syllable_timing).
CONSONANT_SECONDS = {"nasal": 0.07, "liquid": 0.06, "fricative": 0.10, "plosive": 0.075}
# Fraction of a plosive segment that is closure (silence); the rest is the burst.
PLOSIVE_CLOSURE_FRACTION = 0.65


def phone_id(symbol: str) -> int:
    """Id of ``symbol``; a clear error for an unknown phone."""
    try:
        return PHONE_IDS[symbol]
    except KeyError:
        raise ValueError(f"unknown phone {symbol!r}; known: {', '.join(PHONE_IDS)}") from None


def inventory(label_rate_hz: int, sample_rate: int) -> dict:
    """The ``phones.json`` document: label framing and one entry per phone id."""
    return {
        "format_version": 1,
        "label_rate_hz": label_rate_hz,
        "label_hop_samples": sample_rate // label_rate_hz,
        "sample_rate": sample_rate,
        "label_dtype": "int16",
        "frame_centre": "frame i covers samples [i*hop, (i+1)*hop) and is labelled by the phone at its centre",
        "silence_id": SILENCE_ID,
        "phones": [
            {"id": index, "symbol": phone.symbol, "kind": phone.kind, "voiced": phone.is_voiced}
            for index, phone in enumerate(PHONES)
        ],
    }
