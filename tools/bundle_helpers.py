"""File steps of ``tools/build_bundle.py`` (run as ``python tools/build_bundle.py HELPER ...``):

    copy-singer SRC DST [--seconds S --seed N]   a singer folder's audio files (a seeded share of them)
    pool-voices --corpus data/real --synth data/synth --out DIR [--speech-seconds S --seed N]
                                                 the real corpus's training voices + the synthetic training
                                                 singers, hard-linked into one raw folder (a base's training set)
    merge-processed --out DIR SRC...             preprocessed folders (same content encoder and F0) as one:
                                                 the singer folders hard-linked, the manifests concatenated,
                                                 the singers of every stats.json
    copy-base SRC DST                            an existing base folder (config.yaml, *.safetensors)
    cut-song SRC DST --seconds S                 a song folder's stems cut to about S seconds (FLAC)

Each is idempotent: what is already there with the same size is kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac")
#: What pool-voices writes last (the list of pooled files): the step's output.
POOL_RECORD = "pool.json"


class HelperError(Exception):
    """A helper cannot do its job (inputs missing); ``str()`` says which and why."""


def audio_files(folder: Path) -> list[Path]:
    """The ``*.wav``/``*.flac`` files under ``folder`` (recursively), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def seconds_of(path: Path) -> float:
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / float(info.samplerate)


def seeded_share(files: list[Path], seconds: float | None, seed: int) -> list[Path]:
    """``files`` in a seeded random order, up to ``seconds`` of audio in all (None: all of them), sorted."""
    if seconds is None:
        return list(files)
    order = list(files)
    random.Random(seed).shuffle(order)
    chosen, total = [], 0.0
    for path in order:
        if total >= seconds:
            break
        chosen.append(path)
        total += seconds_of(path)
    return sorted(chosen)


def _place(source: Path, destination: Path, link: bool) -> None:
    """``destination`` as a copy (or hard link) of ``source``, unless it is there already (the same size for a
    copy, the same file for a link: a source rewritten since is linked again)."""
    from ai_singer.atomic import atomic_path

    if destination.is_file() and (os.path.samefile(source, destination) if link
                                  else destination.stat().st_size == source.stat().st_size):
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    if link:
        destination.unlink(missing_ok=True)
        try:
            os.link(source, destination)
            return
        except OSError:  # another file system: copy instead
            pass
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def copy_record(target: Path) -> Path:
    """Where copy-singer records what ``target`` holds: ``<target>.source`` beside it."""
    return Path(target).with_name(Path(target).name + ".source")


def copy_singer(source: Path, target: Path, seconds: float | None = None, seed: int = 0) -> list[Path]:
    """Make ``target`` hold the audio files of a singer folder (``*.wav``/``*.flac``, recursively), or a seeded
    share of them adding up to about ``seconds``: files already there with the same size are kept, other audio
    files removed; ``<target>.source`` records the source and the share. Returns the target files."""
    source, target = Path(source), Path(target)
    files = audio_files(source)
    if not files:
        raise HelperError(f"{source}: no audio files to copy")
    copied = []
    for path in seeded_share(files, seconds, seed):
        destination = target / path.relative_to(source)
        _place(path, destination, link=False)
        copied.append(destination)
    for stale in set(audio_files(target)) - set(copied):
        stale.unlink()
    copy_record(target).write_text(copy_description(source, seconds, seed), encoding="utf-8")
    return copied


def copy_description(source: Path | str, seconds: float | None, seed: int) -> str:
    return f"{Path(source).as_posix()} seconds={seconds} seed={seed}\n"


def pool_voices(corpus: Path, synth: Path, out: Path, speech_seconds: float | None, seed: int) -> list[Path]:
    """One raw folder for pretraining a real-voice base: every voice that ``<corpus>/voices.json`` marks
    ``train`` (all its sung clips, its ``speech/`` clips capped at ``speech_seconds`` by a seeded shuffle) and
    every singer that ``<synth>/corpus.json`` marks ``train`` (all its clips), hard-linked (copied across file
    systems) as ``<out>/<voice>/...``. Held-out voices are never taken. Writes ``<out>/pool.json`` last."""
    from ai_singer.atomic import atomic_write_json

    corpus, synth, out = Path(corpus), Path(synth), Path(out)
    voices_file, synth_file = corpus / "voices.json", synth / "corpus.json"
    for path, how in ((voices_file, "python tools/real_corpus.py --out data/real --seed 0 (needs the Debian packages "
                                    "listed in its docstring)"),
                      (synth_file, "python tools/synth_corpus.py --out data/synth --seed 0")):
        if not path.is_file():
            raise HelperError(f"{path}: missing; make it with {how}")
    voices = json.loads(voices_file.read_text(encoding="utf-8"))["voices"]
    real = sorted(name for name, voice in voices.items() if voice.get("role") == "train")
    singers = sorted(s["name"] for s in json.loads(synth_file.read_text(encoding="utf-8"))["singers"]
                     if s.get("split") == "train")
    pooled: dict[str, list[str]] = {}
    for name in real:
        folder = corpus / "raw" / name
        speech = seeded_share(audio_files(folder / "speech"), speech_seconds, seed)
        others = [p for p in audio_files(folder) if p.parent.name != "speech"]
        pooled[name] = [p.relative_to(corpus / "raw").as_posix() for p in sorted(speech + others)]
        for path in speech + others:
            _place(path, out / path.relative_to(corpus / "raw"), link=True)
    for name in singers:
        files = audio_files(synth / "raw" / name)
        pooled[name] = [p.relative_to(synth / "raw").as_posix() for p in files]
        for path in files:
            _place(path, out / path.relative_to(synth / "raw"), link=True)
    atomic_write_json(out / POOL_RECORD, {"corpus": str(corpus), "synth": str(synth), "seed": seed,
                                          "speech_seconds": speech_seconds, "voices": pooled})
    return [out / relative for files in pooled.values() for relative in files]


