"""Write the synthetic corpus to disk: raw clips per singer, parallel renditions, songs, metadata.

Layout under ``settings.out``::

    raw/<singer>/<phrase>.wav (+ .labels.npy int16 [frames], .f0.npy float32 [frames])
    parallel/<phrase_id>/<singer>.wav (+ labels, f0)   same phrase, same timing, every singer
    songs/<song>/vocals.wav, pad.wav, drums.wav (+ vocals.labels.npy, vocals.f0.npy)
    song_renditions/<song>/<singer>.wav (+ labels, f0)  the song's vocal line sung by each held-out singer
    phones.json                                         phone inventory and label framing
    corpus.json                                         singers (+ split), phrases, songs, seed

Every file is a pure function of ``(seed, what it is)``: each clip draws its random numbers from its
own ``SeedSequence([seed, stream, ids...])``, so the output does not depend on the number of workers,
on the order of generation, or on how many other clips are requested.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ai_singer.atomic import atomic_write, atomic_write_json
from ai_singer.audio import write_audio

from .accompaniment import drum_stem, pad_stem
from .melody import Phrase, make_phrase, make_song_line, validate_syllables
from .phones import inventory
from .singers import SINGER_STREAM, SingerVoice, make_singer
from .voice import Rendition, render_phrase

PHRASE_STREAM, PARALLEL_PHRASE_STREAM, SONG_STREAM = 2, 3, 4
RENDER_STREAM, PARALLEL_RENDER_STREAM, SONG_RENDER_STREAM, ACCOMPANIMENT_STREAM, SONG_RENDITION_STREAM = 5, 6, 7, 8, 9
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CorpusSettings:
    """What to generate. ``held_out``: the last K singers are marked ``held_out`` in corpus.json (for
    fine-tuning/evaluation on voices the base model never saw); all singers get raw clips."""

    out: Path
    singers: int = 12
    phrases_per_singer: int = 20
    seconds: float = 4.0
    sample_rate: int = 44100
    seed: int = 0
    held_out: int = 2
    songs: int = 2
    song_seconds: float = 20.0
    parallel_phrases: int = 4
    label_rate_hz: int = 50
    workers: int = 1
    progress: bool = field(default=True, compare=False)

    def validate(self) -> None:
        problems = []
        if self.singers < 1:
            problems.append("--singers must be at least 1")
        if not 0 <= self.held_out < self.singers:
            problems.append(f"--held-out must be in [0, singers - 1] = [0, {self.singers - 1}]")
        for name in ("phrases_per_singer", "songs", "parallel_phrases"):
            if getattr(self, name) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0")
        if self.seconds < 1.0:
            problems.append("--seconds must be at least 1.0")
        if self.songs and self.song_seconds < 8.0:
            problems.append("--song-seconds must be at least 8.0")
        if self.label_rate_hz < 1 or self.sample_rate % self.label_rate_hz:
            problems.append(f"--sample-rate {self.sample_rate} must be a multiple of the label rate "
                            f"{self.label_rate_hz} Hz")
        if self.sample_rate < 16000:
            problems.append("--sample-rate must be at least 16000")
        if self.workers < 1:
            problems.append("--workers must be at least 1")
        if problems:
            raise ValueError("invalid corpus settings: " + "; ".join(problems))


def derive_rng(seed: int, stream: int, *ids: int) -> np.random.Generator:
    """An independent generator for one thing (``stream`` says what kind, ``ids`` which one)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), *map(int, ids)]))


def make_singers(settings: CorpusSettings) -> list[SingerVoice]:
    return [make_singer(i, derive_rng(settings.seed, SINGER_STREAM, i)) for i in range(settings.singers)]


def singer_split(settings: CorpusSettings, index: int) -> str:
    return "held_out" if index >= settings.singers - settings.held_out else "train"


def raw_phrase(settings: CorpusSettings, singer_index: int, phrase_index: int) -> Phrase:
    rng = derive_rng(settings.seed, PHRASE_STREAM, singer_index, phrase_index)
    phrase = make_phrase(rng, f"p{phrase_index:03d}", settings.seconds)
    validate_syllables(phrase)
    return phrase


