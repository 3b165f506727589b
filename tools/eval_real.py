"""Measure conversions between real voices, with no parallel recordings (all offline).

    .venv/bin/python tools/eval_real.py --corpus data/real --base pretrain/real-ddsp-words \\
        --singers-dir singers_real/real-ddsp-words --out runs/eval/real.json [--quick] \\
        [--pairs it_carlo_m:fr_june_f ...] [--self fr_june_f it_carlo_m] [--bench --label "real-ddsp-words + LoRA 500"]

    # adapters for the held-out voices first (preprocess raw/<voice> with the base's content encoder, then
    # a LoRA fine-tune per voice; run again with a larger --steps to resume):
    .venv/bin/python tools/eval_real.py --prepare --corpus data/real --base pretrain/real-ddsp-words \\
        --singers-dir singers_real/real-ddsp-words --steps 500

The corpus (``tools/real_corpus.py``): ``voices.json`` (each voice's language, sex, F0 median, role
``train``/``heldout``), ``raw/<voice>/`` (training material) and ``eval/<voice>/<phrase>.{wav,json}`` (+ the
exact imposed F0 ``<phrase>.f0.npy`` of sung phrases). Every phrase of a source voice is converted by the real
``ai_singer.infer.Converter`` into the target voice's adapter, transposed by the whole octaves that bring the
source's F0 median nearest the target's (0 for self-conversion), and measured (``tools/real_metrics.py``):

* speaker similarity (SECS, Resemblyzer): cosine of the converted audio's embedding with the target's reference
  (the normalised mean embedding of up to ``--ref-clips`` of the target's eval phrases, the compared phrase left
  out; raw clips when a voice has no other phrase), beside the same for the unconverted source; and the target's
  rank among every voice of voices.json (each by the same kind of reference);
* intelligibility: character error rate of Whisper's transcript (base, multilingual, told the phrase's
  language) of the converted audio against the phrase's text (without one: against Whisper's reading of the
  speech a sung phrase was made from, ``<phrase>.spoken.wav``, else of the source phrase itself), beside the
  CER of the source itself against the same reference;
* quality: DNSMOS OVRL/SIG/BAK and P.808 of the converted audio and of the source;
* pitch: F0 (harvest) of the converted audio against the intended contour (the phrase's imposed F0 times
  ``2 ** (transpose / 12)``; for a phrase without one, the source's harvest F0): median |cents|, RMSE, share of
  frames off by > 50 cents and by an octave (> 600 cents); ``f0_floor`` = the source against its own imposed F0;
* self-conversion (``--self VOICE``): each of the voice's phrases converted into itself and compared with the
  original recording: mel-cepstral distortion (frame by frame; ``ai_singer.metrics``) and SECS — the ceiling of
  any conversion into that voice.

The synthetic parallel measures (MCD against a parallel rendition, nearest singer, phone accuracy) stay in
``tools/eval_conversion.py`` (section "Conversion quality" of BENCHMARKS.md). Writes ``--out`` (JSON, with
every phrase's values) and the same name with ``.md`` (tables, and which of the real-voice criteria hold per
pair: ``tools/real_criteria.py``); ``--bench`` adds (or replaces) the rows of
``--label`` in the "## Real voices" section of BENCHMARKS.md, keeping the rows of other labels.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `ai_singer` importable

from ai_singer import metrics  # noqa: E402
from ai_singer.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from tools import real_criteria, real_metrics  # noqa: E402
from tools.benchmarks_md import machine_description, replace_section  # noqa: E402
from tools.eval_conversion import (EvalError, adapter_steps, content_group, find_adapter, fmt, json_safe,  # noqa: E402
                                   parse_pair, read_json, read_yaml)

REPO = Path(__file__).resolve().parents[1]
SECTION = "Real voices"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
QUICK_PHRASES = 3
DEFAULT_F0_HOP, DEFAULT_F0_SR = 512, 44100


# ------------------------------------------------------------------------------------------ corpus

@dataclass
class Phrase:
    voice: str
    id: str
    path: Path
    kind: str
    language: str | None
    text: str | None
    f0_path: Path | None
    f0_hop: int
    f0_sr: int
    spoken_path: Path | None = None  # sung phrase without text: the speech it was sung from (reference reading)


@dataclass
class Corpus:
    root: Path
    voices: dict[str, dict]
    phrases: dict[str, list[Phrase]]  # voice -> its eval phrases, sorted by id

    def role(self, name: str) -> list[str]:
        """The voices of one role: ``train``, ``heldout`` (what results are reported on) or ``validation``
        (what candidates are chosen on)."""
        return [v for v, info in self.voices.items() if info.get("role") == name]

    @property
    def heldout(self) -> list[str]:
        return self.role("heldout")

    @property
    def train(self) -> list[str]:
        return self.role("train")

    def ranked(self, role: str) -> list[str]:
        """The voices a target is ranked among when ``role``'s voices are measured: the train voices and that
        role's (the other role's voices stay out, so adding validation voices leaves held-out ranks as they were)."""
        return [v for v, info in self.voices.items() if info.get("role") in ("train", role)]

    def raw_clips(self, voice: str) -> list[Path]:
        folder = self.root / "raw" / voice
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES) if folder.is_dir() else []


def load_corpus(root: Path) -> Corpus:
    path = root / "voices.json"
    document = read_json(path, "make the corpus with tools/real_corpus.py")
    voices = document.get("voices")
    if not isinstance(voices, dict) or not voices:
        raise EvalError(f"{path}: no 'voices' mapping")
    phrases: dict[str, list[Phrase]] = {}
    for voice in voices:
        folder = root / "eval" / voice
        found = []
        for meta_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            stem = meta_path.name[: -len(".json")]
            audio = next((meta_path.with_name(stem + s) for s in AUDIO_SUFFIXES
                          if meta_path.with_name(stem + s).is_file()), None)
            if audio is None:
                raise EvalError(f"{meta_path}: no audio file {stem}.wav beside it")
            f0_file = meta.get("f0_file")
            found.append(Phrase(voice=voice, id=stem, path=audio, kind=str(meta.get("kind", "speech")),
                                language=meta.get("language") or voices[voice].get("language"),
                                text=meta.get("text"), f0_path=(meta_path.parent / f0_file) if f0_file else None,
                                f0_hop=int(meta.get("f0_hop") or DEFAULT_F0_HOP),
                                f0_sr=int(meta.get("f0_sr") or DEFAULT_F0_SR),
                                spoken_path=(meta_path.parent / meta["spoken_file"]) if meta.get("spoken_file")
                                else None))
        phrases[voice] = found
    return Corpus(root=root, voices=voices, phrases=phrases)


def read_mono(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    from ai_singer.audio import load_audio, to_mono

    audio, sr = load_audio(path)
    mono = to_mono(audio).astype(np.float32)
    if max_seconds:
        mono = mono[: int(max_seconds * sr)]
    return mono, int(sr)


def pick_phrases(phrases: list[Phrase], limit: int | None) -> list[Phrase]:
    """At most ``limit`` phrases, alternating between kinds (sung, speech) so a short run sees both."""
    if not limit or len(phrases) <= limit:
        return list(phrases)
    by_kind: dict[str, list[Phrase]] = {}
    for phrase in phrases:
        by_kind.setdefault(phrase.kind, []).append(phrase)
    picked, queues = [], [list(q) for _, q in sorted(by_kind.items(), key=lambda kv: kv[0] != "sung")]
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return sorted(picked, key=lambda p: p.id)


# ----------------------------------------------------------------------------------------- measures

@dataclass
class Pair:
    source: str
    target: str
    adapter: str

    @property
    def is_self(self) -> bool:
        return self.source == self.target


@dataclass
class Timings:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


class Instruments:
    """The measuring models, each loaded on first use, and caches of what the original recordings give."""

    def __init__(self, corpus: Corpus, args: argparse.Namespace, timings: Timings, ranked: list[str] | None = None):
        self.corpus, self.args, self.timings = corpus, args, timings
        self.ranked = list(corpus.voices) if ranked is None else ranked
        self._embedder = self._transcriber = self._scorer = None
        self._audio: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
        self._embeddings: dict[Any, np.ndarray] = {}
        self._transcripts: dict[tuple[str, str], str] = {}
        self._dnsmos: dict[tuple[str, str], dict] = {}

    # models
    @property
    def embedder(self) -> real_metrics.SpeakerEmbedder:
        if self._embedder is None:
            started = time.perf_counter()
            self._embedder = real_metrics.SpeakerEmbedder()
            self.timings.add("load_models", started)
        return self._embedder

    @property
    def transcriber(self) -> real_metrics.Transcriber:
        if self._transcriber is None:
            started = time.perf_counter()
            self._transcriber = real_metrics.Transcriber(self.args.whisper, cache_dir=self.args.cache_dir,
                                                         threads=self.args.threads, beam_size=self.args.beam_size)
            self.timings.add("load_models", started)
        return self._transcriber

    @property
    def scorer(self) -> real_metrics.QualityScorer:
        if self._scorer is None:
            started = time.perf_counter()
            self._scorer = real_metrics.QualityScorer(threads=self.args.threads)
            self.timings.add("load_models", started)
        return self._scorer

    # measures of any audio
    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.embedder.embed(audio, sr)
        finally:
            self.timings.add("speaker", started)

    def transcribe(self, audio: np.ndarray, sr: int, language: str | None) -> str:
        started = time.perf_counter()
        try:
            return self.transcriber.transcribe(audio, sr, language)
        finally:
            self.timings.add("asr", started)

    def quality(self, audio: np.ndarray, sr: int) -> dict:
        started = time.perf_counter()
        try:
            return self.scorer.score(audio, sr)
        except ValueError:  # a silent conversion
            return {key: float("nan") for key in ("ovrl", "sig", "bak", "p808")}
        finally:
            self.timings.add("dnsmos", started)

    # the original recordings, cached
    def audio(self, phrase: Phrase) -> tuple[np.ndarray, int]:
        key = (phrase.voice, phrase.id)
        if key not in self._audio:
            self._audio[key] = read_mono(phrase.path)
        return self._audio[key]

    def phrase_embedding(self, phrase: Phrase) -> np.ndarray:
        key = ("phrase", phrase.voice, phrase.id)
        if key not in self._embeddings:
            self._embeddings[key] = self.embed(*self.audio(phrase))
        return self._embeddings[key]

    def phrase_transcript(self, phrase: Phrase) -> str:
        key = (phrase.voice, phrase.id)
        if key not in self._transcripts:
            audio, sr = self.audio(phrase)
            self._transcripts[key] = self.transcribe(audio, sr, phrase.language)
        return self._transcripts[key]

    def reference_text(self, phrase: Phrase) -> tuple[str, str]:
        """What a phrase's transcripts are scored against, and where it came from: its text; else Whisper's
        reading of the speech a sung phrase was made from (read more reliably than the singing); else the
        reading of the phrase itself."""
        if phrase.text:
            return phrase.text, "text"
        if phrase.spoken_path is not None:
            key = ("spoken", phrase.voice, phrase.id)
            if key not in self._transcripts:
                self._transcripts[key] = self.transcribe(*read_mono(phrase.spoken_path), phrase.language)
            return self._transcripts[key], "spoken source"
        return self.phrase_transcript(phrase), "source"

    def phrase_quality(self, phrase: Phrase) -> dict:
        key = (phrase.voice, phrase.id)
        if key not in self._dnsmos:
            self._dnsmos[key] = self.quality(*self.audio(phrase))
        return self._dnsmos[key]

    def reference(self, voice: str, leave_out: Phrase | None = None) -> tuple[np.ndarray, list[str]]:
        """The voice's reference embedding and the clips behind it: up to ``--ref-clips`` of its eval phrases
        (``leave_out`` excluded), else as many of its raw clips (first 20 s of each)."""
        phrases = [p for p in self.corpus.phrases.get(voice, [])
                   if leave_out is None or (p.voice, p.id) != (leave_out.voice, leave_out.id)]
        phrases = phrases[: self.args.ref_clips]
        if phrases:
            return real_metrics.mean_embedding(self.phrase_embedding(p) for p in phrases), [p.id for p in phrases]
        clips = self.corpus.raw_clips(voice)[: self.args.ref_clips]
        if not clips:
            raise EvalError(f"{self.corpus.root}: voice {voice!r} has no eval phrase to spare and no raw clip for a "
                            f"speaker reference")
        embeddings = []
        for clip in clips:
            key = ("raw", str(clip))
            if key not in self._embeddings:
                self._embeddings[key] = self.embed(*read_mono(clip, max_seconds=20.0))
            embeddings.append(self._embeddings[key])
        return real_metrics.mean_embedding(embeddings), [str(c.relative_to(self.corpus.root)) for c in clips]


def cer_counts(hypothesis: str | None, reference: str | None) -> dict:
    """CER with its edit and character counts (pooled over phrases in the summaries)."""
    hyp, ref = real_metrics.normalize_text(hypothesis), real_metrics.normalize_text(reference)
    edits = real_metrics.levenshtein(hyp, ref)
    return {"cer": edits / len(ref) if ref else (0.0 if not hyp else 1.0), "edits": edits, "chars": len(ref)}


def evaluate_phrase(converter, tools: Instruments, phrase: Phrase, pair: Pair, transpose: float, base_settings,
                    args: argparse.Namespace, timings: Timings) -> dict:
    source, sr = tools.audio(phrase)
    converter.settings = dataclasses.replace(base_settings, transpose=transpose)
    started = time.perf_counter()
    converted = converter.convert_vocal(source, sr, pair.adapter).audio
    convert_s = time.perf_counter() - started
    timings.add("convert", started)
    if args.save_audio:
        from ai_singer.audio import write_audio

        write_audio(Path(args.save_audio) / f"{pair.source}-to-{pair.target}" / f"{phrase.id}.wav", converted, sr,
                    subtype="FLOAT")

    # speaker similarity and rank
    leave_out = phrase  # the compared phrase never sits in a reference (self-conversion: the target's own)
    target_ref, target_clips = tools.reference(pair.target, leave_out)
    converted_embedding = tools.embed(converted, sr) if np.any(converted) else None
    secs_converted = real_metrics.cosine(converted_embedding, target_ref) if converted_embedding is not None \
        else float("nan")
    secs_source = real_metrics.cosine(tools.phrase_embedding(phrase), target_ref)
    references = {pair.target: target_ref}
    for voice in tools.ranked:
        if voice != pair.target:
            try:
                references[voice] = tools.reference(voice, leave_out)[0]
            except EvalError:  # a voice with no material left out of the ranking (voices_ranked says so)
                pass
    rank, order = (real_metrics.rank_of(pair.target, converted_embedding, references)
                   if converted_embedding is not None else (None, []))

    # intelligibility
    transcript_source = tools.phrase_transcript(phrase)
    transcript_converted = tools.transcribe(converted, sr, phrase.language)
    reference_text, reference_from = tools.reference_text(phrase)
    cer = {"converted": cer_counts(transcript_converted, reference_text),
           "source": cer_counts(transcript_source, reference_text),  # 0 when the reference is its own reading
           "converted_vs_source_transcript": cer_counts(transcript_converted, transcript_source)}

    # quality
    dnsmos = {"converted": tools.quality(converted, sr), "source": tools.phrase_quality(phrase)}

    # pitch
    started = time.perf_counter()
    ratio = 2.0 ** (transpose / 12.0)
    if phrase.f0_path is not None:
        truth = np.load(phrase.f0_path).astype(np.float64)
        intended, intended_from = np.where(truth > 0, truth * ratio, 0.0), "imposed F0 (.f0.npy)"
        floor = metrics.f0_cents_error(real_metrics.f0_track(source, sr, len(truth), phrase.f0_hop, phrase.f0_sr,
                                                             args.eval_f0_method), truth)
    else:
        n_frames = int(len(source) * phrase.f0_sr / sr) // phrase.f0_hop
        measured = real_metrics.f0_track(source, sr, n_frames, phrase.f0_hop, phrase.f0_sr, args.eval_f0_method)
        intended, intended_from, floor = np.where(measured > 0, measured * ratio, 0.0), "source F0 (harvest)", None
    converted_f0 = real_metrics.f0_track(converted, sr, len(intended), phrase.f0_hop, phrase.f0_sr,
                                         args.eval_f0_method)
    f0 = metrics.f0_cents_error(converted_f0, intended)
    timings.add("f0", started)

    row = {
        "phrase": phrase.id, "kind": phrase.kind, "language": phrase.language,
        "seconds": round(len(source) / sr, 3), "convert_s": round(convert_s, 3),
        "secs": {"converted": secs_converted, "source": secs_source},
        "reference_clips": target_clips, "target_rank": rank, "voices_ranked": len(order),
        "closest_voices": order[:3],
        "text": phrase.text, "reference": {"text": reference_text, "from": reference_from},
        "transcripts": {"source": transcript_source, "converted": transcript_converted},
        "cer": cer, "dnsmos": dnsmos,
        "f0": f0.to_dict(), "f0_floor": floor.to_dict() if floor else None, "f0_intended_from": intended_from,
        "_f0_tracks": (converted_f0, intended),
    }
    if pair.is_self:  # the original recording is the parallel ground truth
        started = time.perf_counter()
        mcd = metrics.mel_cepstral_distortion(source, converted, sr)
        row["mcd_db"], row["mcd_frames"] = mcd.mcd_db, mcd.frames
        timings.add("mcd", started)
    return row


def pooled_cer(counts: list[dict]) -> float:
    """CER pooled over phrases: edits over characters of ``counts`` ({"edits", "chars"} each, as
    :func:`cer_counts` gives them); nan without characters."""
    chars = sum(c["chars"] for c in counts)
    return sum(c["edits"] for c in counts) / chars if chars else float("nan")


def pooled_cer_of(rows: list[dict], key: str) -> float:
    """:func:`pooled_cer` of the phrase rows' ``cer[key]`` counts (converted, source, ...), rows without them left out."""
    return pooled_cer([r["cer"][key] for r in rows if r["cer"].get(key)])


