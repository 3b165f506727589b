"""Measure how well a fine-tuned singer adapter really converts, on parallel synthetic renditions.

    .venv/bin/python tools/eval_conversion.py --corpus data/synth --base pretrain/real-ddsp-words \\
        --singers-dir singers --pairs s03_alto:s11_mezzo s04_baritone:s10_baritone \\
        --out runs/eval/conversion.json [--bench]

For every pair ``SRC:TGT`` (or ``SRC:TGT=ADAPTER`` when the adapter folder under ``--singers-dir`` is not
named after the corpus singer ``TGT``; without it, the folder ``TGT`` or the one adapter whose
``adapter.yaml`` says ``singer: TGT``) and every parallel phrase of the corpus (``parallel/<phrase>/``:
the same phrase sung by every singer with identical timing, each in the singer's own key), the source
singer's rendition is converted by the real ``ai_singer.infer.Converter`` with
``transpose = tonic_midi[TGT] - tonic_midi[SRC]`` semitones, so the intended F0 contour is the source's
true F0 (``.f0.npy``) times ``2 ** (transpose / 12)``. Reported per phrase (definitions in
``ai_singer/metrics.py``):

* MCD (dB, frames voiced in both) of the converted audio against the target singer's own rendition, and
  of the source rendition against it (the baseline the conversion must beat);
* which singer's own rendition the converted audio is closest to (MCD), and the target's rank among them;
* P(target) from a speaker classifier (clip timbre features, logistic regression) trained on the raw
  clips (``raw/``) of every corpus singer, for the converted audio and for the source rendition; the
  parallel phrases are never used for training it. Its probabilities only compare the known singers and
  extrapolate for audio unlike all of them (a random tiny model scored P(target) 0.95 on one phrase), so
  judge timbre first by MCD and by which singer's rendition is nearest;
* F0 error in cents of the converted audio (harvest) against the intended contour, and voicing agreement;
  ``f0_floor`` is the same measure of the source rendition against its own true F0 (what the extractor
  alone costs); ``f0_target_rendition`` compares the target singer's own true F0 with the intended contour
  (how far a real rendition by that singer strays from it: vibrato, drift, portamento; for reference);
* phone accuracy (articulation): when the content encoder's folder holds ``phone_head.safetensors`` (the
  bundled one does), the share of sung frames whose phone it reads correctly against the phrase's labels,
  for the converted audio, the source rendition and the target singer's own rendition.

Prints a markdown table and one summary line per pair, writes ``--out`` (JSON) and with ``--bench``
replaces the "## Conversion quality" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `ai_singer` importable

from ai_singer import metrics  # noqa: E402
from ai_singer.atomic import atomic_write_json  # noqa: E402
from tools.benchmarks_md import machine_description, replace_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECTION = "Conversion quality"
#: Where the project's own content encoder lands (tools/train_content_encoder.py); tried when neither
#: --content-path nor the base's config names one.
BUNDLED_CONTENT_ENCODER = Path("pretrain/content/synth-hubert")


class EvalError(Exception):
    """Bad input for the evaluation: ``str()`` names the file or setting and the reason."""


# ------------------------------------------------------------------------------------------ inputs

@dataclass
class Pair:
    source: str
    target: str
    adapter: str  # folder name under --singers-dir


def parse_pair(text: str) -> tuple[str, str, str | None]:
    """``SRC:TGT`` or ``SRC:TGT=ADAPTER`` -> (source, target, adapter or None)."""
    found = re.fullmatch(r"([^:=\s]+):([^:=\s]+)(?:=([^:=\s]+))?", text.strip())
    if not found:
        raise EvalError(f"--pairs {text!r}: expected SOURCE:TARGET or SOURCE:TARGET=ADAPTER "
                        f"(corpus singer names; ADAPTER a folder under --singers-dir)")
    return found.group(1), found.group(2), found.group(3)


def read_yaml(path: Path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def read_json(path: Path, how_to_make: str) -> Any:
    """The JSON document at ``path``; EvalError naming the file when it is missing (with ``how_to_make``)
    or not valid JSON."""
    if not path.is_file():
        raise EvalError(f"{path}: no {path.name} ({how_to_make})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvalError(f"{path}: not valid JSON ({error})") from None


def find_adapter(target: str, singers_dir: Path, explicit: str | None) -> str:
    """The adapter folder name for corpus singer ``target`` (see the module docstring)."""
    from ai_singer.infer import available_singers

    known = available_singers(singers_dir)
    if explicit:
        if explicit not in known:
            raise EvalError(f"{singers_dir / explicit}: no adapter.yaml there; adapters under {singers_dir}: "
                            f"{known or 'none'}")
        return explicit
    if target in known:
        return target
    matches = [name for name in known if str(read_yaml(singers_dir / name / "adapter.yaml").get("singer")) == target]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise EvalError(f"{singers_dir}: no adapter for singer {target!r} (no folder {target}/ and no adapter.yaml "
                        f"with singer: {target}); adapters there: {known or 'none'}. Name one with SRC:TGT=ADAPTER")
    raise EvalError(f"{singers_dir}: several adapters say singer: {target} ({matches}); pick one with SRC:TGT=ADAPTER")


def load_corpus(root: Path) -> dict:
    path = root / "corpus.json"
    corpus = read_json(path, f"make one with tools/synth_corpus.py --out {root}")
    for key in ("sample_rate", "label_hop_samples", "singers", "phrases", "parallel"):
        if key not in corpus:
            raise EvalError(f"{path}: missing {key!r} (not a tools/synth_corpus.py corpus?)")
    if not corpus["parallel"]:
        raise EvalError(f"{path}: the corpus has no parallel phrases (generate it with --parallel-phrases N)")
    return corpus


def read_mono(path: Path, expected_sr: int) -> np.ndarray:
    from ai_singer.audio import load_audio, to_mono

    audio, sr = load_audio(path)
    if sr != expected_sr:
        raise EvalError(f"{path}: sample rate {sr} Hz, but corpus.json says {expected_sr} Hz")
    return to_mono(audio).astype(np.float32)


def content_group(args: argparse.Namespace, base_config: dict) -> dict:
    """The ``content`` group for the Converter: command line, else the base's config (its encoder's group,
    ``conf/content/<name>.yaml``, with the recorded values), else the bundled encoder folder (its
    ``training.json`` gives layer/final_proj), else ``conf/content/hubert.yaml``."""
    from ai_singer.conf_dir import conf_dir

    recorded = dict(base_config.get("content_encoder") or {})
    name = str(recorded.get("name") or "hubert")
    group_file = Path(conf_dir()) / "content" / f"{name}.yaml"
    group = dict(read_yaml(group_file if group_file.is_file() else Path(conf_dir()) / "content" / "hubert.yaml"))
    group["name"] = name
    path = args.content_path or recorded.get("path")
    if path is None and (REPO / BUNDLED_CONTENT_ENCODER / "config.json").is_file():
        path = REPO / BUNDLED_CONTENT_ENCODER
    if path is not None:
        group["path"] = str(path)
        training = Path(path) / "training.json"
        if training.is_file():
            overrides = json.loads(training.read_text(encoding="utf-8")).get("content_overrides") or {}
            group.update({k: overrides[k] for k in ("layer", "final_proj") if k in overrides})
    for key in ("layer", "final_proj"):
        if recorded.get(key) is not None or (key in recorded and key in group):
            group[key] = recorded[key]
    if args.content_layer is not None:
        group["layer"] = args.content_layer
    if args.content_final_proj is not None:
        group["final_proj"] = args.content_final_proj
    from ai_singer.device import pick_device

    group["device"] = str(pick_device(args.device))  # the encoder runs where the model runs
    return group


def adapter_steps(adapter_dir: Path, config: dict, runs_dir: Path) -> int | None:
    """Training steps behind an adapter: ``steps``/``step`` in adapter.yaml, else the latest training
    state of ``<runs_dir>/<adapter folder>`` (the default run name of a fine-tune is the singer)."""
    for key in ("steps", "step"):
        if isinstance(config.get(key), int):
            return int(config[key])
    from ai_singer.checkpoint import list_train_states

    for run in dict.fromkeys([adapter_dir.name, str(config.get("singer", ""))]):
        if run and (runs_dir / run).is_dir():
            states = list_train_states(runs_dir / run)
            if states:
                return int(states[-1][0])
    return None


# ------------------------------------------------------------------------------------- evaluation

def train_classifier(corpus: dict, root: Path, clips_per_singer: int | None, settings: metrics.TimbreSettings,
                     log) -> tuple[metrics.SpeakerClassifier, dict]:
    """Speaker classifier on the raw clips of every corpus singer (never the parallel phrases)."""
    parallel_audio = {r["audio"] for g in corpus["parallel"] for r in g["renditions"].values()}
    per_singer: dict[str, int] = {}
    features, labels = [], []
    started = time.perf_counter()
    for clip in corpus["phrases"]:
        singer = clip["singer"]
        if clip["audio"] in parallel_audio or (clips_per_singer and per_singer.get(singer, 0) >= clips_per_singer):
            continue
        path = root / clip["audio"]
        audio = read_mono(path, int(corpus["sample_rate"]))
        features.append(metrics.clip_timbre_features(audio, int(corpus["sample_rate"]), settings, str(path)))
        labels.append(singer)
        per_singer[singer] = per_singer.get(singer, 0) + 1
    classifier = metrics.SpeakerClassifier.fit(np.stack(features), labels)
    info = {"clips": len(labels), "singers": classifier.singers, "clips_per_singer": per_singer,
            "features": "mean + std of mel-cepstrum c1..c%d over voiced frames" % settings.n_coeffs,
            "model": "StandardScaler + LogisticRegression (multinomial)",
            "train_accuracy": classifier.accuracy(np.stack(features), labels),
            "seconds": round(time.perf_counter() - started, 2)}
    log(f"speaker classifier: {info['clips']} raw clips of {len(classifier.singers)} singers "
        f"(train accuracy {info['train_accuracy']:.2f}, {info['seconds']:.1f} s)")
    return classifier, info


class PhoneReader:
    """Frame phone accuracy of audio against the corpus's phone labels, read by the content encoder with
    the phone classifier trained beside it (``phone_head.safetensors`` in the encoder's folder, written by
    tools/train_content_encoder.py): how well the words survive the conversion (articulation), measured on
    the sung (non-silence) frames."""

    def __init__(self, encoder, head_path: Path):
        from safetensors import safe_open

        with safe_open(str(head_path), framework="pt") as handle:
            self.phones = json.loads((handle.metadata() or {}).get("phones", "[]"))
            self.weight, self.bias = handle.get_tensor("weight").float(), handle.get_tensor("bias").float()
        if self.weight.shape[1] != encoder.dim:
            raise EvalError(f"{head_path}: phone head expects {self.weight.shape[1]}-dim features, the content "
                            f"encoder gives {encoder.dim}")
        self.encoder = encoder
        self.silence = self.phones.index("sil") if "sil" in self.phones else 0

    @classmethod
    def for_encoder(cls, encoder, content_path: str | None, reader: Path | None = None) -> "PhoneReader | None":
        """The conversion's own encoder when its folder has a phone head; with ``reader`` (``--phone-reader``,
        e.g. the bundled ``pretrain/content/synth-hubert``), that encoder folder (its training.json's layer) and
        its head instead: the same reader for every base, so articulation stays comparable when the base's
        encoder (e.g. Whisper) has no phone head."""
        if reader is not None:
            from ai_singer.features.content import load_content_encoder

            if not (reader / "phone_head.safetensors").is_file():
                raise EvalError(f"--phone-reader {reader}: no phone_head.safetensors there")
            training = json.loads((reader / "training.json").read_text(encoding="utf-8")).get("content_overrides") or {}
            own = load_content_encoder("hubert", str(reader), layer=training.get("layer"),
                                       final_proj=bool(training.get("final_proj", False)), device="cpu")
            return cls(own, reader / "phone_head.safetensors")
        head = Path(content_path or "") / "phone_head.safetensors"
        return cls(encoder, head) if content_path and head.is_file() else None

    def accuracy(self, audio: np.ndarray, sr: int, labels: np.ndarray) -> float:
        """Share of sung frames (label not silence) whose phone is read correctly; labels at 50 Hz."""
        import torch

        from ai_singer.audio import resample
        from ai_singer.features.content import encode_audio

        features = torch.from_numpy(encode_audio(self.encoder, resample(audio, sr, 16000)))
        predicted = (features @ self.weight.T + self.bias).argmax(dim=1).numpy()
        n = min(len(predicted), len(labels))
        sung = labels[:n] != self.silence
        return float((predicted[:n][sung] == labels[:n][sung]).mean()) if sung.any() else float("nan")


def rendition_analyses(corpus: dict, root: Path, group: dict, timbre: metrics.TimbreSettings,
                       cache: dict) -> dict[str, metrics.MelCepstrum]:
    """Mel-cepstra of every singer's rendition of a parallel phrase (cached across pairs)."""
    sr = int(corpus["sample_rate"])
    for singer, entry in group["renditions"].items():
        key = (group["phrase_id"], singer)
        if key not in cache:
            cache[key] = metrics.mel_cepstrum(read_mono(root / entry["audio"], sr), sr, timbre, str(root / entry["audio"]))
    return {singer: cache[(group["phrase_id"], singer)] for singer in group["renditions"]}


def evaluate_phrase(converter, classifier: metrics.SpeakerClassifier, corpus: dict, root: Path, group: dict,
                    pair: Pair, base_settings, args: argparse.Namespace, timbre: metrics.TimbreSettings,
                    cache: dict, phones: PhoneReader | None = None) -> dict:
    sr, label_hop = int(corpus["sample_rate"]), int(corpus["label_hop_samples"])
    renditions = group["renditions"]
    for singer in (pair.source, pair.target):
        if singer not in renditions:
            raise EvalError(f"{root / 'corpus.json'}: parallel phrase {group['phrase_id']} has no rendition by "
                            f"{singer!r} (singers: {sorted(renditions)})")
    source_entry, target_entry = renditions[pair.source], renditions[pair.target]
    source = read_mono(root / source_entry["audio"], sr)
    source_f0 = np.load(root / source_entry["f0"]).astype(np.float64)
    semitones = float(target_entry["tonic_midi"]) - float(source_entry["tonic_midi"])

    converter.settings = dataclasses.replace(base_settings, transpose=semitones)
    started = time.perf_counter()
    converted = converter.convert_vocal(source, sr, pair.adapter).audio
    convert_s = time.perf_counter() - started
    if args.save_audio:
        from ai_singer.audio import write_audio

        write_audio(Path(args.save_audio) / f"{pair.source}-to-{pair.target}" / f"{group['phrase_id']}.wav",
                    converted, sr, subtype="FLOAT")

    analyses = rendition_analyses(corpus, root, group, timbre, cache)
    target_mc, source_mc = analyses[pair.target], analyses[pair.source]
    converted_mc = metrics.mel_cepstrum(converted, sr, timbre, "converted audio")
    mcd_converted = metrics.mcd_between(target_mc, converted_mc, align=args.align)
    mcd_source = metrics.mcd_between(target_mc, source_mc, align=args.align)
    # Which singer's own rendition is the converted audio closest to? (rank 1 = the target's)
    to_singers = {singer: metrics.mcd_between(analysis, converted_mc, align=args.align).mcd_db
                  for singer, analysis in analyses.items()}
    ranked = sorted((v, k) for k, v in to_singers.items() if np.isfinite(v))
    order = [k for _, k in ranked]

    guesses = {}
    for name, analysis in (("converted", converted_mc), ("source", source_mc)):
        try:
            guesses[name] = classifier.identify(metrics.timbre_features(analysis))
        except ValueError:  # nothing voiced (a silent conversion): no guess
            guesses[name] = None

    intended = np.where(source_f0 > 0, source_f0 * 2.0 ** (semitones / 12.0), 0.0)
    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.features.pitch import extract_f0

    measuring = F0Settings.from_conf(method=args.eval_f0_method)  # the toolkit's range and post-processing (conf/f0)
    converted_f0 = extract_f0(converted, sr, label_hop, len(intended), measuring)
    source_est = extract_f0(source, sr, label_hop, len(source_f0), measuring)
    f0 = metrics.f0_cents_error(converted_f0, intended)
    floor = metrics.f0_cents_error(source_est, source_f0)
    target_f0 = np.load(root / target_entry["f0"]).astype(np.float64)
    n = min(len(target_f0), len(intended))
    target_vs_intended = metrics.f0_cents_error(target_f0[:n], intended[:n])
    phone_accuracy = {"converted": float("nan"), "source": float("nan"), "target": float("nan")}
    if phones is not None and source_entry.get("labels"):
        labels = np.load(root / source_entry["labels"]).astype(np.int64)
        for singer, audio in ((pair.source, source), (pair.target, None)):  # renditions: once per phrase
            key = ("phones", group["phrase_id"], singer)
            if key not in cache:
                rendition = audio if audio is not None else read_mono(root / renditions[singer]["audio"], sr)
                cache[key] = phones.accuracy(rendition, sr, labels)
        phone_accuracy = {"converted": phones.accuracy(converted, sr, labels),
                          "source": cache[("phones", group["phrase_id"], pair.source)],
                          "target": cache[("phones", group["phrase_id"], pair.target)]}
    return {
        "phrase": group["phrase_id"], "seconds": round(len(source) / sr, 3), "convert_s": round(convert_s, 3),
        "phone_accuracy": phone_accuracy,
        "mcd_db": {"converted": mcd_converted.mcd_db, "source": mcd_source.mcd_db},
        "mcd_frames": {"converted": mcd_converted.frames, "source": mcd_source.frames},
        "mcd_to_singers": to_singers, "closest_singer": order[0] if order else None,
        "target_rank": order.index(pair.target) + 1 if pair.target in order else None,
        "p_target": {k: (g.probability(pair.target) if g else float("nan")) for k, g in guesses.items()},
        "predicted": {k: (g.predicted if g else None) for k, g in guesses.items()},
        "f0": f0.to_dict(), "f0_floor": floor.to_dict(), "f0_target_rendition": target_vs_intended.to_dict(),
        "_f0_tracks": (converted_f0, intended),  # pooled into the pair summary, not written
    }


def summarise(rows: list[dict]) -> dict:
    def mean(values):
        values = [v for v in values if v is not None and np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    pooled = metrics.f0_cents_error(np.concatenate([r["_f0_tracks"][0] for r in rows]),
                                    np.concatenate([r["_f0_tracks"][1] for r in rows]))
    mcd_c, mcd_s = mean(r["mcd_db"]["converted"] for r in rows), mean(r["mcd_db"]["source"] for r in rows)
    return {
        "phrases": len(rows), "singers": len(rows[0]["mcd_to_singers"]),
        "mcd_converted_db": mcd_c, "mcd_source_db": mcd_s, "mcd_improvement_db": mcd_s - mcd_c,
        "converted_closer_fraction": mean([float(r["mcd_db"]["converted"] < r["mcd_db"]["source"]) for r in rows]),
        "target_closest_fraction": mean([float(r["closest_singer"] == r["_target"]) for r in rows]),
        "mean_target_rank": mean(r["target_rank"] for r in rows),
        "p_target_converted": mean(r["p_target"]["converted"] for r in rows),
        "p_target_source": mean(r["p_target"]["source"] for r in rows),
        "identified_as_target_fraction": mean([float(r["predicted"]["converted"] == r["_target"]) for r in rows]),
        "f0_median_abs_cents": pooled.median_abs_cents, "f0_p90_abs_cents": pooled.p90_abs_cents,
        "f0_mean_cents": pooled.mean_cents, "f0_within_50_cents": pooled.within_50_cents,
        "voicing_agreement": pooled.voicing_agreement,
        "f0_floor_median_abs_cents": mean(r["f0_floor"]["median_abs_cents"] for r in rows),
        "f0_target_rendition_median_abs_cents": mean(r["f0_target_rendition"]["median_abs_cents"] for r in rows),
        "phone_accuracy_converted": mean(r["phone_accuracy"]["converted"] for r in rows),
        "phone_accuracy_source": mean(r["phone_accuracy"]["source"] for r in rows),
        "phone_accuracy_target": mean(r["phone_accuracy"]["target"] for r in rows),
    }


# -------------------------------------------------------------------------------------------- report

def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats as ``None`` and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(pairs: list[dict]) -> str:
    lines = ["| source → target | phrase | MCD conv (dB) | MCD src (dB) | nearest by MCD (target rank) | P(tgt) conv "
             "| P(tgt) src | predicted (conv) | F0 median abs err (cents) | F0 p90 (cents) | voicing agree |",
             "|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|"]
    for pair in pairs:
        for row in pair["phrases"]:
            lines.append(
                f"| {pair['source']} → {pair['target']} | {row['phrase']} | {fmt(row['mcd_db']['converted'])} | "
                f"{fmt(row['mcd_db']['source'])} | {fmt(row['closest_singer'])} ({fmt(row['target_rank'])}) | "
                f"{fmt(row['p_target']['converted'], 3)} | "
                f"{fmt(row['p_target']['source'], 3)} | {fmt(row['predicted']['converted'])} | "
                f"{fmt(row['f0']['median_abs_cents'], 1)} | {fmt(row['f0']['p90_abs_cents'], 1)} | "
                f"{fmt(row['f0']['voicing_agreement'])} |")
    return "\n".join(lines)


def summary_line(pair: dict) -> str:
    s, a = pair["summary"], pair["adapter"]
    steps = f"{a['steps']} steps" if a.get("steps") is not None else "steps unknown"
    return (f"{pair['source']} → {pair['target']} (adapter {a['name']}, {a.get('method')}, {steps}; transpose "
            f"{pair['transpose_semitones']:+.2f} st): MCD {fmt(s['mcd_converted_db'])} dB vs source "
            f"{fmt(s['mcd_source_db'])} dB ({-s['mcd_improvement_db']:+.2f} dB, closer on "
            f"{s['converted_closer_fraction'] * 100:.0f}% of phrases; nearest singer = target on "
            f"{s['target_closest_fraction'] * 100:.0f}%, mean rank of the target {fmt(s['mean_target_rank'], 1)} of "
            f"{s['singers']}); P(target) {fmt(s['p_target_converted'], 3)} vs "
            f"source {fmt(s['p_target_source'], 3)}; F0 median abs error {fmt(s['f0_median_abs_cents'], 1)} cents "
            f"(p90 {fmt(s['f0_p90_abs_cents'], 1)}, extractor floor {fmt(s['f0_floor_median_abs_cents'], 1)}, target "
            f"singer's own rendition {fmt(s['f0_target_rendition_median_abs_cents'], 1)}); "
            f"voicing agreement {fmt(s['voicing_agreement'])}; phone accuracy {fmt(s['phone_accuracy_converted'])} (source "
            f"{fmt(s['phone_accuracy_source'])}, target's own {fmt(s['phone_accuracy_target'])}) over {s['phrases']} "
            f"phrases")


def summary_table(pairs: list[dict]) -> str:
    lines = ["| source → target | adapter (method, steps) | phrases | MCD conv / src (dB) | target nearest by MCD "
             "| P(target) conv / src | F0 median abs err (cents) | F0 p90 (cents) | voicing agree "
             "| phone accuracy conv / src / tgt |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pair in pairs:
        s, a = pair["summary"], pair["adapter"]
        lines.append(f"| {pair['source']} → {pair['target']} | {a['name']} ({a.get('method')}, "
                     f"{fmt(a.get('steps'))}) | {s['phrases']} | {fmt(s['mcd_converted_db'])} / "
                     f"{fmt(s['mcd_source_db'])} | {s['target_closest_fraction'] * 100:.0f}% | "
                     f"{fmt(s['p_target_converted'], 3)} / {fmt(s['p_target_source'], 3)} "
                     f"| {fmt(s['f0_median_abs_cents'], 1)} | {fmt(s['f0_p90_abs_cents'], 1)} | "
                     f"{fmt(s['voicing_agreement'])} | {fmt(s['phone_accuracy_converted'])} / "
                     f"{fmt(s['phone_accuracy_source'])} / {fmt(s['phone_accuracy_target'])} |")
    return "\n".join(lines)


def bench_section(document: dict) -> str:
    base = document["base"]
    body = [
        f"Measured with `tools/eval_conversion.py` ({document['command']}) on the synthetic corpus "
        f"`{document['corpus']['path']}` (parallel phrases: every singer sings the same phrase with the same timing, "
        "in their own key). The source rendition is converted to the target singer with transpose = the difference of "
        "the two singers' tonics; it is compared with the target singer's own rendition of the phrase.",
        "",
        f"- Machine: {document['machine']}",
        f"- Date: {document['created']}",
        f"- Base: `{base['path']}` (sha256 {base['sha256'][:12]}, speakers {len(base.get('speakers') or [])}); "
        f"content encoder `{document['settings']['content'].get('path')}` layer "
        f"{document['settings']['content'].get('layer')}",
        f"- Conversion: F0 {document['settings']['f0_method']}, noise_scale {document['settings']['noise_scale']}, "
        f"retrieval_ratio {document['settings'].get('retrieval_ratio', 0.0)}; "
        f"F0 measured with {document['settings']['eval_f0_method']}",
        f"- Speaker classifier: {document['classifier']['clips']} raw clips of "
        f"{len(document['classifier']['singers'])} singers (train accuracy "
        f"{document['classifier']['train_accuracy']:.2f}); parallel phrases never used for training it",
        "",
        summary_table(document["pairs"]),
        "",
        "MCD: mean over the frames voiced in both of 10/ln10 · sqrt(2 Σ_{d=1..24} Δc_d²) on WORLD (CheapTrick) "
        "envelopes, all-pass mel warping; lower is closer to the target singer. The source column is the baseline "
        "(no conversion). Target nearest by MCD: share of phrases where, of all singers' own renditions, the target's is the "
        "closest to the converted audio. P(target): the speaker classifier's probability for the target singer (it "
        "only compares known singers and extrapolates for audio unlike all of them, so read it beside the MCD "
        "columns). F0 error: "
        "|1200 log2(F0_converted / F0_intended)| on frames voiced in both, pooled over phrases, where F0_intended is "
        "the source's true F0 transposed by the tonic difference (the target singer's own rendition differs from that "
        "contour by its own vibrato and drift: its error is in the JSON as f0_target_rendition). Phone accuracy: share of "
        "the sung frames whose phone the content encoder's phone classifier reads correctly against the phrase's labels "
        "(articulation), for the converted audio, the source rendition and the target singer's own rendition.",
    ]
    return "\n".join(body)


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from ai_singer.config import conf_file, conf_group

    stage = conf_file("infer")  # the conversion's own settings: conf/ is the one place they are written
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="synthetic corpus folder (corpus.json)")
    parser.add_argument("--base", type=Path, required=True, help="base artifact folder (pretrain/<name>)")
    parser.add_argument("--singers-dir", type=Path, default=Path("singers"), help="adapter folders (default: singers)")
    parser.add_argument("--pairs", nargs="+", required=True, metavar="SRC:TGT[=ADAPTER]",
                        help="source and target corpus singers; ADAPTER: folder under --singers-dir (default: "
                             "TGT, or the adapter whose adapter.yaml names singer TGT)")
    parser.add_argument("--out", type=Path, required=True, help="JSON report to write")
    parser.add_argument("--phrases", nargs="*", default=None, help="parallel phrase ids (default: all)")
    parser.add_argument("--content-path", default=None, help="content encoder folder (default: the base's config, "
                        f"else {BUNDLED_CONTENT_ENCODER} if present, else conf/content/hubert.yaml)")
    parser.add_argument("--content-layer", type=int, default=None)
    parser.add_argument("--phone-reader", type=Path, default=None,
                        help="encoder folder with a phone head that reads articulation (default: the conversion's "
                             f"encoder when it has one; {BUNDLED_CONTENT_ENCODER} for a base on Whisper features)")
    parser.add_argument("--content-final-proj", type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
    parser.add_argument("--f0-method", default=conf_group("f0")["method"], help="F0 extractor used by the conversion")
    parser.add_argument("--eval-f0-method", default="harvest", help="F0 extractor that measures the converted audio")
    parser.add_argument("--noise-scale", type=float, default=stage["noise_scale"])
    parser.add_argument("--retrieval-ratio", type=float, default=stage["retrieval_ratio"],
                        help="feature retrieval toward the singer's index, 0..1 (default: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further conf/infer.yaml overrides of the conversion, e.g. precision=bf16")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--align", choices=metrics.ALIGNMENTS, default="frames",
                        help="frames: the renditions share their timing (default); dtw: align first")
    parser.add_argument("--classifier-clips", type=int, default=0,
                        help="raw clips per singer for the speaker classifier (0 = all)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where fine-tune runs live (for steps)")
    parser.add_argument("--adapter-steps", type=int, default=None, help="report this many training steps")
    parser.add_argument("--save-audio", type=Path, default=None, help="also write the converted phrases here")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--bench", action="store_true", help="write the Conversion quality section of BENCHMARKS.md")
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="print only the table and the summary lines")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    import torch

    from ai_singer.config import load_settings
    from ai_singer.infer import Converter, InferError

    log = (lambda *_: None) if args.quiet else (lambda text: print(text, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    names = {s["name"] for s in corpus["singers"]}
    pairs = []
    for text in args.pairs:
        source, target, explicit = parse_pair(text)
        for singer in (source, target):
            if singer not in names:
                raise EvalError(f"--pairs {text!r}: {singer!r} is not a singer of {args.corpus / 'corpus.json'} "
                                f"({', '.join(sorted(names))})")
        pairs.append(Pair(source, target, find_adapter(target, args.singers_dir, explicit)))
    groups = corpus["parallel"]
    if args.phrases:
        known = [g["phrase_id"] for g in groups]
        missing = sorted(set(args.phrases) - set(known))
        if missing:
            raise EvalError(f"--phrases: {missing} are not parallel phrases of the corpus ({known})")
        groups = [g for g in groups if g["phrase_id"] in args.phrases]

    if not (args.base / "config.yaml").is_file():
        raise EvalError(f"{args.base}: no base artifact (config.yaml + generator.safetensors); train one with "
                        "python -m ai_singer.train mode=pretrain")
    base_config = read_yaml(args.base / "config.yaml")
    content = content_group(args, base_config)
    settings = load_settings("infer", [f"f0.method={args.f0_method}", f"noise_scale={args.noise_scale}",
                                       f"seed={args.seed}", f"retrieval_ratio={args.retrieval_ratio}", *args.set])
    started = time.perf_counter()
    try:
        converter = Converter(args.base, content, settings, args.singers_dir, device=args.device)
    except InferError as error:
        raise EvalError(str(error)) from None
    log(f"loaded {args.base} with content encoder {content.get('path')} (layer {content.get('layer')}) in "
        f"{time.perf_counter() - started:.1f} s")

    phones = PhoneReader.for_encoder(converter.content_encoder, content.get("path"), args.phone_reader)
    timbre = metrics.TimbreSettings()
    classifier, classifier_info = train_classifier(corpus, args.corpus, args.classifier_clips or None, timbre, log)

    results, cache = [], {}
    for pair in pairs:
        adapter_dir = args.singers_dir / pair.adapter
        try:
            adapter = converter.adapter(pair.adapter)
        except InferError as error:
            raise EvalError(str(error)) from None
        steps = args.adapter_steps if args.adapter_steps is not None else \
            adapter_steps(adapter_dir, adapter.config, args.runs_dir)
        rows = []
        for group in groups:
            row = evaluate_phrase(converter, classifier, corpus, args.corpus, group, pair, settings, args, timbre,
                                  cache, phones)
            row["_target"] = pair.target
            rows.append(row)
            log(f"  {pair.source} → {pair.target} {row['phrase']}: MCD {fmt(row['mcd_db']['converted'])} vs "
                f"{fmt(row['mcd_db']['source'])} dB, P(target) {fmt(row['p_target']['converted'], 3)} vs "
                f"{fmt(row['p_target']['source'], 3)}, F0 {fmt(row['f0']['median_abs_cents'], 1)} cents")
        summary = summarise(rows)
        for row in rows:
            del row["_f0_tracks"], row["_target"]
        source_tonic = corpus["parallel"][0]["renditions"][pair.source]["tonic_midi"]
        target_tonic = corpus["parallel"][0]["renditions"][pair.target]["tonic_midi"]
        results.append({
            "source": pair.source, "target": pair.target,
            "adapter": {"name": pair.adapter, "path": str(adapter_dir), "singer": adapter.config.get("singer"),
                        "method": adapter.method, "steps": steps, "base_sha256": adapter.base_sha256},
            "transpose_semitones": float(target_tonic) - float(source_tonic),
            "phrases": rows, "summary": summary})

    document = {
        "format_version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "command": "tools/eval_conversion.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "corpus": {"path": str(args.corpus), "seed": corpus.get("seed"), "sample_rate": corpus["sample_rate"],
                   "parallel_phrases": [g["phrase_id"] for g in groups]},
        "base": {"path": str(args.base), "name": args.base.name, "sha256": converter.base.sha256,
                 "speakers": list(base_config.get("speakers") or [])},
        "settings": {"content": {k: content.get(k) for k in ("name", "path", "layer", "final_proj")},
                     "f0_method": settings.f0.method, "eval_f0_method": args.eval_f0_method,
                     "noise_scale": settings.noise_scale, "retrieval_ratio": settings.retrieval_ratio,
                     "seed": settings.seed, "align": args.align, "set": list(args.set),
                     "timbre": dataclasses.asdict(timbre)},
        "classifier": classifier_info,
        "pairs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, json_safe(document))
    print(markdown_table(results))
    print()
    for pair in results:
        print(summary_line(pair))
    if args.bench:
        replace_section(args.benchmarks, SECTION, bench_section(document))
        log(f"wrote the {SECTION} section of {args.benchmarks}")
    return document


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args, argv)
    except EvalError as error:
        print(f"eval_conversion: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
