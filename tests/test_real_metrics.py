"""tools/real_metrics.py and tools/eval_real.py on known cases: identical audio -> speaker similarity 1 and
CER 0, another (synthetic) voice -> lower similarity, text normalisation and edit distance, the Whisper
folders found in the installed wheels (base joined once, atomically), DNSMOS in range and lower for a noisy
copy, an octave-shifted F0 -> 1200 cents and 100% octave errors, and the tool's reports (JSON, markdown, the
BENCHMARKS section keeping other labels' rows). The eval extra is installed in CI: nothing is skipped."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import harmonic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from tools import eval_real, real_criteria, real_metrics  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def embedder():
    return real_metrics.SpeakerEmbedder()


@pytest.fixture(scope="module")
def two_voices():
    """Two synthetic singers (a soprano and a bass: other vocal tract, tilt, range) singing six phrases each."""
    from tools.synth.corpus import derive_rng
    from tools.synth.melody import make_phrase
    from tools.synth.singers import make_singer
    from tools.synth.voice import render_phrase

    seed = 0
    singers = [make_singer(i, derive_rng(seed, 1, i)) for i in (0, 1)]
    phrases = [make_phrase(derive_rng(seed, 2, k), f"p{k}", 2.0) for k in range(6)]
    return [[render_phrase(phrase, singer, SR, derive_rng(seed, 5, k, i)).audio for k, phrase in enumerate(phrases)]
            for i, singer in enumerate(singers)]


# ------------------------------------------------------------------------------------------- speaker

def test_identical_audio_has_similarity_one(embedder, two_voices):
    clip = two_voices[0][0]
    assert embedder.similarity(clip, SR, clip.copy(), SR) == pytest.approx(1.0, abs=1e-6)
    at_44k = embedder.embed(real_metrics._mono16k(clip, SR), SR)  # the rate is handled (resampled to 16 kHz)
    assert real_metrics.cosine(at_44k, embedder.embed(clip, SR)) == pytest.approx(1.0, abs=1e-6)


def test_another_voice_is_less_similar_and_ranks_lower(embedder, two_voices):
    embeddings = [[embedder.embed(clip, SR) for clip in clips] for clips in two_voices]
    references = {f"v{i}": real_metrics.mean_embedding(e[:3]) for i, e in enumerate(embeddings)}  # 3 clips each
    for i in (0, 1):
        same = np.mean([real_metrics.cosine(e, references[f"v{i}"]) for e in embeddings[i][3:]])
        other = np.mean([real_metrics.cosine(e, references[f"v{i}"]) for e in embeddings[1 - i][3:]])
        assert same > other + 0.1, (i, same, other)
    ranks = [real_metrics.rank_of("v0", e, references)[0] for e in embeddings[0][3:]]
    assert np.mean(ranks) < 1.5 and real_metrics.rank_of("nobody", embeddings[0][0], references)[0] == 0
    assert np.linalg.norm(references["v0"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        real_metrics.mean_embedding([])


# ---------------------------------------------------------------------------------------------- text

@pytest.mark.parametrize("text, normalised", [
    ("Hello,  World!", "hello world"),
    ("  Vous êtes maintenant en ligne. ", "vous êtes maintenant en ligne"),
    ("L'appel — n°3?", "lappel n 3"),
    ("", ""), (None, ""),
])
def test_normalize_text(text, normalised):
    assert real_metrics.normalize_text(text) == normalised


def test_levenshtein_and_character_error_rate_of_known_strings():
    assert real_metrics.levenshtein("kitten", "sitting") == 3
    assert real_metrics.levenshtein("", "abc") == real_metrics.levenshtein("abc", "") == 3
    assert real_metrics.levenshtein("flaw", "lawn") == 2 and real_metrics.levenshtein("same", "same") == 0
    assert real_metrics.character_error_rate("All circuits are busy now.", "all circuits are busy now") == 0.0
    assert real_metrics.character_error_rate("hello word", "hello world") == pytest.approx(1 / 11)
    assert real_metrics.character_error_rate("", "abcd") == 1.0
    assert real_metrics.character_error_rate("abcd abcd", "abcd") == pytest.approx(5 / 4)  # insertions: above 1
    assert real_metrics.character_error_rate("", "") == 0.0 and real_metrics.character_error_rate("x", "") == 1.0
    assert eval_real.cer_counts("hello word", "Hello, world!") == {"cer": pytest.approx(1 / 11), "edits": 1, "chars": 11}


# ------------------------------------------------------------------------------------------- Whisper

def test_whisper_folders_come_from_the_wheels_and_base_is_joined_once(tmp_path):
    tiny = real_metrics.whisper_model_dir("tiny.en")
    assert (tiny / "model.bin").is_file() and (tiny / "config.json").is_file()
    joined = real_metrics.whisper_model_dir("base", cache_dir=tmp_path)
    assert joined.parent == tmp_path and (joined / "model.bin").is_file()
    assert all((joined / name).is_file() for name in ("config.json", "tokenizer.json"))
    stamp = (joined / "model.bin").stat().st_mtime_ns
    assert real_metrics.whisper_model_dir("base", cache_dir=tmp_path) == joined  # reused, not rebuilt
    assert (joined / "model.bin").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [joined.name]  # no temporary folder left behind
    with pytest.raises(ValueError, match="unknown Whisper model"):
        real_metrics.whisper_model_dir("large")


def test_identical_audio_transcribes_identically_cer_zero(tmp_path, two_voices):
    transcriber = real_metrics.Transcriber("base", cache_dir=tmp_path, beam_size=1)
    clip = np.concatenate([two_voices[0][0], two_voices[0][1]])
    first = transcriber.transcribe(clip, SR, "en")
    assert isinstance(first, str)
    assert real_metrics.character_error_rate(transcriber.transcribe(clip.copy(), SR, "en"), first) == 0.0
    english = real_metrics.Transcriber("tiny.en", beam_size=1)
    with pytest.raises(ValueError, match="English only"):
        english.transcribe(clip, SR, "fr")


# ------------------------------------------------------------------------------------------- quality

def test_dnsmos_in_range_and_lower_for_a_noisy_copy(two_voices):
    scorer = real_metrics.QualityScorer()
    clip = np.concatenate(two_voices[0][:2])
    clean = scorer.score(clip, SR)
    assert set(clean) == {"ovrl", "sig", "bak", "p808"}
    assert all(1.0 <= value <= 5.0 for value in clean.values()), clean
    noisy = clip + np.random.default_rng(0).normal(0.0, 0.05, clip.shape).astype(np.float32)
    dirty = scorer.score(noisy, SR)
    assert dirty["ovrl"] < clean["ovrl"] - 0.3 and dirty["bak"] < clean["bak"], (clean, dirty)
    assert scorer.score(clip, SR) == clean  # deterministic
    with pytest.raises(ValueError, match="silent"):
        scorer.score(np.zeros(SR, dtype=np.float32), SR)


# --------------------------------------------------------------------------------------------- pitch

@pytest.mark.parametrize("sr", [44100, 16000])
def test_octave_shifted_audio_is_1200_cents_off_with_all_frames_octave_errors(sr):
    f0_sr, hop, intended_hz = 44100, 512, 165.0
    n_frames = int(1.2 * f0_sr) // hop
    intended = np.full(n_frames, intended_hz)
    up = harmonic(2 * intended_hz, sr, 1.2)
    error = real_metrics.pitch_error(up, sr, intended, hop, f0_sr)
    assert error.median_abs_cents == pytest.approx(1200.0, abs=10.0) and error.mean_cents > 1150
    assert error.octave_errors == 1.0 and error.off_50_cents == 1.0 and error.frames_compared > 0.9 * n_frames
    right = real_metrics.pitch_error(harmonic(intended_hz, sr, 1.2), sr, intended, hop, f0_sr)
    assert right.median_abs_cents < 10.0 and right.octave_errors == 0.0


def test_transpose_is_the_nearest_whole_octave():
    assert real_metrics.nearest_octave_transpose(110.0, 230.0) == 12.0
    assert real_metrics.nearest_octave_transpose(220.0, 100.0) == -12.0
    assert real_metrics.nearest_octave_transpose(200.0, 260.0) == 0.0
    assert real_metrics.nearest_octave_transpose(0.0, 260.0) == 0.0


# -------------------------------------------------------------------------------------------- report

def fake_phrase(phrase: str, mcd: float | None = None) -> dict:
    row = {"phrase": phrase, "kind": "sung", "language": "fr", "seconds": 3.0, "convert_s": 1.0,
           "secs": {"converted": 0.71, "source": 0.52}, "reference_clips": ["a", "b"], "target_rank": 1,
           "voices_ranked": 5, "closest_voices": ["fr_june_f", "en_x", "it_carlo_m"], "text": "bonjour",
           "transcripts": {"source": "bonjour", "converted": "bon | jour"},
           "cer": {"converted": {"cer": 0.125, "edits": 1, "chars": 8}, "source": {"cer": 0.0, "edits": 0, "chars": 8},
                   "converted_vs_source_transcript": {"cer": 0.125, "edits": 1, "chars": 8}},
           "dnsmos": {"converted": {"ovrl": 2.5, "sig": 3.0, "bak": 3.5, "p808": 3.1},
                      "source": {"ovrl": 3.1, "sig": 3.4, "bak": 3.9, "p808": 3.6}},
           "f0": {"median_abs_cents": 12.0, "rmse_cents": float("nan")}, "f0_floor": None,
           "f0_intended_from": "imposed F0 (.f0.npy)"}
    if mcd is not None:
        row["mcd_db"] = mcd
    return row


def fake_document(label: str, secs: float = 0.712) -> dict:
    summary = {"phrases": 2, "kinds": {"sung": 2}, "secs_converted": secs, "secs_source": 0.52,
               "mean_target_rank": 1.0, "target_top1_fraction": 1.0, "voices_ranked": 5, "cer_converted": 0.125,
               "cer_source": 0.0, "f0_median_abs_cents": 12.0, "f0_rmse_cents": 40.0, "f0_off_50_cents": 0.05,
               "f0_octave_errors": 0.01, "dnsmos_ovrl_converted": 2.5, "dnsmos_ovrl_source": 3.1,
               "cer_by_kind": {"sung": {"converted": 0.125, "source": 0.0}}}
    adapter = {"name": "fr_june_f", "method": "lora", "steps": 500}
    return {
        "label": label, "created": "2026-11-30 18:00 UTC", "machine": "test machine",
        "load_average": {"before": "1.0 / 1.0 / 1.0", "after": "2.0 / 1.5 / 1.1"}, "run_seconds": 123.0,
        "command": "tools/eval_real.py --quick", "corpus": {"path": "data/real"},
        "base": {"path": "pretrain/synth-small", "sha256": "018da9aabf6d4"},
        "settings": {"content": {"path": "pretrain/content/synth-hubert", "layer": 3}, "quick": True,
                     "whisper": "base", "ref_clips": 4},
        "pairs": [
            {"source": "it_carlo_m", "target": "fr_june_f", "self": False, "adapter": adapter,
             "transpose_semitones": 12.0, "phrases": [fake_phrase("p1"), fake_phrase("p2")], "summary": summary},
            {"source": "fr_june_f", "target": "fr_june_f", "self": True, "adapter": adapter,
             "transpose_semitones": 0.0, "phrases": [fake_phrase("p1", 4.2)], "summary": {**summary, "mcd_db": 4.2}}],
    }


def test_reports_json_markdown_and_benchmarks_rows_per_label(tmp_path):
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\n## Preprocess\n\nkeep me\n\n## Real voices\n\nold text\n\n### Notes\n\n"
                     "A note kept across runs.\n\n## Inference\n\nkeep me too\n")
    out = tmp_path / "eval" / "real.json"
    markdown = eval_real.write_reports(fake_document("first base"), out, bench)
    document = json.loads(out.read_text())  # strict JSON: NaN written as null
    assert document["pairs"][0]["phrases"][0]["f0"]["rmse_cents"] is None
    report = markdown.read_text()
    assert markdown == out.with_suffix(".md")
    assert "| it_carlo_m → fr_june_f | +12 | 2 (2 sung) | 0.712 / 0.520 | 1.0 of 5 (100%) | 0.12 / 0.00 |" in report
    assert "| fr_june_f | 2 (2 sung) | 4.20 | 0.712 / 0.520 |" in report
    assert "| it_carlo_m → fr_june_f | p1 | sung |" in report and "bon / jour" in report  # '|' escaped
    assert "| it_carlo_m → fr_june_f | sung | 2 | 0.12 / 0.00 |" in report  # CER by kind

    eval_real.write_reports(fake_document("second base", secs=0.8), out, bench)
    eval_real.write_reports(fake_document("first base", secs=0.75), out, bench)  # replaces its own rows
    text = bench.read_text()
    assert "keep me" in text and "keep me too" in text and "old text" not in text
    assert text.count("## Real voices") == 1 and "A note kept across runs." in text
    rows = [line for line in text.splitlines() if line.startswith("| first base") or line.startswith("| second base")]
    assert len(rows) == 4  # one conversion row and one self-conversion row per label
    assert "| second base | it_carlo_m → fr_june_f | +12 | 2 (2 sung) | 0.800 / 0.520 |" in text
    assert "| first base | it_carlo_m → fr_june_f | +12 | 2 (2 sung) | 0.750 / 0.520 |" in text
    assert "0.712" not in text
    assert text.index("| second base | it_carlo") < text.index("| first base | it_carlo")  # others' rows stay first
    assert sum(line.startswith("- **first base**") for line in text.splitlines()) == 1
    assert "load average 1.0 / 1.0 / 1.0 before, 2.0 / 1.5 / 1.1 after" in text


def test_the_report_says_which_criteria_of_the_issue_hold():
    report = eval_real.markdown_report(fake_document("a base"))
    section = report[report.index("## Criteria"):report.index("## CER by kind")]
    # the fake pair: every phrase closer to the target, the target first, F0 12 cents off; 12.5 CER points above
    # the source and DNSMOS 0.6 below it
    assert "| it_carlo_m → fr_june_f | speaker | 100% (2/2; 95% interval 34%–100%) |" in section and "| yes |" in section
    assert "| it_carlo_m → fr_june_f | words | +12.5 points | CER <= source's + 10 points | **no** |" in section
    assert "| it_carlo_m → fr_june_f | quality | -0.60 | DNSMOS OVRL >= source's - 0.3 | **no** |" in section
    assert "| it_carlo_m → fr_june_f | pitch | 12.0 cents | F0 median error <= 20 cents | yes |" in section
    assert "3 of 5 hold; 2 fail." in section
    assert "fr_june_f → fr_june_f" not in section  # a self-conversion has no source voice to judge against
    document = fake_document("a base")
    document["pairs"][0]["phrases"][1]["secs"]["converted"] = 0.5  # one of two phrases farther: 50 % < 90 %
    criteria = {c.name: c for c in real_criteria.pair_criteria(document["pairs"][0])}
    assert criteria["speaker"].value == 0.5 and criteria["speaker"].passed is False
    assert not real_criteria.markdown({"pairs": [document["pairs"][1]]})  # self-conversions only: no section
    # a report without the source's CER (nan, as older reports of untranscribed phrases have it): not judged
    document["pairs"][0]["summary"]["cer_source"] = float("nan")
    words = {c.name: c for c in real_criteria.pair_criteria(document["pairs"][0])}["words"]
    assert words.value is None and words.passed is None and words.shown == "n/a"


def test_shares_are_shown_with_their_counts_and_a_95_percent_interval():
    """One phrase of 18 is 6 points: 16 of 18 closer than the source reads 89 %, and could be 67-97 % on
    another set of phrases (Wilson score interval), which the criteria table says beside the verdict."""
    assert real_criteria.wilson_interval(16, 18) == (pytest.approx(0.672, abs=1e-3), pytest.approx(0.969, abs=1e-3))
    assert real_criteria.wilson_interval(0, 0) == (0.0, 1.0)
    low, high = real_criteria.wilson_interval(12, 12)
    assert high == 1.0 and 0.7 < low < 0.8
    assert real_criteria.share_shown(16 / 18, (16, 18)) == "89% (16/18; 95% interval 67%–97%)"
    assert real_criteria.share_shown(0.5, (0, 0)) == "50%"  # no counts: the share alone
    document = fake_document("a base")
    document["pairs"][0]["phrases"][1]["secs"]["converted"] = 0.5
    criteria = {c.name: c for c in real_criteria.pair_criteria(document["pairs"][0])}
    assert criteria["speaker"].shown.startswith("50% (1/2; 95% interval")
    assert criteria["nearest"].shown.startswith("100% (2/2; 95% interval")


def test_cer_is_pooled_per_phrase_kind():
    speech = {**fake_phrase("p1"), "kind": "speech",
              "cer": {"converted": {"cer": 0.5, "edits": 2, "chars": 4}, "source": {"cer": 0.0, "edits": 0, "chars": 4}}}
    split = eval_real.cer_by_kind([fake_phrase("p2"), fake_phrase("p3"), speech])
    assert split == {"speech": {"converted": 0.5, "source": 0.0},
                     "sung": {"converted": pytest.approx(2 / 16), "source": 0.0}}


def test_phrases_are_picked_across_kinds():
    phrases = [eval_real.Phrase("v", f"p{i}", Path(f"p{i}.wav"), "sung" if i < 4 else "speech", "en", None, None,
                                512, 44100) for i in range(6)]
    picked = eval_real.pick_phrases(phrases, 3)
    assert len(picked) == 3 and {p.kind for p in picked} == {"sung", "speech"}
    assert eval_real.pick_phrases(phrases, None) == phrases


# ------------------------------------------------------------------------------------------ the tool

def make_real_corpus(root: Path) -> Path:
    """The data/real layout with synthetic stand-ins: voices va, vb (held out) and vc (train), two sung eval
    phrases each with their imposed F0, and a raw clip each."""
    from tools.synth.corpus import derive_rng
    from tools.synth.melody import make_phrase
    from tools.synth.singers import make_singer
    from tools.synth.voice import render_phrase
    import soundfile as sf

    sr, hop = 44100, 512
    voices = {}
    for i, (voice, role) in enumerate((("va", "heldout"), ("vb", "heldout"), ("vc", "train"))):
        singer = make_singer(i, derive_rng(3, 1, i))
        f0s = []
        for k in range(3):
            rendition = render_phrase(make_phrase(derive_rng(3, 2, k), f"p{k}", 1.5), singer, sr, derive_rng(3, 5, k, i))
            folder = root / ("raw" if k == 2 else "eval") / voice / ("sung" if k == 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"p{k}.wav", rendition.audio, sr)
            if k < 2:
                from ai_singer.features.f0_settings import F0Settings
                from ai_singer.features.pitch import extract_f0

                f0 = extract_f0(rendition.audio.astype(np.float64), sr, hop, len(rendition.audio) // hop,
                                F0Settings.from_conf(method="dio"))
                np.save(folder / f"p{k}.f0.npy", f0)
                (folder / f"p{k}.json").write_text(json.dumps({
                    "kind": "sung", "language": "en", "text": None if k else "la la", "f0_file": f"p{k}.f0.npy",
                    "f0_hop": hop, "f0_sr": sr}))
                f0s.append(f0[f0 > 0])
        voices[voice] = {"language": "en", "sex": "f", "f0_median_hz": float(np.median(np.concatenate(f0s))),
                         "role": role}
    (root / "voices.json").write_text(json.dumps({"voices": voices, "train": ["vc"], "heldout": ["va", "vb"]}))
    return root


def test_the_tool_end_to_end_on_a_tiny_base(tmp_path, tiny_hubert_dir, capsys):
    import torch

    from test_eval_conversion import make_adapter, make_base

    torch.set_num_threads(1)
    corpus = make_real_corpus(tmp_path / "real")
    base_dir = make_base(tmp_path)
    for voice in ("va", "vb"):
        make_adapter(tmp_path, base_dir, voice, voice)
    out = tmp_path / "eval" / "real.json"
    bench = tmp_path / "BENCHMARKS.md"
    code = eval_real.main(["--corpus", str(corpus), "--base", str(base_dir), "--singers-dir", str(tmp_path / "singers"),
                           "--content-path", str(tiny_hubert_dir), "--content-layer", "2", "--f0-method", "dio",
                           "--noise-scale", "0", "--device", "cpu", "--pairs", "vb:va", "--self", "va",
                           "--max-phrases", "1", "--whisper", "tiny.en", "--beam-size", "1", "--out", str(out),
                           "--bench", "--benchmarks", str(bench), "--label", "tiny", "--quiet", "--transpose-offset", "3"])
    assert code == 0
    report = json.loads(out.read_text())
    cross, own = report["pairs"]
    assert (cross["source"], cross["target"], cross["self"]) == ("vb", "va", False)
    assert (own["source"], own["target"], own["self"]) == ("va", "va", True)
    assert cross["adapter"]["name"] == "va" and cross["adapter"]["method"] == "lora"
    [row] = cross["phrases"]
    assert row["phrase"] == "p0" and row["text"] == "la la" and row["voices_ranked"] == 3
    assert 1 <= row["target_rank"] <= 3 and -1 <= row["secs"]["converted"] <= 1
    assert row["reference_clips"] == ["p0", "p1"]  # the target's phrases (another voice's phrase is compared)
    assert row["cer"]["source"] is not None and row["f0_intended_from"] == "imposed F0 (.f0.npy)"
    assert row["f0_floor"]["median_abs_cents"] < 50 and "octave_errors" in row["f0"]
    assert set(row["dnsmos"]["source"]) == {"ovrl", "sig", "bak", "p808"}
    [own_row] = own["phrases"]
    assert own_row["reference_clips"] == ["p1"]  # leave-one-out: never the compared phrase itself
    assert own_row["mcd_db"] > 0 and own["summary"]["mcd_db"] == pytest.approx(own_row["mcd_db"])
    # whole octaves between the voices, plus --transpose-offset for cross pairs only (never into itself)
    assert (cross["transpose_semitones"] - 3) % 12 == 0 and own["transpose_semitones"] == 0
    assert report["settings"]["transpose_offset"] == 3
    assert "| tiny | vb → va |" in bench.read_text() and "| tiny | va | 1 (1 sung) |" in bench.read_text()
    assert "## Conversions" in capsys.readouterr().out and out.with_suffix(".md").is_file()


def test_prepare_commands_use_the_base_content_encoder(tmp_path, capsys):
    corpus = make_corpus_stub(tmp_path)
    base = tmp_path / "pretrain" / "synth-small"  # a base trained on the synthetic encoder records it so
    base.mkdir(parents=True)
    (base / "config.yaml").write_text(json.dumps({"kind": "base", "content_encoder": {
        "name": "hubert", "dim": 128, "path": "pretrain/content/synth-hubert", "layer": 3, "final_proj": False}}))
    code = eval_real.main(["--prepare", "--dry-run", "--corpus", str(corpus), "--base", str(base),
                           "--singers-dir", str(tmp_path / "singers"), "--steps", "700"])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3  # preprocess, then one fine-tune per held-out voice
    assert "ai_singer.preprocess" in printed[0] and "'singers=[va,vb]'" in printed[0]
    assert "content=hubert content.path=pretrain/content/synth-hubert content.layer=3 content.final_proj=false" \
        in printed[0] and "paths.processed=data/processed_real_synth-small" in printed[0]
    assert "singer=va" in printed[1] and "trainer.max_steps=700" in printed[1] and "paths.runs=runs/real/synth-small" \
        in printed[1] and f"base={base}" in printed[1]
    code = eval_real.main(["--prepare", "--dry-run", "--no-preprocess", "--peft", "adapter", "--corpus", str(corpus),
                           "--base", str(base), "--singers-dir", str(tmp_path / "singers")])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0 and len(printed) == 2 and all("peft=adapter" in line for line in printed)  # fine-tunes only


def make_corpus_stub(root: Path) -> Path:
    voices = {"va": {"role": "heldout"}, "vb": {"role": "heldout"}, "vc": {"role": "train"}}
    (root / "voices.json").write_text(json.dumps({"voices": voices}))
    return root


def test_validation_voices_are_measured_apart_and_never_reach_benchmarks(tmp_path, capsys):
    voices = {"va": {"role": "heldout"}, "vb": {"role": "heldout"}, "vc": {"role": "train"},
              "x1": {"role": "validation"}, "x2": {"role": "validation"}, "x3": {"role": "validation"}}
    (tmp_path / "voices.json").write_text(json.dumps({"voices": voices}))
    for voice in voices:
        (tmp_path / "eval" / voice).mkdir(parents=True)
        (tmp_path / "eval" / voice / "p0.json").write_text(json.dumps({"kind": "speech", "language": "en"}))
        (tmp_path / "eval" / voice / "p0.wav").write_bytes(b"")
    corpus = eval_real.load_corpus(tmp_path)
    args = eval_real.parse_args(["--corpus", str(tmp_path), "--base", "b", "--singers-dir", "s", "--role", "validation"])
    # three voices: a ring (each a source and a target once) + each into itself
    assert eval_real.select_pairs(args, corpus) == [("x1", "x2", None), ("x2", "x3", None), ("x3", "x1", None),
                                                    ("x1", "x1", None), ("x2", "x2", None), ("x3", "x3", None)]
    held = eval_real.parse_args(["--corpus", str(tmp_path), "--base", "b", "--singers-dir", "s"])
    assert eval_real.select_pairs(held, corpus) == [("va", "vb", None), ("vb", "va", None), ("va", "va", None),
                                                    ("vb", "vb", None)]
    # ranks: held-out targets among train + held-out voices only (as before validation voices existed), and back
    assert corpus.ranked("heldout") == ["va", "vb", "vc"] and corpus.ranked("validation") == ["vc", "x1", "x2", "x3"]
    # --prepare makes adapters for the validation voices
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.yaml").write_text(json.dumps({"kind": "base", "content_encoder": {"name": "whisper"}}))
    assert eval_real.main(["--prepare", "--dry-run", "--role", "validation", "--corpus", str(tmp_path), "--base",
                           str(base), "--singers-dir", str(tmp_path / "singers")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "'singers=[x1,x2,x3]'" in printed[0] and [line.count("singer=x") for line in printed[1:]] == [1, 1, 1]
    # validation numbers never go into BENCHMARKS.md, measured now or rewritten from a report
    with pytest.raises(SystemExit):
        eval_real.parse_args(["--corpus", str(tmp_path), "--base", "b", "--singers-dir", "s", "--role", "validation",
                              "--bench"])
    assert "held-out voices only" in capsys.readouterr().err
    document = fake_document("chosen")
    document["settings"]["role"] = "validation"
    out = tmp_path / "val.json"
    eval_real.write_reports(document, out)
    assert "**validation** voices" in out.with_suffix(".md").read_text()
    bench = tmp_path / "BENCHMARKS.md"
    assert eval_real.main(["--from-json", str(out), "--bench", "--benchmarks", str(bench)]) == 2
    assert "held-out voices only" in capsys.readouterr().err and not bench.exists()


def test_phrases_without_text_are_scored_against_the_speech_they_were_sung_from(tmp_path, monkeypatch):
    import soundfile as sf

    sf.write(str(tmp_path / "sung.wav"), np.zeros(4410, dtype=np.float32), 44100)
    sf.write(str(tmp_path / "p.spoken.wav"), np.zeros(800, dtype=np.float32), 8000)
    corpus = eval_real.Corpus(root=tmp_path, voices={}, phrases={})
    args = eval_real.parse_args(["--base", "b", "--singers-dir", "s"])
    tools = eval_real.Instruments(corpus, args, eval_real.Timings())
    monkeypatch.setattr(tools, "transcribe", lambda audio, sr, language: f"{len(audio)} samples at {sr}")
    phrase = eval_real.Phrase("v", "p", tmp_path / "sung.wav", "sung", "es", None, None, 512, 44100,
                              spoken_path=tmp_path / "p.spoken.wav")
    assert tools.reference_text(phrase) == ("800 samples at 8000", "spoken source")
    assert tools.reference_text(dataclasses.replace(phrase, text="hola")) == ("hola", "text")
    assert tools.reference_text(dataclasses.replace(phrase, spoken_path=None)) == ("4410 samples at 44100", "source")


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "va:nobody"], "'nobody' is not a voice"),
    (["--pairs", "va:vc"], "no adapter for singer 'vc'"),
])
def test_the_tool_names_bad_input(tmp_path, capsys, argv, message):
    corpus = make_corpus_stub(tmp_path)
    (tmp_path / "eval" / "va").mkdir(parents=True)
    (tmp_path / "eval" / "va" / "p0.json").write_text(json.dumps({"kind": "speech", "language": "en"}))
    (tmp_path / "eval" / "va" / "p0.wav").write_bytes(b"")
    code = eval_real.main(["--corpus", str(corpus), "--base", "pretrain/synth-small", "--singers-dir",
                           str(tmp_path / "singers"), "--self", *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_reports_can_be_rewritten_from_a_json_report(tmp_path, capsys):
    out = tmp_path / "real.json"
    document = fake_document("measured")
    document["pairs"][0]["summary"]["f0_off_50_cents"] = float("nan")  # read back as null
    eval_real.write_reports(document, out)
    bench = tmp_path / "BENCHMARKS.md"
    assert eval_real.main(["--from-json", str(out), "--bench", "--benchmarks", str(bench), "--label", "renamed"]) == 0
    text = bench.read_text()
    assert "| renamed | it_carlo_m → fr_june_f | +12 |" in text and "| - / 1.0% |" in text and "measured" not in text
    assert "renamed" in out.with_suffix(".md").read_text()
    assert eval_real.main(["--from-json", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the report" in capsys.readouterr().err


def test_path_check_scores_each_path_of_the_base_speakers_and_refuses_other_voices(tmp_path, tiny_hubert_dir, capsys,
                                                                                   monkeypatch):
    import torch

    from test_eval_conversion import TINY
    from ai_singer import checkpoint as ckpt
    from ai_singer.config import load_settings
    from ai_singer.model.synthesizer import SingerVAE, SingerVAEConfig
    from tools import path_check

    torch.set_num_threads(1)
    corpus = make_real_corpus(tmp_path / "real")
    torch.manual_seed(0)
    model = SingerVAE(SingerVAEConfig.from_dict({**load_settings("train", ["model=base"]).model.to_dict(), **TINY}))
    base_dir = ckpt.save_base(tmp_path / "pretrain" / "tiny", model.state_dict(), None, {
        "model": model.config.to_dict(), "content_encoder": {"name": "hubert", "dim": TINY["content_dim"]},
        "sample_rate": TINY["sample_rate"], "hop_length": TINY["hop_length"], "speakers": ["vc", "other"]})

    class Heard:  # a stand-in for Whisper: what it is given, as words, so CER reflects the path
        def __init__(self, *args, **kwargs):
            pass

        def transcribe(self, audio, sr, language):
            return "la la" if float(np.abs(audio).max()) > 0.05 else ""

    monkeypatch.setattr(path_check.real_metrics, "Transcriber", Heard)
    out = tmp_path / "check.json"
    common = ["--corpus", str(corpus), "--base", str(base_dir), "--content-path", str(tiny_hubert_dir),
              "--content-layer", "2", "--quiet"]
    assert path_check.main([*common, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    [row] = report["phrases"]  # vc's one sung phrase with a transcript (p1 has none; va, vb are not base speakers)
    assert (row["voice"], row["phrase"]) == ("vc", "p0") and row["recorded"]["cer"] == 0.0
    assert set(report["summary"]) == {"recorded", "autoencoder", "conversion", "phrases", "by_kind"}
    assert report["summary"]["by_kind"]["sung"]["phrases"] == 1 and row["kind"] == "sung"
    assert all(0.0 <= report["summary"][p] <= 1.0 for p in path_check.PATHS)
    assert "| vc | p0 | 0.00 |" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    assert path_check.main([*common, "--voices", "va"]) == 2  # a held-out voice has no speaker vector in the base
    assert "'va' is not a speaker of the base (vc, other)" in capsys.readouterr().err
    assert path_check.main([*common, "--kinds", "speech"]) == 2  # the stand-in corpus has sung phrases only
    assert "no speech eval phrase with a transcript among vc" in capsys.readouterr().err
