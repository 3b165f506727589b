"""Build a corpus of REAL voices made to sing, from recorded speech shipped by Debian packages.

    python tools/real_corpus.py --out data/real --seed 0 [--workers 2] [--quick] [--validation-dir DIR]

Sources (each an argument; the defaults are where Debian installs them; a missing one is named with
the package that provides it, and the run goes on with the rest; nothing is installed):
  asterisk-core-sounds-{en,es,fr,it,ru}-g722  prompts at 16 kHz: en+es Allison (f, one voice), fr June (f),
                                              it Carlo (m), ru IvrvoiceRU (f); transcripts from the
                                              asterisk-core-sounds-* docs
  festvox-ru                                  msu_ru_nsh_clunits: one male Russian speaker (~99 min)
  codec2-examples                             short 8 kHz clips, speakers named by file
  alsa-utils                                  a few short clips, one speaker
  --validation-dir DIR (optional)             three more voices for choosing candidates, never trained on:
                                              asterisk-prompt-it-menardi-wav (it, f), -es-co (es, f),
                                              -fr-armelle (fr, f), unpacked with dpkg -x into DIR (not
                                              installed: es-co and fr-armelle share core-sounds' folders);
                                              no transcripts (tools/real_sources.py)

Roles: train voices go into a base; two held-out voices (one low, one high, chosen from the numbers) are
what results are reported on; validation voices are what settings and candidate bases are chosen on, so
the reported numbers are not tuned on the voices they are measured with.

Each voice's speech is kept as it is (raw/<voice>/speech/) and made to sing with WORLD (raw/<voice>/sung/,
eval/<voice>/): the spectral envelope and aperiodicity of the speech are kept, its voiced stretches are
time-stretched (1.3-2x) and its F0 is replaced by a seeded melody in the voice's own range (notes of
0.25-1 s on a major or minor scale from median-3 to median+9 semitones, 40 ms legato glides, delayed
vibrato, rests where the speech is unvoiced). Sung eval phrases come with the exact F0 contour that was
imposed, at hop 512 / 44.1 kHz (frame i centred at (i + 0.5) * 512 / 44100 s, as ai_singer.features.pitch).

Layout (a contract with tools that read it):
  <out>/voices.json                     voices, their measured F0 and material, role (train / heldout /
                                        validation) and why
  <out>/raw/<voice>/speech/<clip>.wav   plain speech, original rate
  <out>/raw/<voice>/sung/<clip>.wav     the same speech made to sing, 44.1 kHz
  <out>/eval/<voice>/<phrase>.wav       held-out phrases (sung 44.1 kHz, or speech at the original rate),
  <out>/eval/<voice>/<phrase>.json      from source files none of which is in raw/
  <out>/eval/<voice>/<phrase>.f0.npy    (sung only) the imposed F0, Hz, 0 = unvoiced
  <out>/eval/<voice>/<phrase>.spoken.wav (sung without a transcript) the speech it was sung from
  <out>/report.json                     skipped sources and failed files with their reasons

The same seed gives byte-identical files, whatever the number of workers.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import multiprocessing
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `ai_singer` importable

from ai_singer.atomic import atomic_path, atomic_write_json  # noqa: E402
from tools.real_sources import DEBIAN, VALIDATION_HOW, Source, collect, decode, walk_files  # noqa: E402
from tools.settings_arguments import add_settings_arguments, settings_values  # noqa: E402

FORMAT_VERSION = 1
SUNG_SR = 44100
F0_HOP = 512
WORLD_FRAME_MS = 5.0
#: F0 search range of the WORLD analysis, Hz.
F0_FLOOR, F0_CEIL = 50.0, 800.0
#: F0 search range for the speech statistics, Hz (a lower ceiling keeps Praat from octave jumps on
#: the narrow-band 8 kHz clips).
SPEECH_F0_FLOOR, SPEECH_F0_CEIL = 55.0, 500.0
#: A voice of unknown sex (codec2, alsa) whose speech F0 median is below this is taken as male.
LOW_HIGH_SPLIT_HZ = 165.0
#: A source file counts as speech when it lasts this long, is this loud and this much of it is voiced.
MIN_SPEECH_S, MIN_RMS, MIN_VOICED_FRACTION = 0.5, 0.003, 0.2
#: Speech spans (after trimming silence) eligible for eval phrases, seconds.
EVAL_SPEECH_SPAN = (2.0, 6.0)
EVAL_SUNG_SPAN = (1.6, 3.3)  # the vowel stretch makes sung phrases ~1.3-1.8x longer: 2-6 s
#: Melody: semitones around the voice's speech F0 median, note lengths, glide, vibrato, vowel stretch.
RANGE_BELOW, RANGE_ABOVE = 3.0, 9.0
NOTE_S = (0.25, 1.0)
GLIDE_S = 0.04
VIBRATO_HZ = (5.0, 6.0)
VIBRATO_CENTS = (20.0, 60.0)
VIBRATO_DELAY_S = (0.15, 0.3)
VIBRATO_RAMP_S = 0.2
STRETCH = (1.3, 2.0)
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}

#: --quick renders at most 4 raw files per voice, none longer than this (s) unless the voice has no other.
QUICK_MAX_FILE_S = 20.0
#: Folder inside --out where pass 1 keeps ffmpeg-decoded audio (G.722, GSM) for pass 2 (removed at the end).
DECODE_CACHE = ".decoded"


class CorpusError(Exception):
    """A user mistake (bad argument, output folder that is not ours): one line, exit 2."""


# --------------------------------------------------------------------------------------------- settings


@dataclass
class Settings:
    out: Path
    seed: int = 0
    workers: int = 2
    quick: bool = False
    progress: bool = True
    asterisk_dir: Path = Path(DEBIAN["asterisk"])
    asterisk_doc_dir: Path = Path(DEBIAN["asterisk_docs"])
    festvox_ru_dir: Path = Path(DEBIAN["festvox_ru"])
    codec2_dir: Path = Path(DEBIAN["codec2"])
    alsa_dir: Path = Path(DEBIAN["alsa"])
    #: root of the unpacked validation packages (tools/real_sources.py); None = no validation voices
    validation_dir: Path | None = None
    #: minutes of speech made to sing per train voice / per held-out or validation voice (speech is kept whole)
    max_sung_minutes: float = 4.0
    heldout_sung_minutes: float = 10.0
    heldout_eval_sung: int = 12
    heldout_eval_speech: int = 6
    validation_eval_sung: int = 8
    validation_eval_speech: int = 4
    train_eval_sung: int = 4
    train_eval_speech: int = 2
    #: a held-out voice needs this much speech left for raw/ (to fine-tune an adapter)
    min_heldout_minutes: float = 5.0
    #: comma-separated voice names overriding the held-out choice ("" = decide from the numbers)
    heldout: str = ""
    #: --quick: at most this many source files per voice, and small caps
    quick_files_per_voice: int = 24

    def validate(self) -> None:
        if self.workers < 1:
            raise CorpusError(f"--workers must be >= 1, got {self.workers}")
        for name in ("max_sung_minutes", "heldout_sung_minutes", "min_heldout_minutes"):
            if getattr(self, name) < 0:
                raise CorpusError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("heldout_eval_sung", "heldout_eval_speech", "validation_eval_sung", "validation_eval_speech",
                     "train_eval_sung", "train_eval_speech"):
            if getattr(self, name) < 0:
                raise CorpusError(f"--{name.replace('_', '-')} must be >= 0")

    def effective(self) -> "Settings":
        """The settings with --quick's small caps applied."""
        if not self.quick:
            return self
        return dataclasses.replace(
            self, max_sung_minutes=min(self.max_sung_minutes, 0.5), heldout_sung_minutes=min(self.heldout_sung_minutes, 1.0),
            heldout_eval_sung=min(self.heldout_eval_sung, 3), heldout_eval_speech=min(self.heldout_eval_speech, 2),
            validation_eval_sung=min(self.validation_eval_sung, 2),
            validation_eval_speech=min(self.validation_eval_speech, 1),
            train_eval_sung=min(self.train_eval_sung, 1), train_eval_speech=min(self.train_eval_speech, 1))