def cer_by_kind(rows: list[dict]) -> dict[str, dict[str, float]]:
    """CER pooled per phrase kind: ``{kind: {"converted": cer, "source": cer}}`` (speech and sung phrases can lose
    words for different reasons, so the pooled figure alone hides which)."""
    return {kind: {key: pooled_cer_of([r for r in rows if r["kind"] == kind], key) for key in ("converted", "source")}
            for kind in sorted({r["kind"] for r in rows})}


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def phrase_summary(rows: list[dict]) -> dict:
    """What a pair's summary takes from its phrase rows as a report keeps them (speaker similarity, rank, CER,
    DNSMOS, MCD): everything but the F0 figures, which :func:`summarise` pools over frames. Also what
    ``tools/pool_real.py`` computes over the phrases of several reports."""
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    summary = {
        "phrases": len(rows), "kinds": kinds,
        "secs_converted": _mean(r["secs"]["converted"] for r in rows),
        "secs_source": _mean(r["secs"]["source"] for r in rows),
        "mean_target_rank": _mean(r["target_rank"] for r in rows),
        "target_top1_fraction": _mean([float(r["target_rank"] == 1) for r in rows]),
        "voices_ranked": max((r["voices_ranked"] for r in rows), default=0),
        "cer_converted": pooled_cer_of(rows, "converted"), "cer_source": pooled_cer_of(rows, "source"),
        "cer_converted_vs_source_transcript": pooled_cer_of(rows, "converted_vs_source_transcript"),
        "cer_by_kind": cer_by_kind(rows),
    }
    for key in ("ovrl", "sig", "bak", "p808"):
        summary[f"dnsmos_{key}_converted"] = _mean(r["dnsmos"]["converted"][key] for r in rows)
        summary[f"dnsmos_{key}_source"] = _mean(r["dnsmos"]["source"][key] for r in rows)
    if any("mcd_db" in r for r in rows):
        summary["mcd_db"] = _mean(r.get("mcd_db") for r in rows)
    return summary