#: The preprocessed folder's files merge-processed reads and writes (ai_singer.preprocess writes them last).
STATS_FILE, MANIFEST_FILE = "stats.json", "manifest.jsonl"


def merge_processed(sources: list[Path], out: Path) -> list[str]:
    """One preprocessed folder ``out`` holding the singers of every folder in ``sources`` (what a base trains on
    when its data comes from two preprocess runs, e.g. the real pool and the perturbed voices): every singer
    folder hard-linked (copied across file systems), the ``manifest.jsonl`` files concatenated, a
    ``stats.json`` with the sources' shared settings and all their singers. The sources must agree on every
    setting (content encoder, F0 method, rates) and share no singer. ``stats.json`` is written last. Returns
    the singers, sorted."""
    from ai_singer.atomic import atomic_write_json, atomic_write_text

    sources, out = [Path(source) for source in sources], Path(out)
    if not sources:
        raise HelperError("merge-processed: no source folder given")
    stats, manifests = [], []
    for source in sources:
        for name in (STATS_FILE, MANIFEST_FILE):
            if not (source / name).is_file():
                raise HelperError(f"{source / name}: missing; preprocess {source} first (python -m "
                                  f"ai_singer.preprocess paths.processed={source} ...)")
        stats.append(json.loads((source / STATS_FILE).read_text(encoding="utf-8")))
        manifests.append((source / MANIFEST_FILE).read_text(encoding="utf-8"))
    shared = {key: value for key, value in stats[0].items() if key != "singers"}
    singers: dict[str, dict] = {}
    for source, record in zip(sources, stats):
        keys = (set(shared) | set(record)) - {"singers"}
        differing = sorted(key for key in keys if record.get(key) != shared.get(key))
        if differing:
            raise HelperError(f"{source / STATS_FILE}: {', '.join(differing)} differ from {sources[0] / STATS_FILE}; "
                              "preprocess both with the same settings before merging them")
        for singer in record.get("singers") or {}:
            if singer in singers:
                raise HelperError(f"{source / STATS_FILE}: singer {singer!r} is also in another source; merged "
                                  "folders must not share a singer")
            singers[singer] = record["singers"][singer]
            for path in visible_files(source / singer):
                _place(path, out / path.relative_to(source), link=True)
    atomic_write_text(out / MANIFEST_FILE, "".join(text if text.endswith("\n") or not text else text + "\n"
                                                   for text in manifests))
    atomic_write_json(out / STATS_FILE, {**shared, "singers": dict(sorted(singers.items()))})
    return sorted(singers)


def visible_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (a preprocessed singer's clips, features, plot), sorted; hidden ones left out."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))


def copy_base(source: Path, target: Path) -> list[Path]:
    """Copy a base folder's ``config.yaml`` and ``*.safetensors`` into ``target`` (same size: kept)."""
    source, target = Path(source), Path(target)
    files = sorted(p for p in source.glob("*") if p.is_file() and (p.name == "config.yaml" or p.suffix == ".safetensors"))
    if not (source / "config.yaml").is_file():
        raise HelperError(f"{source}: not a base folder (no config.yaml)")
    for path in files:
        _place(path, target / path.name, link=False)
    return [target / path.name for path in files]


def cut_song(source: Path, target: Path, seconds: float, fade_s: float = 0.02, search_s: float = 2.0) -> list[Path]:
    """Cut every stem of the song folder ``source`` to about ``seconds`` and write them to ``target`` as
    PCM_16 FLAC (``<stem>.flac``). The cut is at the quietest 10 ms of the vocal in the last ``search_s``
    before ``seconds`` (a rest when there is one), with a ``fade_s`` fade-out. Returns the files written."""
    import numpy as np

    from ai_singer.audio import audio_info, frame_db, load_audio, write_audio

    source, target = Path(source), Path(target)
    stems = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES) \
        if source.is_dir() else []
    vocals = [p for p in stems if p.stem == "vocals"]
    if not vocals:
        raise HelperError(f"{source}: no vocals.wav/.flac stem to cut")
    sr = audio_info(vocals[0]).sample_rate
    vocal, _ = load_audio(vocals[0])
    n = min(int(round(seconds * sr)), vocal.shape[-1])
    hop = max(1, sr // 100)
    start = max(0, n - int(search_s * sr))
    levels = frame_db(vocal.mean(axis=0)[start:n], hop)
    if levels.size:
        quietest = int(np.argmin(levels[: max(1, (n - start) // hop)]))
        n = start + quietest * hop + hop // 2
    fade = np.linspace(1.0, 0.0, min(n, int(fade_s * sr)), dtype=np.float32)
    written = []
    for path in stems:
        audio, rate = load_audio(path, 0, n)
        if rate != sr:
            raise HelperError(f"{path}: sample rate {rate} Hz differs from the vocal's {sr} Hz")
        audio = audio[:, :n].copy()
        audio[:, audio.shape[1] - fade.shape[0]:] *= fade[: audio.shape[1]]
        out = target / f"{path.stem}.flac"
        write_audio(out, audio[0] if audio.shape[0] == 1 else audio, sr, subtype="PCM_16")
        written.append(out)
    return written