def speech_f0(x: np.ndarray, sr: int) -> np.ndarray:
    """F0 every 10 ms, Hz, 0 = unvoiced, by Praat's autocorrelation tracker (at most 16 kHz): as robust as
    harvest on these recordings (DIO halves F0 on the noisy radio clips) and ~50x faster, so all speech
    is measured."""
    import soxr

    from ai_singer.features.pitch import F0_EXTRACTORS

    if sr > 16000:
        x, sr = soxr.resample(x, sr, 16000).astype(np.float64), 16000
    _, f0, _ = F0_EXTRACTORS["parselmouth"](np.ascontiguousarray(x, dtype=np.float64), sr, SPEECH_F0_FLOOR,
                                       SPEECH_F0_CEIL, 0.01)
    return np.asarray(f0, dtype=np.float64)


def speech_span(x: np.ndarray, sr: int, pad_s: float = 0.1) -> tuple[float, float]:
    """Start and end (s) of the part louder than 35 dB below the loudest 10 ms, padded."""
    hop = max(1, sr // 100)
    n = len(x) // hop
    if n == 0:
        return 0.0, len(x) / sr
    energy = 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy > energy.max() - 35.0)
    start = max(0.0, loud[0] * hop / sr - pad_s)
    end = min(len(x) / sr, (loud[-1] + 1) * hop / sr + pad_s)
    return start, end