def parallel_phrase(settings: CorpusSettings, phrase_index: int) -> Phrase:
    """Parallel phrase ``phrase_index``; render it with any singer via ``render_phrase``."""
    rng = derive_rng(settings.seed, PARALLEL_PHRASE_STREAM, phrase_index)
    phrase = make_phrase(rng, f"par{phrase_index:03d}", settings.seconds)
    validate_syllables(phrase)
    return phrase


def song_line(settings: CorpusSettings, song_index: int) -> Phrase:
    rng = derive_rng(settings.seed, SONG_STREAM, song_index)
    phrase = make_song_line(rng, f"song{song_index:02d}", settings.song_seconds)
    validate_syllables(phrase)
    return phrase


def song_singer_index(settings: CorpusSettings, song_index: int) -> int:
    return song_index % settings.singers


def write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    """PCM_16 WAV, written atomically."""
    write_audio(path, audio, sr, subtype="PCM_16")


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def write_rendition(stem: Path, rendition: Rendition) -> dict:
    """``stem``.wav + ``stem``.labels.npy + ``stem``.f0.npy; returns their names and sizes."""
    write_wav(stem.with_name(stem.name + ".wav"), rendition.audio, rendition.sample_rate)
    write_npy(stem.with_name(stem.name + ".labels.npy"), rendition.labels)
    write_npy(stem.with_name(stem.name + ".f0.npy"), rendition.f0_hz)
    return {"n_samples": int(len(rendition.audio)), "n_frames": int(len(rendition.labels)),
            "seconds": round(len(rendition.audio) / rendition.sample_rate, 6)}


def _relative(settings: CorpusSettings, stem: Path) -> dict:
    rel = stem.relative_to(settings.out).as_posix()
    return {"audio": rel + ".wav", "labels": rel + ".labels.npy", "f0": rel + ".f0.npy"}


def run_job(settings: CorpusSettings, singers: list[SingerVoice], job: tuple[str, int, int]) -> dict:
    """Render and write one item; returns its corpus.json entry. ``job`` is ``(kind, a, b)``:
    ``("raw", singer, phrase)``, ``("parallel", phrase, singer)``, ``("song", song, 0)`` or
    ``("song_rendition", song, singer)``."""
    kind, a, b = job
    sr, rate = settings.sample_rate, settings.label_rate_hz
    if kind == "raw":
        singer, phrase = singers[a], raw_phrase(settings, a, b)
        stem = settings.out / "raw" / singer.name / phrase.phrase_id
        rendition = render_phrase(phrase, singer, sr, derive_rng(settings.seed, RENDER_STREAM, a, b), rate)
        entry = {"id": f"{singer.name}/{phrase.phrase_id}", "singer": singer.name, **_relative(settings, stem)}
    elif kind == "parallel":
        singer, phrase = singers[b], parallel_phrase(settings, a)
        stem = settings.out / "parallel" / phrase.phrase_id / singer.name
        rendition = render_phrase(phrase, singer, sr, derive_rng(settings.seed, PARALLEL_RENDER_STREAM, a, b), rate)
        entry = {"id": phrase.phrase_id, "singer": singer.name, **_relative(settings, stem)}
    elif kind == "song":
        singer, phrase = singers[song_singer_index(settings, a)], song_line(settings, a)
        folder = settings.out / "songs" / phrase.phrase_id
        rendition = render_phrase(phrase, singer, sr, derive_rng(settings.seed, SONG_RENDER_STREAM, a), rate)
        stem = folder / "vocals"
        accompaniment_rng = derive_rng(settings.seed, ACCOMPANIMENT_STREAM, a)
        n = len(rendition.audio)
        write_wav(folder / "pad.wav", pad_stem(phrase, singer.tonic_midi, n, sr, accompaniment_rng), sr)
        write_wav(folder / "drums.wav", drum_stem(phrase, n, sr, accompaniment_rng), sr)
        entry = {"song": phrase.phrase_id, "singer": singer.name, "dir": folder.relative_to(settings.out).as_posix(),
                 **_relative(settings, stem), "pad": f"{folder.relative_to(settings.out).as_posix()}/pad.wav",
                 "drums": f"{folder.relative_to(settings.out).as_posix()}/drums.wav"}
    elif kind == "song_rendition":
        singer, phrase = singers[b], song_line(settings, a)
        stem = settings.out / "song_renditions" / phrase.phrase_id / singer.name
        rendition = render_phrase(phrase, singer, sr, derive_rng(settings.seed, SONG_RENDITION_STREAM, a, b), rate)
        entry = {"id": phrase.phrase_id, "singer": singer.name, **_relative(settings, stem)}
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    entry.update(write_rendition(stem, rendition))
    entry["tonic_midi"] = singer.tonic_midi
    entry["phrase"] = phrase.to_json()
    return entry


