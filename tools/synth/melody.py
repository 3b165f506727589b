"""Melodies with lyrics: notes in a key over a chord progression, one sung syllable per note.

Pitches are semitones relative to the singer's tonic (plus the phrase's ``key_shift``), so the same
``Phrase`` sung by a bass and a soprano has the same melody relative to each range and exactly the
same timing: that is what makes parallel renditions possible. Times are in seconds from the start
of the clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phones import CODAS, CONSONANT_SECONDS, CONSONANTS, PHONES, PHONE_IDS, VOWELS

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord progressions as scale degrees (0 = I) of each bar's root.
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 0), (5, 3, 0, 4), (0, 3, 0, 4))
# Melody range in scale degrees around the tonic (-3 = a fourth below, 7 = the octave).
DEGREE_LOW, DEGREE_HIGH = -3, 7
# Rhythm patterns of one 4/4 bar, in beats.
BAR_RHYTHMS = ((1, 1, 1, 1), (2, 1, 1), (1.5, 0.5, 2), (1, 0.5, 0.5, 2), (0.5, 0.5, 1, 2), (3, 1), (1, 1, 2),
               (2, 2), (1, 1, 1.5, 0.5))
BEATS_PER_BAR = 4
# Consonants may take at most this share of a note; longer ones are shortened proportionally.
MAX_CONSONANT_SHARE = 0.45


def degree_to_semitones(degree: int, scale: str) -> int:
    """Semitones above the tonic of scale degree ``degree`` (may be negative or above 6)."""
    steps = SCALES[scale]
    return 12 * (degree // 7) + steps[degree % 7]


@dataclass(frozen=True)
class Note:
    """One note: ``beats`` long from ``start_beat`` (beats from the start of singing).

    ``degree`` is None for a rest; ``syllable`` is the sung phones (empty for a rest).
    """

    start_beat: float
    beats: float
    degree: int | None
    syllable: tuple[str, ...]

    def to_json(self) -> dict:
        return {"start_beat": self.start_beat, "beats": self.beats, "degree": self.degree,
                "syllable": list(self.syllable)}


@dataclass(frozen=True)
class Phrase:
    """A sung phrase (or a whole song's vocal line).

    Singing starts at ``lead_in_s``; ``chords[b]`` is the root degree of bar ``b`` counted from there.
    """

    phrase_id: str
    tempo_bpm: float
    scale: str
    key_shift: int
    chords: tuple[int, ...]
    notes: tuple[Note, ...]
    lead_in_s: float
    tail_s: float

    @property
    def beat_s(self) -> float:
        return 60.0 / self.tempo_bpm

    @property
    def sung_beats(self) -> float:
        last = self.notes[-1]
        return last.start_beat + last.beats

    @property
    def seconds(self) -> float:
        return self.lead_in_s + self.sung_beats * self.beat_s + self.tail_s

    @property
    def lyrics(self) -> str:
        return " ".join("".join(n.syllable) if n.syllable else "_" for n in self.notes)

    def semitones(self, note: Note) -> float:
        """Pitch of ``note`` in semitones above the singer's tonic (key shift included)."""
        if note.degree is None:
            raise ValueError("a rest has no pitch")
        return float(self.key_shift + degree_to_semitones(note.degree, self.scale))

    def note_times(self, note: Note) -> tuple[float, float]:
        start = self.lead_in_s + note.start_beat * self.beat_s
        return start, start + note.beats * self.beat_s

    def to_json(self) -> dict:
        return {"phrase_id": self.phrase_id, "tempo_bpm": self.tempo_bpm, "scale": self.scale,
                "key_shift": self.key_shift, "chords": list(self.chords), "lead_in_s": self.lead_in_s,
                "tail_s": self.tail_s, "seconds": round(self.seconds, 6), "lyrics": self.lyrics,
                "notes": [n.to_json() for n in self.notes]}


def phone_segments(phrase: Phrase) -> list[tuple[str, float, float]]:
    """The phone timeline ``[(symbol, start_s, end_s)]`` of ``phrase``, silence not listed.

    Onset consonants start on the note, coda consonants end with it, the vowel fills the rest (so a
    long note stretches its vowel).
    """
    segments: list[tuple[str, float, float]] = []
    kinds = {p.symbol: p.kind for p in PHONES}
    for note in phrase.notes:
        if not note.syllable:
            continue
        start, end = phrase.note_times(note)
        vowel_at = next(i for i, s in enumerate(note.syllable) if kinds[s] == "vowel")
        onset, vowel, coda = note.syllable[:vowel_at], note.syllable[vowel_at], note.syllable[vowel_at + 1:]
        onset_s = [CONSONANT_SECONDS[kinds[s]] for s in onset]
        coda_s = [CONSONANT_SECONDS[kinds[s]] for s in coda]
        total = sum(onset_s) + sum(coda_s)
        limit = MAX_CONSONANT_SHARE * (end - start)
        scale = min(1.0, limit / total) if total > 0 else 1.0
        t = start
        for symbol, dur in zip(onset, onset_s):
            segments.append((symbol, t, t + dur * scale))
            t += dur * scale
        vowel_end = end - sum(coda_s) * scale
        segments.append((vowel, t, vowel_end))
        t = vowel_end
        for symbol, dur in zip(coda, coda_s):
            segments.append((symbol, t, t + dur * scale))
            t += dur * scale
    return segments


def _chord_tones(root: int) -> list[int]:
    tones = {root + offset + 7 * octave for offset in (0, 2, 4) for octave in (-2, -1, 0, 1, 2)}
    return sorted(t for t in tones if DEGREE_LOW <= t <= DEGREE_HIGH)


def _syllable(rng: np.random.Generator, seconds: float) -> tuple[str, ...]:
    phones: list[str] = []
    if rng.random() < 0.78:
        phones.append(str(rng.choice(CONSONANTS)))
    phones.append(str(rng.choice(VOWELS)))
    if seconds >= 0.35 and rng.random() < 0.22:
        phones.append(str(rng.choice(CODAS)))
    return tuple(phones)


def make_notes(rng: np.random.Generator, n_beats: float, chords: tuple[int, ...], beat_s: float,
               allow_rests: bool = True, first_bar: int = 0) -> list[Note]:
    """A melody of ``n_beats`` beats over ``chords`` (one root per bar, cycling), starting at beat 0.

    Strong beats land on chord tones near the previous note, weak beats move by small steps.
    The last note is never a rest.
    """
    durations: list[float] = []
    while sum(durations) < n_beats:
        for beats in BAR_RHYTHMS[int(rng.integers(len(BAR_RHYTHMS)))]:
            remaining = n_beats - sum(durations)
            if remaining <= 0:
                break
            durations.append(float(min(beats, remaining)))
    notes: list[Note] = []
    degree = int(rng.choice(_chord_tones(chords[first_bar % len(chords)])[1:-1] or [0]))
    beat = 0.0
    for index, beats in enumerate(durations):
        bar = first_bar + int(beat // BEATS_PER_BAR)
        last = index == len(durations) - 1
        if allow_rests and 0 < index and not last and beats <= 1.0 and rng.random() < 0.1:
            notes.append(Note(beat, beats, None, ()))
            beat += beats
            continue
        if beat % 2 == 0:
            tones = _chord_tones(chords[bar % len(chords)])
            nearest = sorted(tones, key=lambda t: (abs(t - degree), t))[:2]
            degree = int(nearest[0] if rng.random() < 0.7 or len(nearest) < 2 else nearest[1])
        else:
            step = int(rng.choice((-2, -1, -1, 0, 1, 1, 2)))
            degree = int(np.clip(degree + step, DEGREE_LOW, DEGREE_HIGH))
        notes.append(Note(beat, beats, degree, _syllable(rng, beats * beat_s)))
        beat += beats
    return notes


def make_phrase(rng: np.random.Generator, phrase_id: str, seconds: float) -> Phrase:
    """A phrase of about ``seconds`` (including a short lead-in and tail of silence)."""
    tempo = float(round(rng.uniform(84.0, 132.0)))
    lead_in = float(round(rng.uniform(0.2, 0.4), 3))
    tail = float(round(rng.uniform(0.3, 0.5), 3))
    beat_s = 60.0 / tempo
    n_beats = max(2.0, round((seconds - lead_in - tail) / beat_s * 2) / 2)
    chords = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    scale = "major" if rng.random() < 0.6 else "minor"
    notes = make_notes(rng, n_beats, chords, beat_s)
    return Phrase(phrase_id, tempo, scale, int(rng.integers(-2, 3)), chords, tuple(notes), lead_in, tail)


def make_song_line(rng: np.random.Generator, song_id: str, seconds: float) -> Phrase:
    """A song's vocal line: a one-bar count-in, then two-bar phrases each ending in a breath rest,
    until about ``seconds``; the chords cycle through one progression."""
    tempo = float(round(rng.uniform(84.0, 120.0)))
    beat_s = 60.0 / tempo
    bar_s = BEATS_PER_BAR * beat_s
    chords = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    scale = "major" if rng.random() < 0.6 else "minor"
    n_sections = max(1, int(round((seconds - 2 * bar_s) / (2 * bar_s))))
    notes: list[Note] = []
    for section in range(n_sections):
        rest_beats = float(rng.choice((1.0, 1.5, 2.0)))
        first_beat = section * 2 * BEATS_PER_BAR
        for note in make_notes(rng, 2 * BEATS_PER_BAR - rest_beats, chords, beat_s, first_bar=2 * section):
            notes.append(Note(first_beat + note.start_beat, note.beats, note.degree, note.syllable))
        if section < n_sections - 1:
            notes.append(Note(first_beat + 2 * BEATS_PER_BAR - rest_beats, rest_beats, None, ()))
    last = notes[-1]
    sung = last.start_beat + last.beats
    tail = (2 * BEATS_PER_BAR * n_sections - sung) * beat_s + bar_s  # fill the last section, then one bar
    return Phrase(song_id, tempo, scale, int(rng.integers(-2, 3)), chords, tuple(notes), bar_s, tail)


def validate_syllables(phrase: Phrase) -> None:
    """Every sung note has exactly one vowel and only known phones (a clear error otherwise)."""
    for note in phrase.notes:
        unknown = [s for s in note.syllable if s not in PHONE_IDS]
        if unknown:
            raise ValueError(f"phrase {phrase.phrase_id}: unknown phones {unknown}")
        if note.syllable and sum(s in VOWELS for s in note.syllable) != 1:
            raise ValueError(f"phrase {phrase.phrase_id}: syllable {note.syllable} needs exactly one vowel")