def summarise(rows: list[dict]) -> dict:
    """A pair's summary: :func:`phrase_summary` and the F0 errors pooled over every frame of its phrases
    (``_f0_tracks``, kept only while the run measures)."""
    pooled = metrics.f0_cents_error(np.concatenate([r["_f0_tracks"][0] for r in rows]),
                                    np.concatenate([r["_f0_tracks"][1] for r in rows]))
    floors = [r["f0_floor"]["median_abs_cents"] for r in rows if r.get("f0_floor")]
    return {**phrase_summary(rows),
            "f0_median_abs_cents": pooled.median_abs_cents, "f0_rmse_cents": pooled.rmse_cents,
            "f0_off_50_cents": pooled.off_50_cents, "f0_octave_errors": pooled.octave_errors,
            "f0_mean_cents": pooled.mean_cents, "voicing_agreement": pooled.voicing_agreement,
            "f0_floor_median_abs_cents": _mean(floors)}


# -------------------------------------------------------------------------------------------- report

def percent(value: float | None, digits: int) -> str:
    """A share as a percentage; ``-`` for None/NaN (a JSON report read back holds None for NaN)."""
    return "-" if value is None or not np.isfinite(value) else f"{value * 100:.{digits}f}%"


def _kinds(summary: dict) -> str:
    return " + ".join(f"{n} {k}" for k, n in sorted(summary.get("kinds", {}).items()))