def plan_jobs(settings: CorpusSettings) -> list[tuple[str, int, int]]:
    jobs = [("raw", s, p) for s in range(settings.singers) for p in range(settings.phrases_per_singer)]
    jobs += [("parallel", p, s) for p in range(settings.parallel_phrases) for s in range(settings.singers)]
    jobs += [("song", k, 0) for k in range(settings.songs)]
    held_out = range(settings.singers - settings.held_out, settings.singers)
    jobs += [("song_rendition", k, s) for k in range(settings.songs) for s in held_out
             if s != song_singer_index(settings, k)]
    return jobs


def _job_worker(args: tuple[CorpusSettings, list[SingerVoice], tuple[str, int, int]]) -> dict:
    return run_job(*args)


def generate_corpus(settings: CorpusSettings) -> dict:
    """Generate everything ``settings`` asks for; returns the corpus.json document (also written)."""
    settings.validate()
    from tqdm import tqdm

    started = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    singers = make_singers(settings)
    jobs = plan_jobs(settings)
    work = [(settings, singers, job) for job in jobs]
    entries: list[dict] = []
    with tqdm(total=len(jobs), desc="synth corpus", unit="clip", disable=not settings.progress) as bar:
        if settings.workers > 1:
            import multiprocessing

            # spawn: workers never inherit a parent's threads (torch, BLAS) half-initialised
            with multiprocessing.get_context("spawn").Pool(settings.workers) as pool:
                for entry in pool.imap(_job_worker, work, chunksize=2):
                    entries.append(entry)
                    bar.update(1)
        else:
            for item in work:
                entries.append(_job_worker(item))
                bar.update(1)

    atomic_write_json(out / "phones.json", inventory(settings.label_rate_hz, settings.sample_rate))
    parallel: dict[str, dict] = {}
    for entry in entries:
        if entry["audio"].startswith("parallel/"):
            group = parallel.setdefault(entry["id"], {"phrase_id": entry["id"], "phrase": entry["phrase"],
                                                      "n_samples": entry["n_samples"], "n_frames": entry["n_frames"],
                                                      "renditions": {}})
            group["renditions"][entry["singer"]] = {k: entry[k] for k in ("audio", "labels", "f0", "tonic_midi")}
    settings_json = {k: v for k, v in asdict(settings).items() if k not in ("out", "workers", "progress")}
    document = {
        "format_version": FORMAT_VERSION,
        "generator": "tools/synth_corpus.py",
        "seed": settings.seed,
        "sample_rate": settings.sample_rate,
        "label_rate_hz": settings.label_rate_hz,
        "label_hop_samples": settings.sample_rate // settings.label_rate_hz,
        "phones": "phones.json",
        "settings": settings_json,
        "singers": [{**s.to_json(), "split": singer_split(settings, i)} for i, s in enumerate(singers)],
        "phrases": [e for e in entries if e["audio"].startswith("raw/")],
        "parallel": list(parallel.values()),
        "songs": [{**e, "renditions": {r["singer"]: {k: r[k] for k in ("audio", "labels", "f0", "tonic_midi")}
                                        for r in entries if r["audio"].startswith(f"song_renditions/{e['song']}/")}}
                  for e in entries if "song" in e],
    }
    atomic_write_json(out / "corpus.json", document)
    elapsed = time.perf_counter() - started
    total_seconds = sum(e["seconds"] for e in entries)
    summary = {"clips": len(entries), "audio_seconds": round(total_seconds, 1), "elapsed_seconds": round(elapsed, 2)}
    return {**document, "summary": summary}
