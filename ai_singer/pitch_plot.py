"""The per-singer pitch-range picture: a histogram of voiced F0 on a note-name axis with the median
marked, so a user sees at a glance where a singer sits (and how far a song must be transposed)."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ai_singer.atomic import atomic_path
from ai_singer.features.pitch import hz_to_midi

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def midi_note_name(midi: float) -> str:
    """Scientific pitch name of the nearest MIDI note: 69 -> "A4", 60 -> "C4", 61.4 -> "C#4"."""
    note = int(round(float(midi)))
    return f"{NOTE_NAMES[note % 12]}{note // 12 - 1}"


@functools.lru_cache(maxsize=None)
def _charmap(font_path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(font_path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def font_for(text: str) -> tuple[str | None, str]:
    """``(font file, text to draw)``: the default font when it has every glyph of ``text``, else an
    installed font that has them all, else the default font with the missing characters written as
    ``\\uXXXX`` escapes — never matplotlib's "Glyph missing" warning and a row of boxes."""
    from matplotlib import font_manager

    default = font_manager.findfont(font_manager.FontProperties())
    needed = {ord(ch) for ch in text if not ch.isspace()}
    if needed <= _charmap(default):
        return None, text
    for entry in font_manager.fontManager.ttflist:
        if "LastResort" in entry.fname:  # maps every code point to a placeholder box
            continue
        if needed <= _charmap(entry.fname):
            return entry.fname, text
    known = _charmap(default)
    return None, "".join(ch if ord(ch) in known or ch.isspace() else ch.encode("ascii", "backslashreplace").decode()
                         for ch in text)


def plot_pitch_range(voiced_f0_hz: np.ndarray, singer: str, out_path: str | os.PathLike,
                     median_hz: float | None = None) -> Path:
    """Write a PNG histogram (one bar per semitone) of ``voiced_f0_hz`` (float [n], Hz, all > 0) to
    ``out_path`` atomically, with the median marked; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    f0 = np.asarray(voiced_f0_hz, dtype=np.float64)
    f0 = f0[np.isfinite(f0) & (f0 > 0)]
    if f0.size == 0:
        raise ValueError(f"no voiced F0 values to plot for singer {singer!r}")
    midi = np.asarray(hz_to_midi(f0), dtype=np.float64)
    median_hz = float(np.median(f0)) if median_hz is None else float(median_hz)
    median_midi = float(hz_to_midi(np.array([median_hz]))[0])
    low, high = int(np.floor(midi.min())) - 1, int(np.ceil(midi.max())) + 1
    edges = np.arange(low, high + 1) + 0.5  # bins centred on whole notes
    figure, axes = plt.subplots(figsize=(8, 3.5), dpi=100)
    try:
        axes.hist(midi, bins=edges, color="#4c72b0", weights=np.full(midi.shape, 100.0 / midi.size))
        axes.axvline(median_midi, color="#c44e52", linewidth=2,
                     label=f"median {midi_note_name(median_midi)} ({median_hz:.0f} Hz)")
        step = 1 if high - low <= 24 else 2 if high - low <= 48 else 3
        ticks = [note for note in range(low + 1, high) if (note - (low + 1)) % step == 0]
        axes.set_xticks(ticks)
        axes.set_xticklabels([midi_note_name(note) for note in ticks], rotation=90, fontsize=8)
        axes.set_xlim(low, high)
        axes.set_xlabel("note")
        axes.set_ylabel("% of voiced frames")
        font_file, shown = font_for(singer)
        axes.set_title(f"{shown}: pitch range {midi_note_name(np.percentile(midi, 5))}"
                       f"–{midi_note_name(np.percentile(midi, 95))} (5th–95th percentile)",
                       **({"fontproperties": font_manager.FontProperties(fname=font_file)} if font_file else {}))
        axes.legend(loc="upper right")
        figure.tight_layout()
        with atomic_path(out_path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
    return Path(out_path)