def pair_rows(document: dict, label: str | None = None) -> list[str]:
    """Rows of the conversion table (one per cross pair)."""
    rows = []
    for pair in document["pairs"]:
        if pair["self"]:
            continue
        s = pair["summary"]
        cells = ([label] if label is not None else []) + [
            f"{pair['source']} → {pair['target']}", f"{pair['transpose_semitones']:+.0f}",
            f"{s['phrases']} ({_kinds(s)})",
            f"{fmt(s['secs_converted'], 3)} / {fmt(s['secs_source'], 3)}",
            f"{fmt(s['mean_target_rank'], 1)} of {s['voices_ranked']} ({percent(s['target_top1_fraction'], 0)})",
            f"{fmt(s['cer_converted'])} / {fmt(s['cer_source'])}",
            f"{fmt(s['dnsmos_ovrl_converted'])} / {fmt(s['dnsmos_ovrl_source'])}",
            f"{fmt(s['f0_median_abs_cents'], 1)} / {fmt(s['f0_rmse_cents'], 0)}",
            f"{percent(s['f0_off_50_cents'], 0)} / {percent(s['f0_octave_errors'], 1)}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def self_rows(document: dict, label: str | None = None) -> list[str]:
    """Rows of the self-conversion table (one per voice converted into itself)."""
    rows = []
    for pair in document["pairs"]:
        if not pair["self"]:
            continue
        s = pair["summary"]
        cells = ([label] if label is not None else []) + [
            pair["target"], f"{s['phrases']} ({_kinds(s)})", fmt(s.get("mcd_db")),
            f"{fmt(s['secs_converted'], 3)} / {fmt(s['secs_source'], 3)}",
            f"{fmt(s['mean_target_rank'], 1)} of {s['voices_ranked']}",
            f"{fmt(s['cer_converted'])} / {fmt(s['cer_source'])}",
            f"{fmt(s['dnsmos_ovrl_converted'])} / {fmt(s['dnsmos_ovrl_source'])}",
            f"{fmt(s['f0_median_abs_cents'], 1)} / {fmt(s['f0_rmse_cents'], 0)}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


PAIR_HEADER = ("| source → target | transpose (st) | phrases | SECS conv / src | target rank (top-1) | CER conv / src "
               "| DNSMOS OVRL conv / src | F0 median / RMSE (cents) | F0 > 50 c / octave |",
               "|---|---:|---|---:|---:|---:|---:|---:|---:|")
SELF_HEADER = ("| voice | phrases | MCD conv vs orig (dB) | SECS conv / orig | target rank | CER conv / orig "
               "| DNSMOS OVRL conv / orig | F0 median / RMSE (cents) |",
               "|---|---|---:|---:|---:|---:|---:|---:|")


def _with_label(header: tuple[str, str]) -> tuple[str, str]:
    return "| label " + header[0], "|---" + header[1]


def markdown_report(document: dict) -> str:
    """The tool's own report: the summary tables and one line per phrase."""
    lines = [f"# Real-voice conversion: {document['label']}", "",
             f"{document['created']}; base `{document['base']['path']}`; corpus `{document['corpus']['path']}`; "
             f"{document['machine']}; load average {document['load_average']['before']} before, "
             f"{document['load_average']['after']} after; {document['run_seconds']:.0f} s", ""]
    if document.get("settings", {}).get("role") == "validation":
        lines += ["Measured on the **validation** voices: for choosing settings and bases, not for reporting "
                  "(BENCHMARKS.md reports the held-out voices). Their phrases have no transcript: CER is against "
                  "Whisper's reading of the speech each phrase was sung from (of the phrase itself for speech "
                  "phrases, whose own CER is then 0).", ""]
    if any(not p["self"] for p in document["pairs"]):
        lines += ["## Conversions", "", *PAIR_HEADER, *pair_rows(document), ""]
    if any(p["self"] for p in document["pairs"]):
        lines += ["## Self-conversion", "", *SELF_HEADER, *self_rows(document), ""]
    lines += real_criteria.markdown(document)
    split = [(pair, kind, cer) for pair in document["pairs"]
             for kind, cer in (pair["summary"].get("cer_by_kind") or {}).items()]
    if split:
        lines += ["## CER by kind", "", "| source → target | kind | phrases | CER conv / src |", "|---|---|---:|---:|"]
        lines += [f"| {pair['source']} → {pair['target']} | {kind} | {pair['summary']['kinds'][kind]} | "
                  f"{fmt(cer['converted'])} / {fmt(cer['source'])} |" for pair, kind, cer in split]
        lines.append("")
    lines += ["## Phrases", "", "| source → target | phrase | kind | SECS conv / src | rank | CER conv / src "
              "| DNSMOS conv / src | F0 median (cents) | MCD (dB) | transcript of the conversion |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for pair in document["pairs"]:
        for r in pair["phrases"]:
            source_cer = r["cer"]["source"]["cer"] if r["cer"].get("source") else None
            transcript = (r["transcripts"]["converted"] or "").replace("|", "/")
            lines.append(f"| {pair['source']} → {pair['target']} | {r['phrase']} | {r['kind']} | "
                         f"{fmt(r['secs']['converted'], 3)} / {fmt(r['secs']['source'], 3)} | {fmt(r['target_rank'])} | "
                         f"{fmt(r['cer']['converted']['cer'])} / {fmt(source_cer)} | "
                         f"{fmt(r['dnsmos']['converted']['ovrl'])} / {fmt(r['dnsmos']['source']['ovrl'])} | "
                         f"{fmt(r['f0']['median_abs_cents'], 1)} | {fmt(r.get('mcd_db'))} | {transcript} |")
    return "\n".join(lines) + "\n"


DEFINITIONS = (
    "SECS: cosine of Resemblyzer speaker embeddings, converted audio (or, after the slash, the unconverted "
    "source) against the target voice's reference = the normalised mean embedding of up to {ref_clips} of its "
    "eval phrases, the compared phrase left out (same voice, different phrase: ~0.8-0.95; different real voices: "
    "~0.5-0.75). Target rank: where the target voice stands, by cosine to the converted audio, among the "
    "references of all corpus voices (1 = closest; top-1 = share of phrases where it is first). CER: character "
    "error rate of Whisper {whisper} (faster-whisper, int8, CPU; told the language) against the phrase's text, "
    "lowercased, punctuation removed; after the slash the source recording's own. DNSMOS OVRL: P.835 overall "
    "quality (1-5) of converted / source. F0: harvest F0 of the converted audio against the intended contour "
    "(the phrase's imposed F0, transposed by the whole octaves between the two voices' F0 medians), pooled over "
    "phrases: median |cents| / RMSE, share of frames off by more than 50 cents / by an octave (> 600 cents). "
    "Self-conversion: each held-out voice's own phrases converted into its own adapter (transpose 0), "
    "compared with the original recording (MCD: frame-by-frame mel-cepstral distortion, WORLD envelopes, as "
    "in \"Conversion quality\"; SECS conv / orig: the conversion's and the original's similarity to the "
    "voice's other phrases): the ceiling of what any conversion into that voice reaches.")


def _keep_rows(old_body: str, heading: str, label: str) -> list[str]:
    """The table rows under ``### {heading}`` of an earlier section whose first cell is not ``label``."""
    kept, inside, seen = [], False, 0
    for line in old_body.splitlines():
        if line.startswith("### "):
            inside, seen = line[4:].strip() == heading, 0
            continue
        if inside and line.startswith("|"):
            seen += 1
            if seen <= 2:  # header and separator
                continue
            first = line.strip("|").split("|")[0].strip()
            if first != label:
                kept.append(line)
    return kept


def _keep_block(old_body: str, heading: str, label: str | None = None) -> list[str]:
    """Lines under ``### {heading}`` (the runs list: without ``label``'s entry; notes: all)."""
    kept, inside = [], False
    for line in old_body.splitlines():
        if line.startswith("### "):
            inside = line[4:].strip() == heading
            continue
        if inside and not (label is not None and line.startswith(f"- **{label}**")):
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    while kept and not kept[0].strip():
        kept.pop(0)
    return kept


def run_line(document: dict) -> str:
    adapters = sorted({f"{p['adapter']['name']} ({p['adapter']['method']}, {fmt(p['adapter']['steps'])} steps)"
                       for p in document["pairs"]})
    content = document["settings"]["content"]
    load = document["load_average"]
    return (f"- **{document['label']}**: {document['created']}; base `{document['base']['path']}` (sha256 "
            f"{document['base']['sha256'][:12]}), content encoder `{content.get('path')}` layer {content.get('layer')}; "
            f"adapters {', '.join(adapters)}; {'quick, ' if document['settings']['quick'] else ''}Whisper "
            f"{document['settings']['whisper']}; {document['run_seconds']:.0f} s on {document['machine']}; load average "
            f"{load['before']} before, {load['after']} after; `{document['command']}`")


def bench_section(document: dict, old_body: str = "") -> str:
    """The "Real voices" section: this run's rows beside the rows of other labels already there."""
    label = document["label"]
    pairs = _keep_rows(old_body, "Conversions", label) + pair_rows(document, label)
    selfs = _keep_rows(old_body, "Self-conversion", label) + self_rows(document, label)
    runs = _keep_block(old_body, "Runs", label) + [run_line(document)]
    notes = _keep_block(old_body, "Notes")
    body = [
        "Measured with `tools/eval_real.py` on the real-voice corpus `data/real` (`tools/real_corpus.py`: real "
        "speakers' speech and WORLD-sung phrases with an exact imposed F0; held-out voices never seen by a base). "
        "Each row set is one base + its adapters (the label); a new `--bench --label L` run replaces L's rows and "
        "keeps the others, so later bases are compared with the first.",
        "", "### Conversions", "", *_with_label(PAIR_HEADER), *pairs,
        "", "### Self-conversion", "", *_with_label(SELF_HEADER), *selfs,
        "", "### Runs", "", *runs,
        "", "### Definitions", "",
        DEFINITIONS.format(ref_clips=document["settings"]["ref_clips"], whisper=document["settings"]["whisper"]),
    ]
    if notes:
        body += ["", "### Notes", "", *notes]
    return "\n".join(body)


def read_section(path: Path, title: str) -> str:
    if not path.is_file():
        return ""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", path.read_text(encoding="utf-8"), re.S | re.M)
    return found.group(1) if found else ""


def write_reports(document: dict, out: Path, bench: Path | None = None) -> Path:
    """``out`` (JSON) and ``out`` with ``.md``; with ``bench``, that file's "Real voices" section. Returns the
    markdown path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, json_safe(document))
    markdown = out.with_suffix(".md")
    atomic_write_text(markdown, markdown_report(document))
    if bench is not None:
        replace_section(bench, SECTION, bench_section(document, read_section(bench, SECTION)))
    return markdown


# -------------------------------------------------------------------------------------------- prepare

def content_overrides(base_config: dict, args: argparse.Namespace) -> list[str]:
    """Preprocess overrides that select the content encoder the base was trained with."""
    from ai_singer.conf_dir import conf_dir

    recorded = dict(base_config.get("content_encoder") or {})
    name = str(recorded.get("name") or "hubert")
    overrides = [f"content={name}"] if (Path(conf_dir()) / "content" / f"{name}.yaml").is_file() else \
        [f"content.name={name}"]
    path = args.content_path or recorded.get("path")
    if path:
        overrides.append(f"content.path={path}")
    layer = args.content_layer if args.content_layer is not None else recorded.get("layer")
    if layer is not None:
        overrides.append(f"content.layer={layer}")
    final_proj = args.content_final_proj if args.content_final_proj is not None else recorded.get("final_proj")
    if final_proj is not None:
        overrides.append(f"content.final_proj={str(bool(final_proj)).lower()}")
    return overrides


def prepare_commands(args: argparse.Namespace, voices: list[str]) -> list[list[str]]:
    """Preprocess the voices' raw recordings with the base's content encoder (unless ``--no-preprocess``), then
    one fine-tune each (``--peft``)."""
    base_config = read_yaml(args.base / "config.yaml")
    python = sys.executable
    commands = [] if args.no_preprocess else [
        [python, "-m", "ai_singer.preprocess", f"paths.raw={args.corpus / 'raw'}", f"paths.processed={args.processed}",
         f"singers=[{','.join(voices)}]", *content_overrides(base_config, args), *args.preprocess_arg]]
    for voice in voices:
        commands.append([python, "-m", "ai_singer.train", "mode=finetune", f"singer={voice}", f"base={args.base}",
                         f"peft={args.peft}", f"paths.processed={args.processed}", f"paths.singers={args.singers_dir}",
                         f"paths.runs={args.runs_dir}", f"trainer.max_steps={args.steps}", "trainer.batch_size=4",
                         "trainer.max_frames=128", "trainer.num_workers=0", "trainer.save_every=100",
                         "trainer.log_every=50", "trainer.progress=false", "seed=0", *args.train_arg])
    return commands


def prepare(args: argparse.Namespace, corpus: Corpus) -> int:
    voices = args.self or role_voices(args, corpus)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for command in prepare_commands(args, voices):
        print("+ " + shlex.join(command), flush=True)
        if not args.dry_run:
            started = time.perf_counter()
            code = subprocess.run(command, env=env, cwd=REPO).returncode
            print(f"  ({time.perf_counter() - started:.0f} s, exit {code})", flush=True)
            if code != 0:
                return code
    return 0


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/real"), help="real-voice corpus (voices.json)")
    parser.add_argument("--base", type=Path, default=None, help="base artifact folder (pretrain/<name>); required")
    parser.add_argument("--singers-dir", type=Path, default=None, help="adapter folders of the target voices; required")
    parser.add_argument("--pairs", nargs="*", default=None, metavar="SRC:TGT[=ADAPTER]",
                        help="source voice : target voice (default: the --role voices, sorted, each into the next "
                             "around: two voices both ways)")
    parser.add_argument("--role", choices=("heldout", "validation"), default="heldout",
                        help="which voices are measured: heldout (reported; the default) or validation (for "
                             "choosing settings and bases: never reported in BENCHMARKS.md, so the held-out "
                             "numbers are not tuned on); targets are ranked among the train voices and these")
    parser.add_argument("--train-sources", action="store_true",
                        help="also convert every train voice into every --role target")
    parser.add_argument("--self", nargs="*", default=None, metavar="VOICE",
                        help="self-conversion of these voices (default: every --role voice); --self alone: none")
    parser.add_argument("--out", type=Path, default=Path("runs/eval/real.json"), help="JSON report (+ .md beside)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_PHRASES} phrases per source voice (both kinds), 4 reference clips")
    parser.add_argument("--max-phrases", type=int, default=None, help="phrases per source voice (default: all)")
    parser.add_argument("--ref-clips", type=int, default=None, help="clips per voice reference (default 8, quick 4)")
    parser.add_argument("--whisper", choices=real_metrics.WHISPER_MODELS, default="base",
                        help="ASR model (base: multilingual, ~0.6 s a phrase on one core)")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where Whisper base is joined (default "
                        "$AI_SINGER_CACHE or ~/.cache/ai_singer)")
    parser.add_argument("--content-path", default=None, help="content encoder folder (default: the base's record)")
    parser.add_argument("--content-layer", type=int, default=None)
    parser.add_argument("--content-final-proj", type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
    parser.add_argument("--f0-method", default=None, help="F0 extractor used by the conversion (default: conf/f0's)")
    parser.add_argument("--eval-f0-method", default="harvest", help="F0 extractor that measures the audio")
    parser.add_argument("--noise-scale", type=float, default=None, help="default: conf/infer.yaml's")
    parser.add_argument("--retrieval-ratio", type=float, default=None, help="default: conf/infer.yaml's")
    parser.add_argument("--seed", type=int, default=None, help="default: conf/infer.yaml's")
    parser.add_argument("--transpose-offset", type=float, default=0.0, metavar="SEMITONES",
                        help="added to each cross pair's whole-octave transpose (the intended contour moves with it): "
                             "e.g. +4 puts phrases above a target's range to measure conversion there")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="refine.steps of the conversion (ai_singer/refine.py; default: conf/infer.yaml's)")
    parser.add_argument("--refine-encoder", default=None, help="refine.encoder (default: conf/infer.yaml's)")
    parser.add_argument("--refine-learning-rate", type=float, default=None, help="refine.learning_rate")
    parser.add_argument("--refine-prior-weight", type=float, default=None, help="refine.prior_weight")
    parser.add_argument("--refine-timbre-weight", type=float, default=None, help="refine.timbre_weight")
    parser.add_argument("--refine-speaker-weight", type=float, default=None, help="refine.speaker_weight")
    parser.add_argument("--refine-centre", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                        help="refine.centre (true/false)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (conversion)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch, Whisper and DNSMOS (default 1)")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="fine-tune runs (default runs/real/<base name>)")
    parser.add_argument("--save-audio", type=Path, default=None, help="also write the converted phrases here")
    parser.add_argument("--label", default=None, help="row label in BENCHMARKS.md (default: base + method steps)")
    parser.add_argument("--bench", action="store_true", help="add/replace --label's rows in the Real voices section")
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                        help="measure nothing: rewrite the .md (and with --bench the BENCHMARKS rows, --label "
                             "replacing the recorded label) from an earlier run's JSON report")
    prep = parser.add_argument_group("--prepare: preprocess the --role voices and fine-tune their adapters")
    prep.add_argument("--prepare", action="store_true", help="do that instead of measuring")
    prep.add_argument("--steps", type=int, default=500, help="fine-tuning steps (a larger value resumes the run)")
    prep.add_argument("--peft", default="lora")
    prep.add_argument("--processed", type=Path, default=None,
                      help="processed data folder (default data/processed_real_<base name>)")
    prep.add_argument("--preprocess-arg", action="append", default=[], help="extra preprocess override (repeatable)")
    prep.add_argument("--no-preprocess", action="store_true",
                      help="use --processed as it is (already preprocessed with the base's content encoder)")
    prep.add_argument("--train-arg", action="append", default=[], help="extra fine-tune override (repeatable)")
    prep.add_argument("--dry-run", action="store_true", help="print the --prepare commands only")
    args = parser.parse_args(argv)
    if args.from_json is None and (args.base is None or args.singers_dir is None):
        parser.error("--base and --singers-dir are required (except with --from-json)")
    if args.bench and args.role != "heldout":
        parser.error("--bench reports held-out voices only: validation numbers choose candidates and stay out of "
                     "BENCHMARKS.md (drop --bench, or measure --role heldout)")
    if args.ref_clips is None:
        args.ref_clips = 4 if args.quick else 8
    if args.max_phrases is None and args.quick:
        args.max_phrases = QUICK_PHRASES
    if args.base is None:
        return args
    if args.runs_dir is None:
        args.runs_dir = Path("runs/real") / args.base.name
    if args.processed is None:
        args.processed = Path("data") / f"processed_real_{args.base.name}"
    return args


def conversion_settings(args: argparse.Namespace):
    """The conversion's settings: conf/infer.yaml (and conf/f0) with the options given on the command line;
    the options left out are filled in from them (the report records what was used)."""
    from ai_singer.config import load_settings

    given = {"f0.method": args.f0_method, "noise_scale": args.noise_scale, "seed": args.seed,
             "retrieval_ratio": args.retrieval_ratio, "refine.steps": args.refine_steps,
             "refine.encoder": args.refine_encoder, "refine.learning_rate": args.refine_learning_rate,
             "refine.prior_weight": args.refine_prior_weight, "refine.timbre_weight": args.refine_timbre_weight,
             "refine.centre": args.refine_centre, "refine.speaker_weight": args.refine_speaker_weight}
    settings = load_settings("infer", [f"{key}={value}" for key, value in given.items() if value is not None])
    args.f0_method, args.noise_scale = settings.f0.method, settings.noise_scale
    args.seed, args.retrieval_ratio = settings.seed, settings.retrieval_ratio
    args.refine = dataclasses.asdict(settings.refine)
    return settings


def ring(voices: list[str]) -> list[tuple[str, str]]:
    """Each voice (sorted) into the next, around: every voice a source and a target once (two voices: both
    ways)."""
    voices = sorted(voices)
    return [(voices[k], voices[(k + 1) % len(voices)]) for k in range(len(voices))] if len(voices) > 1 else []


def role_voices(args: argparse.Namespace, corpus: Corpus) -> list[str]:
    """The ``--role`` voices of the corpus; an error naming how to make them when there are none."""
    voices = corpus.role(args.role)
    if not voices:
        how = "tools/real_corpus.py --validation-dir" if args.role == "validation" else "tools/real_corpus.py"
        raise EvalError(f"{args.corpus / 'voices.json'}: no {args.role} voice (make the corpus with {how}, or name "
                        f"voices with --pairs / --self)")
    return voices


def select_pairs(args: argparse.Namespace, corpus: Corpus) -> list[tuple[str, str, str | None]]:
    uses_role = args.pairs is None or args.self is None or args.train_sources  # explicit pairs + --self need none
    measured = role_voices(args, corpus) if uses_role else []
    if args.pairs is None:
        chosen = [(s, t, None) for s, t in ring(measured)]
    else:
        chosen = [parse_pair(text) for text in args.pairs]
    if args.train_sources:
        chosen += [(s, t, None) for s in corpus.train for t in measured]
    selfs = measured if args.self is None else list(args.self)
    chosen += [(v, v, None) for v in selfs]
    for source, target, _ in chosen:
        for voice in (source, target):
            if voice not in corpus.voices:
                raise EvalError(f"{voice!r} is not a voice of {args.corpus / 'voices.json'} "
                                f"({', '.join(sorted(corpus.voices))})")
        if not corpus.phrases.get(source):
            raise EvalError(f"{args.corpus / 'eval' / source}: no eval phrase to convert")
    return list(dict.fromkeys(chosen))


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    import torch

    from ai_singer.infer import Converter, InferError

    log = (lambda *_: None) if args.quiet else (lambda text: print(text, flush=True))
    wall = time.perf_counter()
    load_before = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    pairs = [Pair(s, t, find_adapter(t, args.singers_dir, explicit)) for s, t, explicit in select_pairs(args, corpus)]
    if not (args.base / "config.yaml").is_file():
        raise EvalError(f"{args.base}: no base artifact (config.yaml + generator.safetensors)")
    base_config = read_yaml(args.base / "config.yaml")
    content = content_group(args, base_config)
    settings = conversion_settings(args)
    timings = Timings()
    started = time.perf_counter()
    try:
        converter = Converter(args.base, content, settings, args.singers_dir, device=args.device)
    except InferError as error:
        raise EvalError(str(error)) from None
    timings.add("load_models", started)
    log(f"loaded {args.base} (content encoder {content.get('path')}, layer {content.get('layer')}); "
        f"{len(pairs)} pairs")
    ranked = list(dict.fromkeys(corpus.ranked(args.role) + [v for p in pairs for v in (p.source, p.target)]))
    tools = Instruments(corpus, args, timings, ranked)

    results = []
    for pair in pairs:
        try:
            adapter = converter.adapter(pair.adapter)
        except InferError as error:
            raise EvalError(str(error)) from None
        source_hz = float(corpus.voices[pair.source].get("f0_median_hz") or 0.0)
        target_hz = float(corpus.voices[pair.target].get("f0_median_hz") or 0.0)
        transpose = 0.0 if pair.is_self else (real_metrics.nearest_octave_transpose(source_hz, target_hz)
                                              + args.transpose_offset)
        rows = []
        for phrase in pick_phrases(corpus.phrases[pair.source], args.max_phrases):
            row = evaluate_phrase(converter, tools, phrase, pair, transpose, settings, args, timings)
            rows.append(row)
            log(f"  {pair.source} → {pair.target} {phrase.id} ({phrase.kind}): SECS {fmt(row['secs']['converted'], 3)}"
                f" vs {fmt(row['secs']['source'], 3)} (rank {fmt(row['target_rank'])}), CER "
                f"{fmt(row['cer']['converted']['cer'])}, DNSMOS {fmt(row['dnsmos']['converted']['ovrl'])}, F0 "
                f"{fmt(row['f0']['median_abs_cents'], 1)} c" + (f", MCD {fmt(row['mcd_db'])} dB" if pair.is_self else ""))
        summary = summarise(rows)
        for row in rows:
            del row["_f0_tracks"]
        steps = adapter.config.get("steps")
        if not isinstance(steps, int):
            steps = adapter_steps(args.singers_dir / pair.adapter, adapter.config, args.runs_dir)
        results.append({
            "source": pair.source, "target": pair.target, "self": pair.is_self,
            "adapter": {"name": pair.adapter, "path": str(args.singers_dir / pair.adapter),
                        "method": adapter.method, "steps": steps, "base_sha256": adapter.base_sha256},
            "transpose_semitones": transpose, "source_f0_median_hz": source_hz, "target_f0_median_hz": target_hz,
            "phrases": rows, "summary": summary})

    methods = sorted({(r["adapter"]["method"], r["adapter"]["steps"]) for r in results}, key=str)
    label = args.label or f"{args.base.name} + " + ", ".join(f"{m} {fmt(s)}" for m, s in methods)
    document = {
        "format_version": 1,
        "label": label,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "load_average": {"before": load_before, "after": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
                         "note": "1 / 5 / 15 min"},
        "command": "tools/eval_real.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "corpus": {"path": str(args.corpus), "voices": corpus.voices},
        "base": {"path": str(args.base), "name": args.base.name, "sha256": converter.base.sha256},
        "settings": {"content": {k: content.get(k) for k in ("name", "path", "layer", "final_proj")},
                     "role": args.role, "quick": bool(args.quick), "max_phrases": args.max_phrases,
                     "ref_clips": args.ref_clips,
                     "whisper": args.whisper, "beam_size": args.beam_size, "f0_method": args.f0_method,
                     "eval_f0_method": args.eval_f0_method, "noise_scale": args.noise_scale,
                     "retrieval_ratio": args.retrieval_ratio, "seed": args.seed, "threads": args.threads,
                     "transpose_offset": args.transpose_offset,
                     "refine": getattr(args, "refine", None)},
        "models": {"speaker": "resemblyzer (GE2E, 256-d)",
                   "asr": f"whisper {args.whisper} ({tools._transcriber.path if tools._transcriber else '-'})",
                   "quality": "DNSMOS P.835 + P.808 (speechmos)"},
        "pairs": results,
        "timings_s": {k: round(v, 1) for k, v in timings.seconds.items()},
        "run_seconds": round(time.perf_counter() - wall, 1),
    }
    markdown = write_reports(document, args.out, args.benchmarks if args.bench else None)
    print(markdown.read_text(encoding="utf-8").split("## Phrases")[0].rstrip())
    log(f"wrote {args.out} and {markdown}" + (f"; the {SECTION} section of {args.benchmarks}" if args.bench else "")
        + f" ({document['run_seconds']:.0f} s; " + ", ".join(f"{k} {v:.0f} s" for k, v in
                                                            document["timings_s"].items()) + ")")
    return document


def rewrite_reports(args: argparse.Namespace) -> int:
    try:
        document = json.loads(args.from_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise EvalError(f"{args.from_json}: cannot read the report ({error})") from None
    if args.label:
        document["label"] = args.label
    if args.bench and document.get("settings", {}).get("role", "heldout") != "heldout":
        raise EvalError(f"{args.from_json}: measured on the {document['settings']['role']} voices; --bench reports "
                        f"held-out voices only (validation numbers choose candidates and stay out of BENCHMARKS.md)")
    markdown = args.from_json.with_suffix(".md")
    atomic_write_text(markdown, markdown_report(document))
    if args.bench:
        replace_section(args.benchmarks, SECTION, bench_section(document, read_section(args.benchmarks, SECTION)))
    print(f"wrote {markdown}" + (f" and the {SECTION} section of {args.benchmarks}" if args.bench else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.prepare:
            return prepare(args, load_corpus(args.corpus))
        if args.from_json:
            return rewrite_reports(args)
        run(args, argv)
    except (EvalError, real_metrics.EvalExtraMissing) as error:
        print(f"eval_real: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