def pauses(x: np.ndarray, sr: int, min_pause_s: float = 0.08, below_db: float = 30.0) -> list[float]:
    """Middles (s) of the quiet stretches inside the speech: at least ``min_pause_s`` long and
    ``below_db`` under the loudest 10 ms; where a long recording can be cut into a phrase."""
    hop = max(1, sr // 100)
    n = len(x) // hop
    if n == 0:
        return []
    energy = 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    quiet = energy < energy.max() - below_db
    return [round((a + b) / 2 * hop / sr, 3) for a, b, q in _segments(quiet)
            if q and a > 0 and b < n and (b - a) * hop / sr >= min_pause_s]


def analyse(item: tuple[Source, str | None]) -> dict:
    """Pass 1 on one file (and a decode cache folder): duration, loudness, voicing, F0 values, speech
    span; or an error."""
    source, cache = item
    try:
        x, sr = decode(source, cache)
        if not np.all(np.isfinite(x)):
            raise ValueError("audio contains NaN or infinite samples")
        seconds = len(x) / sr
        f0 = speech_f0(x, sr) if seconds >= 0.1 else np.zeros(0)
        start, end = speech_span(x, sr)
        return {"clip": source.clip, "voice": source.voice, "seconds": seconds, "sr": sr,
                "rms": float(np.sqrt(np.mean(x ** 2))), "voiced_fraction": float(np.mean(f0 > 0)) if len(f0) else 0.0,
                "f0": f0[f0 > 0].astype(np.float32), "span": (start, end), "pauses": pauses(x, sr)}
    except Exception as error:  # noqa: BLE001 - any failure of one file is reported, the run goes on
        return {"clip": source.clip, "voice": source.voice, "error": f"{source.path}: {error}"}


# --------------------------------------------------------------------------------------------- singing


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends only on the seed and the names (never on the process or the order)."""
    return np.random.default_rng([seed, *(zlib.crc32(name.encode("utf-8")) for name in names)])


@dataclass
class Note:
    start: float     # s
    end: float       # s
    midi: float
    vib_hz: float
    vib_cents: float
    vib_delay: float
    glide_in: bool   # a legato glide from the previous note ends this note's start
    glide_out: bool


def hz_to_midi(hz: float) -> float:
    return 69.0 + 12.0 * math.log2(hz / 440.0)


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(midi) - 69.0) / 12.0)


def make_melody(runs: list[tuple[float, float]], median_hz: float, rng: np.random.Generator) -> tuple[list[Note], dict]:
    """Notes over voiced ``runs`` ([start, end) seconds): a random walk on a major/minor scale within
    median-3..median+9 semitones; notes of 0.25-1 s, legato inside a run, rests between runs."""
    mode = str(rng.choice(sorted(SCALES)))
    tonic = int(rng.integers(12))
    centre = hz_to_midi(median_hz)
    low, high = centre - RANGE_BELOW, centre + RANGE_ABOVE
    allowed = [m for m in range(math.ceil(low), math.floor(high) + 1) if (m - tonic) % 12 in SCALES[mode]]
    index = int(np.argmin([abs(m - (centre + 2.0)) for m in allowed]))
    notes: list[Note] = []
    for run_start, run_end in runs:
        lengths: list[float] = []
        remaining = run_end - run_start
        while remaining > NOTE_S[1]:
            length = float(rng.uniform(*NOTE_S))
            if remaining - length < NOTE_S[0]:  # the leftover would be too short: two equal notes
                length = remaining / 2.0
            lengths.append(length)
            remaining -= length
        lengths.append(remaining)  # shorter than NOTE_S[0] only when the whole run is
        t = run_start
        for k, length in enumerate(lengths):
            step = int(rng.choice([-2, -1, 0, 1, 2], p=[0.15, 0.3, 0.1, 0.3, 0.15]))
            index = index + step
            if index < 0 or index >= len(allowed):  # reflect at the range edges
                index = index - 2 * step
            index = min(max(index, 0), len(allowed) - 1)
            end = run_end if k == len(lengths) - 1 else t + length
            notes.append(Note(t, end, float(allowed[index]), float(rng.uniform(*VIBRATO_HZ)),
                              float(rng.uniform(*VIBRATO_CENTS)), float(rng.uniform(*VIBRATO_DELAY_S)),
                              glide_in=k > 0, glide_out=k < len(lengths) - 1))
            t = end
    return notes, {"mode": mode, "tonic_pc": tonic, "range_midi": [round(low, 2), round(high, 2)]}


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def melody_contour(notes: list[Note], runs: list[tuple[float, float]], times: np.ndarray) -> np.ndarray:
    """The imposed F0 (Hz, 0 = rest) at ``times`` (s): each note's pitch plus its delayed vibrato,
    cross-faded over GLIDE_S at legato boundaries (so the glide and the vibrato stay continuous)."""
    times = np.asarray(times, dtype=np.float64)
    pitch = np.zeros(len(times))
    weight = np.zeros(len(times))
    half = GLIDE_S / 2.0
    for note in notes:
        w = np.ones(len(times))
        if note.glide_in:
            w *= _smoothstep((times - (note.start - half)) / GLIDE_S)
        else:
            w *= times >= note.start
        if note.glide_out:
            w *= 1.0 - _smoothstep((times - (note.end - half)) / GLIDE_S)
        else:
            w *= times < note.end
        active = w > 0
        if not active.any():
            continue
        t = times[active] - note.start
        onset = np.clip((t - note.vib_delay) / VIBRATO_RAMP_S, 0.0, 1.0)
        vibrato = note.vib_cents / 100.0 * onset * np.sin(2 * np.pi * note.vib_hz * np.maximum(t - note.vib_delay, 0.0))
        pitch[active] += w[active] * (note.midi + vibrato)
        weight[active] += w[active]
    voiced = np.zeros(len(times), dtype=bool)
    for start, end in runs:
        voiced |= (times >= start) & (times < end)
    out = np.zeros(len(times))
    ok = voiced & (weight > 0)
    out[ok] = midi_to_hz(pitch[ok] / weight[ok])
    return out


def _segments(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Runs of equal values: (start, end, value)."""
    if len(mask) == 0:
        return []
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(mask)]
    return [(a, b, bool(mask[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def sing(x: np.ndarray, sr: int, median_hz: float, rng: np.random.Generator) -> dict:
    """Make speech sing with WORLD. Returns {"audio": float32 @ 44.1 kHz, "f0": imposed F0 at hop 512
    (frame i at (i + 0.5) * 512 / 44100 s), "melody": description, "stretch": mean voiced stretch}."""
    import pyworld
    import soxr

    fs = SUNG_SR
    y = soxr.resample(x, sr, fs).astype(np.float64) if sr != fs else x.astype(np.float64)
    y = np.ascontiguousarray(y)
    period = WORLD_FRAME_MS / 1000.0
    f0, t = pyworld.harvest(y, fs, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=WORLD_FRAME_MS)
    sp = pyworld.cheaptrick(y, f0, t, fs)
    ap = pyworld.d4c(y, f0, t, fs)
    voiced = f0 > 0
    for a, b, v in _segments(voiced):  # voiced blips under 30 ms become rests
        if v and (b - a) * period < 0.03:
            voiced[a:b] = False
    positions: list[np.ndarray] = []
    out_voiced: list[np.ndarray] = []
    stretches = []
    for a, b, v in _segments(voiced):
        n = b - a
        factor = float(rng.uniform(*STRETCH)) if v else 1.0
        m = max(1, int(round(n * factor)))
        positions.append(np.clip(a + (np.arange(m) + 0.5) * n / m - 0.5, a, b - 1))
        out_voiced.append(np.full(m, v))
        if v:
            stretches.append(m / n)
    pos = np.concatenate(positions)
    out_voiced_mask = np.concatenate(out_voiced)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(f0) - 1)
    frac = (pos - lo)[:, None]
    log_sp = np.log(np.maximum(sp, 1e-16))
    sp_out = np.ascontiguousarray(np.exp((1 - frac) * log_sp[lo] + frac * log_sp[hi]))
    ap_out = np.ascontiguousarray(np.clip((1 - frac) * ap[lo] + frac * ap[hi], 0.0, 1.0))
    # voiced runs on the output time axis: frame j is at j * period and rules [j - 1/2, j + 1/2) periods
    runs = [((a - 0.5) * period, (b - 0.5) * period) for a, b, v in _segments(out_voiced_mask) if v]
    runs = [(max(start, 0.0), end) for start, end in runs]
    notes, melody = make_melody(runs, median_hz, rng)
    frame_times = np.arange(len(pos)) * period
    f0_out = np.ascontiguousarray(melody_contour(notes, runs, frame_times))
    audio = pyworld.synthesize(f0_out, sp_out, ap_out, fs, WORLD_FRAME_MS)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > 0.99:
        audio = audio * (0.95 / peak)
    n_hop = len(audio) // F0_HOP
    hop_times = (np.arange(n_hop) + 0.5) * F0_HOP / fs
    f0_hop = melody_contour(notes, runs, hop_times).astype(np.float32)
    melody["notes"] = len(notes)
    return {"audio": audio.astype(np.float32), "f0": f0_hop, "melody": melody,
            "stretch": float(np.mean(stretches)) if stretches else 1.0}


# --------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    source: Source
    name: str            # the voice's name in the corpus
    role: str            # "raw" | "eval"
    kinds: tuple[str, ...]  # raw: ("speech",) or ("speech", "sung"); eval: ("sung",) or ("speech",)
    median_hz: float
    seed: int
    out: str
    span: tuple[float, float] | None = None  # eval: the part of the file used (s)
    cache: str | None = None  # decode cache folder
    whole: bool = True  # eval: the file's whole speech (False: an excerpt, whose text is unknown)


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16")


def run_job(job: Job) -> dict:
    """Pass 2 on one file: write its speech and/or sung renditions. Never raises."""
    source, out, name = job.source, Path(job.out), job.name
    written: list[dict] = []
    try:
        x, sr = decode(source, job.cache)
        rng = _rng(job.seed, "sing", name, source.clip)
        if job.role == "raw":
            folder = out / "raw" / name
            _write_wav(folder / "speech" / f"{source.clip}.wav", x, sr)
            written.append({"path": f"raw/{name}/speech/{source.clip}.wav", "kind": "speech",
                            "seconds": len(x) / sr})
            if "sung" in job.kinds:
                result = sing(x, sr, job.median_hz, rng)
                _write_wav(folder / "sung" / f"{source.clip}.wav", result["audio"], SUNG_SR)
                written.append({"path": f"raw/{name}/sung/{source.clip}.wav", "kind": "sung",
                                "seconds": len(result["audio"]) / SUNG_SR})
            return {"clip": source.clip, "voice": name, "written": written}
        start, end = job.span or (0.0, len(x) / sr)
        x = x[int(round(start * sr)): int(round(end * sr))]
        folder = out / "eval" / name
        kind = job.kinds[0]
        meta = {"kind": kind, "language": source.language, "text": source.text if job.whole else None,
                "source_file": source.path,
                "f0_file": None, "f0_hop": F0_HOP, "f0_sr": SUNG_SR,
                "source_start_s": round(start, 3), "source_end_s": round(end, 3), "excerpt": not job.whole}
        if kind == "sung":
            result = sing(x, sr, job.median_hz, rng)
            if meta["text"] is None:  # no transcript: keep the speech it was sung from, for a reference reading
                _write_wav(folder / f"{source.clip}.spoken.wav", x, sr)
                meta["spoken_file"] = f"{source.clip}.spoken.wav"
                written.append({"path": f"eval/{name}/{source.clip}.spoken.wav", "kind": "spoken"})
            np_path = folder / f"{source.clip}.f0.npy"
            with atomic_path(np_path) as tmp:
                np.save(tmp, result["f0"])
            _write_wav(folder / f"{source.clip}.wav", result["audio"], SUNG_SR)
            meta.update(f0_file=np_path.name, sample_rate=SUNG_SR, seconds=round(len(result["audio"]) / SUNG_SR, 3),
                        melody=result["melody"], stretch=round(result["stretch"], 3))
            written += [{"path": f"eval/{name}/{np_path.name}", "kind": "f0"},
                        {"path": f"eval/{name}/{source.clip}.wav", "kind": "sung",
                         "seconds": len(result["audio"]) / SUNG_SR}]
        else:
            _write_wav(folder / f"{source.clip}.wav", x, sr)
            meta.update(sample_rate=sr, seconds=round(len(x) / sr, 3))
            written.append({"path": f"eval/{name}/{source.clip}.wav", "kind": "speech", "seconds": len(x) / sr})
        atomic_write_json(folder / f"{source.clip}.json", meta)
        written.append({"path": f"eval/{name}/{source.clip}.json", "kind": "meta"})
        return {"clip": source.clip, "voice": name, "written": written}
    except Exception as error:  # noqa: BLE001 - any failure of one file is reported, the run goes on
        return {"clip": source.clip, "voice": name, "written": written, "error": f"{source.path}: {error}"}


def run_parallel(function, items: list, workers: int, desc: str, progress: bool) -> list:
    """``function`` over ``items`` in a process pool (spawn); results in the order of ``items``."""
    from tqdm import tqdm

    results: list = [None] * len(items)
    with tqdm(total=len(items), desc=desc, unit="file", disable=not progress) as bar:
        if workers <= 1 or len(items) <= 1:
            for k, item in enumerate(items):
                results[k] = function(item)
                bar.update(1)
            return results
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(function, item): k for k, item in enumerate(items)}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
    return results


# --------------------------------------------------------------------------------------------- planning


@dataclass
class VoiceStats:
    seconds: float          # speech (files that pass the speech check)
    est_total_seconds: float  # estimated for all the voice's files (= seconds unless --quick)
    f0_median: float
    f0_p05: float
    f0_p95: float
    files: int


def voice_statistics(sources: list[Source], analyses: dict[tuple[str, str], dict], all_counts: dict[str, int]) -> dict[str, VoiceStats]:
    stats: dict[str, VoiceStats] = {}
    by_voice: dict[str, list[dict]] = {}
    for source in sources:
        result = analyses.get((source.voice, source.clip))
        if result is not None and "error" not in result and result.get("speech"):
            by_voice.setdefault(source.voice, []).append(result)
    for voice, results in sorted(by_voice.items()):
        f0 = np.concatenate([r["f0"] for r in results]).astype(np.float64)
        if len(f0) == 0:
            continue
        seconds = float(sum(r["seconds"] for r in results))
        analysed = sum(1 for s in sources if s.voice == voice and (s.voice, s.clip) in analyses)
        scale = all_counts[voice] / max(analysed, 1)
        stats[voice] = VoiceStats(seconds, seconds * scale, float(np.median(f0)), float(np.percentile(f0, 5)),
                                  float(np.percentile(f0, 95)), len(results))
    return stats


def choose_heldout(stats: dict[str, VoiceStats], sex: dict[str, str], min_seconds: float,
                   reserve_seconds: dict[str, float]) -> tuple[list[str], str]:
    """One LOW (male) and one HIGH (female) voice to hold out, decided from the measured numbers.

    In each group the candidates are the voices that keep at least ``min_seconds`` of speech for raw/
    after their eval phrases are taken out. The group's largest voice stays in training (the base needs
    most of the group's material), and among the other candidates the one furthest out is held out: the
    lowest speech F0 median of the men, the highest of the women (the clearest test of converting into a
    low / high voice the base never heard).
    """
    chosen: list[str] = []
    lines: list[str] = []
    for group, group_sex in (("LOW (male)", "m"), ("HIGH (female)", "f")):
        members = sorted((v for v in stats if sex[v] == group_sex), key=lambda v: -stats[v].est_total_seconds)
        described = ", ".join(f"{v} {stats[v].f0_median:.0f} Hz / {stats[v].est_total_seconds / 60:.1f} min"
                              for v in members)
        enough = [v for v in members if stats[v].est_total_seconds - reserve_seconds.get(v, 0.0) >= min_seconds]
        if not enough:
            lines.append(f"{group}: no voice has {min_seconds / 60:.1f} min of speech to spare "
                         f"({described or 'no voice'}); none held out.")
            continue
        candidates = enough[1:] if len(enough) > 1 else enough
        is_low = group_sex == "m"
        pick = min(candidates, key=lambda v: stats[v].f0_median) if is_low else \
            max(candidates, key=lambda v: stats[v].f0_median)
        chosen.append(pick)
        kept = f"; {enough[0]} ({stats[enough[0]].est_total_seconds / 60:.0f} min, the largest) stays in training" \
            if len(enough) > 1 else "; it is the only one"
        lines.append(f"{group} voices (speech F0 median / speech): {described}. With >= {min_seconds / 60:g} min "
                     f"to spare for an adapter: {', '.join(enough)}{kept}; held out {pick}"
                     + (f", the {'lowest' if is_low else 'highest'} median of the others" if len(enough) > 1 else "")
                     + f" ({stats[pick].f0_median:.0f} Hz, "
                     f"p05-p95 {stats[pick].f0_p05:.0f}-{stats[pick].f0_p95:.0f} Hz, {stats[pick].est_total_seconds / 60:.1f} min).")
    return chosen, " ".join(lines)


def phrase_span(span: tuple[float, float], pause_times: list[float], low: float, high: float) -> tuple[float, float, bool] | None:
    """The part of a file to use as an eval phrase of ``low``..``high`` seconds: the whole speech span
    when it fits (whole=True), else from its start to the latest pause that makes it fit (an excerpt of
    a long recording), else None. Returns (start, end, whole)."""
    start, end = span
    if low <= end - start <= high:
        return start, end, True
    cuts = [p for p in pause_times if start + low <= p <= min(start + high, end)]
    return (start, max(cuts), False) if end - start > high and cuts else None


def pick_eval(sources: list[Source], analyses: dict, n_sung: int, n_speech: int,
              rng: np.random.Generator) -> tuple[list[tuple[Source, str, tuple[float, float], bool]], list[Source]]:
    """Eval phrases (source, kind, (start, end) s, whole) from files that then stay out of raw/: whole
    transcribed files first, then whole files without a transcript, then excerpts of long files cut at a
    pause (text null); never more than a third of the voice's files. Returns (eval, rest)."""
    usable = [s for s in sources if analyses[(s.voice, s.clip)].get("speech")]
    budget = len(usable) // 3
    draw = {s.clip: float(rng.random()) for s in usable}
    chosen: list[tuple[Source, str, tuple[float, float], bool]] = []
    taken: set[str] = set()
    for kind, count, (low, high) in (("sung", n_sung, EVAL_SUNG_SPAN), ("speech", n_speech, EVAL_SPEECH_SPAN)):
        candidates = []
        for s in usable:
            result = analyses[(s.voice, s.clip)]
            part = phrase_span(tuple(result["span"]), result.get("pauses", []), low, high)
            if part is not None and s.clip not in taken:
                rank = 0 if part[2] and s.text is not None else 1 if part[2] else 2
                candidates.append(((rank, draw[s.clip]), s, (part[0], part[1]), part[2]))
        picked = 0
        for _, s, part, whole in sorted(candidates, key=lambda c: c[0]):
            if picked >= count or len(chosen) >= budget:
                break
            chosen.append((s, kind, part, whole))
            taken.add(s.clip)
            picked += 1
    rest = [s for s in usable if s.clip not in taken]
    return chosen, rest


def _sweep(out: Path, keep: set[str]) -> int:
    """Remove files under raw/ and eval/ that this run did not write (left from an earlier run)."""
    removed = 0
    for top in ("raw", "eval"):
        for path in walk_files(out / top) if (out / top).is_dir() else []:
            if path.relative_to(out).as_posix() not in keep:
                path.unlink()
                removed += 1
    return removed


def build(settings: Settings) -> dict:
    """Collect, analyse, decide, render, write. Returns {"voices": voices.json document, "report": ...}."""
    settings.validate()
    started = time.perf_counter()
    out = Path(settings.out)
    ours = {"raw", "eval", "voices.json", "report.json", DECODE_CACHE}
    if out.exists() and any(p.name not in ours for p in out.iterdir()):
        raise CorpusError(f"{out} holds files other than {', '.join(sorted(ours))}: not a real-corpus folder "
                          f"(stale files under raw/ and eval/ are removed on each run); choose an empty or new --out")
    effective = settings.effective()
    collection = collect(settings)
    for note in collection.notes:
        print(f"real_corpus: {note}", file=sys.stderr)
    if not collection.sources:
        raise CorpusError("no source audio found: " + "; ".join(collection.notes))

    # pass 1: every file (or, with --quick, a seeded subset per voice): duration, voicing, F0
    all_counts: dict[str, int] = {}
    selected: list[Source] = []
    for voice in sorted(collection.voices):
        files = [s for s in collection.sources if s.voice == voice]
        all_counts[voice] = len(files)
        if settings.quick and len(files) > settings.quick_files_per_voice:
            rng = _rng(settings.seed, "quick", voice)
            keep = set(rng.permutation(len(files))[: settings.quick_files_per_voice].tolist())
            files = [s for k, s in enumerate(files) if k in keep]
        selected.extend(files)
    cache = out / DECODE_CACHE
    shutil.rmtree(cache, ignore_errors=True)  # decoded afresh on every run
    timings = {"collect_s": time.perf_counter() - started}
    results = run_parallel(analyse, [(s, str(cache)) for s in selected], settings.workers, "analyse", settings.progress)
    errors: list[str] = []
    analyses: dict[tuple[str, str], dict] = {}
    for source, result in zip(selected, results):
        if "error" in result:
            errors.append(result["error"])
            print(f"real_corpus: skipped {result['error']}", file=sys.stderr)
            continue
        reasons = []
        if result["seconds"] < MIN_SPEECH_S:
            reasons.append(f"{result['seconds']:.2f} s is too short")
        if result["rms"] < MIN_RMS:
            reasons.append(f"too quiet (rms {result['rms']:.4f})")
        if result["voiced_fraction"] < MIN_VOICED_FRACTION:
            reasons.append(f"{100 * result['voiced_fraction']:.0f}% voiced")
        result["speech"] = not reasons
        if reasons:
            collection.skipped.append({"path": source.path, "reason": "not speech: " + ", ".join(reasons)})
        analyses[(source.voice, source.clip)] = result
    stats = voice_statistics(selected, analyses, all_counts)
    if not stats:
        raise CorpusError("no usable speech in any source (see the messages above)")
    sex = {v: collection.voices[v].sex or ("m" if stats[v].f0_median < LOW_HIGH_SPLIT_HZ else "f") for v in stats}
    names = {v: (f"{v}_{sex[v]}" if v == "alsa" else v) for v in stats}

    # held-out choice, among the voices that are not validation voices
    validation = {v for v in stats if collection.voices[v].validation}
    candidates = {v: st for v, st in stats.items() if v not in validation}
    reserve = {v: (effective.heldout_eval_sung * 3.0 + effective.heldout_eval_speech * 4.0) for v in candidates}
    if settings.heldout:
        heldout = [v for v in (h.strip() for h in settings.heldout.split(",")) if v]
        unknown = [v for v in heldout if v not in candidates and v not in {names[c] for c in candidates}]
        if unknown:
            raise CorpusError(f"--heldout names unknown or validation voices {unknown}; known: "
                              f"{sorted(names[c] for c in candidates)}")
        heldout = [next(k for k, n in names.items() if n == v or k == v) for v in heldout]
        why = f"held out by --heldout {settings.heldout}"
    else:
        by_name = {names[v]: v for v in candidates}
        heldout_names, why = choose_heldout({names[v]: st for v, st in candidates.items()},
                                            {names[v]: sex[v] for v in candidates}, effective.min_heldout_minutes * 60.0,
                                            {names[v]: x for v, x in reserve.items()})
        heldout = [by_name[n] for n in heldout_names]

    # plan pass 2
    jobs: list[Job] = []
    plan: dict[str, dict] = {}
    for voice in sorted(stats):
        files = [s for s in selected if (s.voice, s.clip) in analyses]
        files = [s for s in files if s.voice == voice]
        held = voice in heldout or voice in validation
        rng = _rng(settings.seed, "plan", voice)
        n_sung, n_speech = ((effective.validation_eval_sung, effective.validation_eval_speech) if voice in validation
                            else (effective.heldout_eval_sung, effective.heldout_eval_speech) if held
                            else (effective.train_eval_sung, effective.train_eval_speech))
        chosen, rest = pick_eval(files, analyses, n_sung, n_speech, rng)
        if settings.quick:  # a few short files
            rest = [s for s in rest if analyses[(voice, s.clip)]["seconds"] <= QUICK_MAX_FILE_S][:4] or rest[:1]
        cap = 60.0 * (effective.heldout_sung_minutes if held else effective.max_sung_minutes)
        sung_budget = 0.0
        name = names[voice]
        for k in rng.permutation(len(rest)).tolist():
            source = rest[k]
            seconds = analyses[(voice, source.clip)]["seconds"]
            kinds = ("speech",)
            if sung_budget + seconds <= cap or sung_budget == 0.0 and cap > 0:
                kinds = ("speech", "sung")
                sung_budget += seconds
            jobs.append(Job(source, name, "raw", kinds, stats[voice].f0_median, settings.seed, str(out),
                            cache=str(cache)))
        for source, kind, part, whole in chosen:
            jobs.append(Job(source, name, "eval", (kind,), stats[voice].f0_median, settings.seed, str(out),
                            part, cache=str(cache), whole=whole))
        plan[voice] = {"eval": len(chosen), "raw": len(rest)}
    jobs.sort(key=lambda j: -j.source.est_seconds)  # longest first: the pool ends together
    timings["analyse_s"] = time.perf_counter() - started - sum(timings.values())
    rendered = run_parallel(run_job, jobs, settings.workers, "render", settings.progress)
    timings["render_s"] = time.perf_counter() - started - sum(timings.values())

    written: set[str] = set()
    seconds: dict[str, dict[str, float]] = {}
    eval_counts: dict[str, int] = {}
    for job, result in zip(jobs, rendered):
        for item in result["written"]:
            written.add(item["path"])
        if "error" in result:
            errors.append(result["error"])
            print(f"real_corpus: failed {result['error']}", file=sys.stderr)
            continue
        bucket = seconds.setdefault(job.name, {"speech": 0.0, "sung": 0.0})
        if job.role == "raw":
            for item in result["written"]:
                bucket[item["kind"]] += item["seconds"]
        else:
            eval_counts[job.name] = eval_counts.get(job.name, 0) + 1
    shutil.rmtree(cache, ignore_errors=True)
    removed = _sweep(out, written) if (out / "raw").exists() or (out / "eval").exists() else 0

    voices = {}
    for voice in sorted(stats, key=lambda v: names[v]):
        name, spec, st = names[voice], collection.voices[voice], stats[voice]
        centre = hz_to_midi(st.f0_median)
        voices[name] = {
            "origin": spec.origin, "language": spec.languages[0], "languages": spec.languages,
            "sex": sex[voice], "f0_median_hz": round(st.f0_median, 2), "f0_p05_hz": round(st.f0_p05, 2),
            "f0_p95_hz": round(st.f0_p95, 2),
            "role": "heldout" if voice in heldout else "validation" if voice in validation else "train",
            "train_seconds": round(seconds.get(name, {}).get("speech", 0.0), 2),
            "sung_train_seconds": round(seconds.get(name, {}).get("sung", 0.0), 2),
            "speech_seconds_total": round(st.seconds, 2), "eval_phrases": eval_counts.get(name, 0),
            "melody_range_hz": [round(float(midi_to_hz(centre - RANGE_BELOW)), 1),
                                round(float(midi_to_hz(centre + RANGE_ABOVE)), 1)],
            "debian_package": spec.package,
        }
    document = {
        "version": FORMAT_VERSION, "seed": settings.seed, "quick": settings.quick,
        "voices": voices,
        "train": sorted(n for n, v in voices.items() if v["role"] == "train"),
        "heldout": sorted(n for n, v in voices.items() if v["role"] == "heldout"),
        "validation": sorted(n for n, v in voices.items() if v["role"] == "validation"),
        "why_heldout": why,
        "f0_hop": F0_HOP, "f0_sr": SUNG_SR, "sung_sr": SUNG_SR,
        "generator": "tools/real_corpus.py",
    }
    report = {"notes": collection.notes, "errors": sorted(errors),
              "skipped": sorted(collection.skipped, key=lambda s: s["path"]), "removed_stale_files": removed}
    atomic_write_json(out / "report.json", report)
    atomic_write_json(out / "voices.json", document)
    return {"voices": document, "report": report, "elapsed": time.perf_counter() - started, "timings": timings}


# --------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    helps = {
        "seed": "random seed; the same seed gives byte-identical files",
        "workers": "worker processes",
        "asterisk_dir": "folder with the asterisk language folders en, es, fr, it, ru (asterisk-core-sounds-*-g722)",
        "asterisk_doc_dir": "folder with the asterisk-core-sounds-<lang>/core-sounds-<lang>.txt.gz transcripts",
        "festvox_ru_dir": "msu_ru_nsh_clunits folder with wav/ and etc/txt.done.data (festvox-ru)",
        "codec2_dir": "folder with codec2's *.raw clips (codec2-examples)",
        "alsa_dir": "folder with ALSA's spoken *.wav clips (alsa-utils)",
        "max_sung_minutes": "minutes of each train voice's speech made to sing for raw/",
        "heldout_sung_minutes": "minutes of each held-out voice's speech made to sing for raw/",
        "heldout_eval_sung": "sung eval phrases per held-out voice",
        "heldout_eval_speech": "speech eval phrases per held-out voice",
        "validation_eval_sung": "sung eval phrases per validation voice",
        "validation_eval_speech": "speech eval phrases per validation voice",
        "train_eval_sung": "sung eval phrases per train voice",
        "train_eval_speech": "speech eval phrases per train voice",
        "min_heldout_minutes": "speech a held-out voice must keep for raw/, minutes",
        "heldout": "comma-separated voices to hold out instead of deciding from the numbers",
        "quick_files_per_voice": "--quick: source files analysed per voice",
    }
    add_settings_arguments(parser, Settings, helps)
    parser.add_argument("--validation-dir", type=Path, default=None,
                        help="root of the unpacked validation packages (three more asterisk voices, never trained on "
                             f"or reported: candidates are chosen on them); made with: {VALIDATION_HOW} "
                             "(default: none)")
    parser.add_argument("--quick", action="store_true", help="a small subset: few files per voice, small caps")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    return Settings(out=args.out, quick=args.quick, progress=not args.no_progress, validation_dir=args.validation_dir,
                    **settings_values(args, helps))


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
        result = build(settings)
    except CorpusError as error:
        print(f"real_corpus: {error}", file=sys.stderr)
        return 2
    document, report = result["voices"], result["report"]
    print(f"{'voice':16s} {'role':8s} sex {'F0 median [p05-p95] Hz':>23s}  {'raw speech':>10s} {'raw sung':>9s}  eval")
    for name, v in document["voices"].items():
        print(f"{name:16s} {v['role']:8s} {v['sex']:3s} {v['f0_median_hz']:8.1f} [{v['f0_p05_hz']:4.0f}-{v['f0_p95_hz']:4.0f}]"
              f"       {v['train_seconds'] / 60:6.1f} min {v['sung_train_seconds'] / 60:5.1f} min {v['eval_phrases']:5d}")
    print(f"held out: {', '.join(document['heldout']) or 'none'} — {document['why_heldout']}")
    print(f"validation: {', '.join(document['validation']) or 'none (--validation-dir)'}")
    problems = len(report["errors"])
    passes = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in result["timings"].items())
    print(f"wrote {settings.out} in {result['elapsed']:.0f} s ({passes}); {problems} file(s) failed, "
          f"{len(report['skipped'])} skipped (reasons in report.json)")
    return 0 if any(v["train_seconds"] > 0 for v in document["voices"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
