"""tools/real_corpus.py on tiny fake source folders (no Debian package needed): the imposed F0 is what
the sung audio carries, the same seed gives the same bytes whatever the worker count, eval phrases never
come from files in raw/, a missing source folder is named with its package, a corrupt file is reported
and the rest goes on, and the held-out choice follows the numbers."""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from conftest import harmonic  # noqa: E402
from tools import real_corpus, real_sources  # noqa: E402
from tools.real_corpus import VoiceStats, choose_heldout, make_melody, melody_contour  # noqa: E402

from ai_singer.features.f0_settings import F0Settings  # noqa: E402
from ai_singer.features.pitch import extract_f0  # noqa: E402


def speechlike(f0_hz: float, seconds: float, sr: int, seed: int) -> np.ndarray:
    """Syllables of harmonic sound with falling, wavy intonation, separated by short silences."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    contour = f0_hz * 2 ** ((1.5 - 3.0 * t / seconds + 0.8 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6))) / 12)
    voiced = np.zeros(n, dtype=bool)
    position = int(0.1 * sr)
    while position < n - int(0.1 * sr):
        length = int(rng.uniform(0.2, 0.4) * sr)
        voiced[position: min(position + length, n - int(0.1 * sr))] = True
        position += length + int(rng.uniform(0.06, 0.12) * sr)
    audio = harmonic(np.where(voiced, contour, 0.0), sr, seed=seed).astype(np.float64)
    fade = np.convolve(voiced.astype(np.float64), np.hanning(int(0.02 * sr)) / (0.01 * sr), mode="same")
    return (audio * np.clip(fade, 0, 1)).astype(np.float32)


def _write(path: Path, audio: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype="PCM_16")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Fake Debian folders: asterisk it (male) + fr (female) with transcripts, a festvox-ru voice,
    ALSA clips with a corrupt one and the skipped Noise.wav; codec2 is missing."""
    root = tmp_path_factory.mktemp("debian")
    asterisk, docs = root / "asterisk", root / "doc"
    for language, f0, count in (("it", 120.0, 9), ("fr", 230.0, 9)):
        lines = [f"; Core Asterisk Sounds in {language}", ""]
        for k in range(count):
            key = f"prompt-{k}" if k % 3 else f"digits/{k}"
            _write(asterisk / language / f"{key}.wav", speechlike(f0, 2.3 if k % 2 else 1.7, 16000, seed=k), 16000)
            lines.append(f"{key}: frase {language} numero {k}")
        (docs / f"asterisk-core-sounds-{language}").mkdir(parents=True)
        (docs / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt").write_text("\n".join(lines))
    _write(asterisk / "it" / "silence" / "1.wav", np.zeros(16000, dtype=np.float32), 16000)
    festvox = root / "festvox"
    for k in range(1, 4):
        _write(festvox / "wav" / f"ru_000{k}.wav", speechlike(105.0, 1.8, 16000, seed=20 + k), 16000)
    (festvox / "etc").mkdir()
    (festvox / "etc" / "txt.done.data").write_text(
        '( ru_0001 "Один, два." )\n( ru_0002 "Три\nчетыре." )\n( ru_0003 "П+ять." )\n', encoding="utf-8")
    alsa = root / "alsa"
    _write(alsa / "Front_Left.wav", speechlike(180.0, 1.6, 48000, seed=40), 48000)
    _write(alsa / "Noise.wav", np.random.default_rng(0).uniform(-0.3, 0.3, 48000).astype(np.float32), 48000)
    (alsa / "Rear_Left.wav").write_bytes(b"RIFF\x00\x01\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    return {"asterisk": asterisk, "docs": docs, "festvox": festvox, "alsa": alsa, "codec2": root / "no-codec2"}


def _argv(sources: dict[str, Path], out: Path, workers: int) -> list[str]:
    return ["--out", str(out), "--seed", "7", "--workers", str(workers), "--no-progress",
            "--asterisk-dir", str(sources["asterisk"]), "--asterisk-doc-dir", str(sources["docs"]),
            "--festvox-ru-dir", str(sources["festvox"]), "--alsa-dir", str(sources["alsa"]),
            "--codec2-dir", str(sources["codec2"]),
            "--max-sung-minutes", "0.02", "--heldout-sung-minutes", "0.02", "--min-heldout-minutes", "0.1",
            "--heldout-eval-sung", "1", "--heldout-eval-speech", "1", "--train-eval-sung", "1",
            "--train-eval-speech", "0"]


@pytest.fixture(scope="module")
def corpus(sources, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("real") / "corpus"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = real_corpus.main(_argv(sources, out, workers=1))
    return {"out": out, "code": code, "stderr": stderr.getvalue(),
            "voices": json.loads((out / "voices.json").read_text()),
            "report": json.loads((out / "report.json").read_text())}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_voices_json(corpus):
    assert corpus["code"] == 0
    doc = corpus["voices"]
    assert doc["version"] == 1 and doc["seed"] == 7
    assert set(doc["voices"]) == {"it_carlo_m", "fr_june_f", "ru_nsh_m", "alsa_f"}
    for name, voice in doc["voices"].items():
        for key in ("origin", "language", "sex", "f0_median_hz", "f0_p05_hz", "f0_p95_hz", "role",
                    "train_seconds", "eval_phrases"):
            assert key in voice, (name, key)
        assert voice["role"] in ("train", "heldout") and voice["sex"] in ("m", "f")
        assert voice["f0_p05_hz"] <= voice["f0_median_hz"] <= voice["f0_p95_hz"]
        assert (name in doc["train"]) != (name in doc["heldout"])
    assert doc["voices"]["it_carlo_m"]["origin"] == "asterisk-it"
    assert 100 < doc["voices"]["it_carlo_m"]["f0_median_hz"] < 150
    assert 190 < doc["voices"]["fr_june_f"]["f0_median_hz"] < 270
    # it and fr are the only voices with enough material to spare in their groups
    assert doc["heldout"] == ["fr_june_f", "it_carlo_m"]
    assert doc["train"] == ["alsa_f", "ru_nsh_m"]
    assert "min" in doc["why_heldout"] and "Hz" in doc["why_heldout"]
    out = corpus["out"]
    for name, voice in doc["voices"].items():
        assert list((out / "raw" / name / "speech").glob("*.wav")), name
        assert list((out / "raw" / name / "sung").glob("*.wav")), name
        assert sf.info(str(next((out / "raw" / name / "sung").glob("*.wav")))).samplerate == 44100
        assert voice["eval_phrases"] == len(list((out / "eval" / name).glob("*.json")))
    held = doc["heldout"][0]
    kinds = [json.loads(p.read_text())["kind"] for p in (out / "eval" / held).glob("*.json")]
    assert sorted(kinds) == ["speech", "sung"]


def test_imposed_f0_is_what_the_sung_audio_carries(corpus):
    out, checked = corpus["out"], 0
    for meta_path in sorted((out / "eval").glob("*/*.json")):
        meta = json.loads(meta_path.read_text())
        assert set(meta) >= {"kind", "language", "text", "source_file", "f0_file", "f0_hop", "f0_sr"}
        if meta["kind"] != "sung":
            assert meta["f0_file"] is None
            continue
        audio, sr = sf.read(str(meta_path.with_suffix(".wav")))
        imposed = np.load(meta_path.parent / meta["f0_file"])
        assert (sr, meta["f0_hop"], meta["f0_sr"]) == (44100, 512, 44100)
        assert len(imposed) == len(audio) // 512 and imposed.dtype == np.float32
        measured = extract_f0(audio, sr, 512, len(imposed), F0Settings.from_conf(method="harvest"))
        both = (imposed > 0) & (measured > 0)
        assert both.sum() > 0.5 * (imposed > 0).sum()
        cents = 1200 * np.abs(np.log2(measured[both] / imposed[both]))
        assert np.median(cents) < 50, (meta_path.name, np.median(cents))
        # the melody lies in the voice's range: median-3 .. median+9 semitones (+ vibrato and a margin)
        median = corpus["voices"]["voices"][meta_path.parent.name]["f0_median_hz"]
        semis = 12 * np.log2(imposed[imposed > 0] / median)
        assert semis.min() > -4.5 and semis.max() < 10.5
        checked += 1
    assert checked >= 3


def test_eval_phrases_never_in_raw(corpus):
    out = corpus["out"]
    for voice_dir in sorted((out / "eval").iterdir()):
        eval_names = {p.stem for p in voice_dir.glob("*.json")}
        raw_names = {p.stem for p in (out / "raw" / voice_dir.name).rglob("*.wav")}
        assert eval_names and not eval_names & raw_names
        origins = {json.loads(p.read_text())["source_file"] for p in voice_dir.glob("*.json")}
        assert all(Path(origin).stem not in raw_names for origin in origins)


def test_missing_folder_named_and_corrupt_file_reported(corpus, sources):
    stderr, report = corpus["stderr"], corpus["report"]
    assert str(sources["codec2"]) in stderr and "codec2-examples" in stderr
    assert any("codec2-examples" in note for note in report["notes"])
    assert any("Rear_Left.wav" in error for error in report["errors"]) and "Rear_Left.wav" in stderr
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert "Noise.wav" not in skipped  # never even considered
    assert "1.wav" in skipped  # asterisk silence/
    assert corpus["voices"]["voices"]["alsa_f"]["train_seconds"] > 0  # the rest went on


def test_transcripts_kept(corpus):
    texts = {json.loads(p.read_text())["text"] for p in (corpus["out"] / "eval").glob("*/*.json")}
    assert "frase it numero 0" in texts or any(t and t.startswith("frase it") for t in texts)
    assert any(t and t.startswith("frase fr") for t in texts)


def test_same_seed_same_bytes_with_two_workers(corpus, sources, tmp_path):
    out = tmp_path / "again"
    assert real_corpus.main(_argv(sources, out, workers=2)) == 0
    assert _files(out) == _files(corpus["out"])


def test_festvox_transcripts(tmp_path):
    path = tmp_path / "txt.done.data"
    path.write_text('( ru_0001 "Она завела, прядь волнистых вол+ос" )\n( ru_0003 "Со спокойным,\n мужеством" )\n',
                    encoding="utf-8")
    assert real_sources.read_festvox_transcripts(path) == {"ru_0001": "Она завела, прядь волнистых волос",
                                                          "ru_0003": "Со спокойным, мужеством"}


def test_melody_contour_glides_and_rests():
    rng = np.random.default_rng(0)
    runs = [(0.0, 2.0), (2.3, 2.4)]
    notes, info = make_melody(runs, 200.0, rng)
    assert all(0.25 - 1e-9 <= n.end - n.start <= 1.0 + 1e-9 for n in notes if n.end <= 2.0)
    times = np.arange(0, 2.6, 0.001)
    f0 = melody_contour(notes, runs, times)
    assert np.all(f0[(times >= 2.0) & (times < 2.3)] == 0) and np.all(f0[times >= 2.4] == 0)
    voiced = f0[(times > 0.01) & (times < 1.99)]
    steps = np.abs(np.diff(1200 * np.log2(voiced)))
    assert steps.max() < 120  # continuous: legato glides, no jumps within a run
    assert info["mode"] in ("major", "minor")


def test_heldout_choice_follows_the_numbers():
    def stats(median, minutes):
        return VoiceStats(minutes * 60, minutes * 60, median, median * 0.7, median * 1.4, 100)

    voices = {"ru_nsh_m": stats(142, 99), "it_carlo_m": stats(175, 24), "codec2_x": stats(95, 0.5),
              "en_allison_f": stats(195, 56), "fr_june_f": stats(193, 26), "ru_ivr_f": stats(207, 25)}
    sex = {"ru_nsh_m": "m", "it_carlo_m": "m", "codec2_x": "m", "en_allison_f": "f", "fr_june_f": "f", "ru_ivr_f": "f"}
    chosen, why = choose_heldout(voices, sex, 300.0, {})
    assert chosen == ["it_carlo_m", "ru_ivr_f"]
    assert "99.0 min" in why and "175 Hz" in why and "207 Hz" in why


def test_not_our_folder_is_refused(sources, tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert real_corpus.main(_argv(sources, tmp_path, workers=1)) == 2
    assert "not a real-corpus folder" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").exists()


def test_long_recordings_give_excerpts_cut_at_a_pause():
    sr = 16000
    gap = np.zeros(int(0.2 * sr), dtype=np.float32)
    audio = np.concatenate([speechlike(120.0, 1.5, sr, 1), gap, speechlike(120.0, 1.2, sr, 2), gap,
                            speechlike(120.0, 4.0, sr, 3)])
    cuts = real_corpus.pauses(audio, sr)
    assert any(abs(c - 1.6) < 0.05 for c in cuts) and any(abs(c - 3.0) < 0.05 for c in cuts)
    span = real_corpus.speech_span(audio, sr)
    start, end, whole = real_corpus.phrase_span(span, cuts, 1.6, 3.3)
    assert not whole and abs(end - 3.0) < 0.05  # the latest pause that keeps it under 3.3 s
    assert real_corpus.phrase_span((0.0, 2.5), [], 1.6, 3.3) == (0.0, 2.5, True)
    assert real_corpus.phrase_span((0.0, 9.0), [], 1.6, 3.3) is None


@pytest.fixture(scope="module")
def validation_root(tmp_path_factory) -> Path:
    """An unpacked tree of two validation packages (Menardi as .wav, Armelle as .wav here; es-co missing)."""
    root = tmp_path_factory.mktemp("unpacked")
    sounds = root / "usr" / "share" / "asterisk" / "sounds"
    for folder, f0, seed in (("it_IT_f_Menardi", 240.0, 60), ("fr", 210.0, 80)):
        for k in range(6):
            _write(sounds / folder / f"vm-prompt-{k}.wav", speechlike(f0, 2.4, 8000, seed=seed + k), 8000)
        _write(sounds / folder / "beep.wav", np.zeros(8000, dtype=np.float32), 8000)
    return root


def test_validation_voices_get_their_own_role_and_leave_the_rest_unchanged(corpus, sources, validation_root, tmp_path):
    out = tmp_path / "with-validation"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = real_corpus.main(_argv(sources, out, workers=1) + [
            "--validation-dir", str(validation_root), "--validation-eval-sung", "1", "--validation-eval-speech", "1"])
    assert code == 0
    doc = json.loads((out / "voices.json").read_text())
    assert doc["validation"] == ["fr_armelle_f", "it_menardi_f"]
    assert doc["heldout"] == corpus["voices"]["heldout"] and doc["train"] == corpus["voices"]["train"]
    for name in doc["validation"]:
        voice = doc["voices"][name]
        assert voice["role"] == "validation" and voice["sex"] == "f" and voice["train_seconds"] > 0
        metas = [json.loads(p.read_text()) for p in (out / "eval" / name).glob("*.json")]
        assert sorted(m["kind"] for m in metas) == ["speech", "sung"] and all(m["text"] is None for m in metas)
        # a sung phrase without a transcript keeps the speech it was sung from (a reference reading), as spoken
        [sung] = [m for m in metas if m["kind"] == "sung"]
        spoken, _ = sf.read(str(out / "eval" / name / sung["spoken_file"]))
        assert sung["spoken_file"].endswith(".spoken.wav") and \
            abs(len(spoken) / 8000 - (sung["source_end_s"] - sung["source_start_s"])) < 0.01
    # the missing package is named with how to unpack it
    assert any("es_co_f" in note and "asterisk-prompt-es-co" in note and "dpkg -x" in note
               for note in json.loads((out / "report.json").read_text())["notes"])
    # adding validation voices changes no file of the train and held-out voices
    before = _files(corpus["out"])
    after = {k: v for k, v in _files(out).items() if not any(f"/{n}/" in f"/{k}" for n in doc["validation"])}
    assert {k: v for k, v in before.items() if k.startswith(("raw/", "eval/"))} == \
        {k: v for k, v in after.items() if k.startswith(("raw/", "eval/"))}


def test_validation_voice_cannot_be_held_out(sources, validation_root, tmp_path, capsys):
    argv = _argv(sources, tmp_path / "c", workers=1) + ["--validation-dir", str(validation_root),
                                                        "--heldout", "it_menardi_f"]
    assert real_corpus.main(argv) == 2
    assert "validation" in capsys.readouterr().err


def test_validation_voices_are_never_read_from_the_installed_asterisk_folder(sources, tmp_path):
    settings = real_corpus.Settings(out=tmp_path / "c", asterisk_dir=sources["asterisk"],
                                    asterisk_doc_dir=sources["docs"], festvox_ru_dir=sources["festvox"],
                                    codec2_dir=sources["codec2"], alsa_dir=sources["alsa"],
                                    validation_dir=sources["asterisk"])
    collection = real_sources.collect(settings)
    assert not any(spec.validation for spec in collection.voices.values())
    assert any("installed asterisk folder" in note and "dpkg -x" in note for note in collection.notes)


@pytest.mark.skipif(__import__("shutil").which("ffmpeg") is None, reason="needs ffmpeg (Debian package ffmpeg)")
def test_gsm_prompts_decode_at_8_khz(tmp_path):
    import subprocess

    wav = tmp_path / "p.wav"
    _write(wav, speechlike(220.0, 1.2, 8000, seed=3), 8000)
    gsm = tmp_path / "p.gsm"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-ar", "8000", "-ac", "1", "-f", "gsm",
                    str(gsm)], check=True)
    audio, sr = real_sources.decode(real_sources.Source("v", "p", str(gsm), "gsm", "es", None, 1.2))
    assert sr == 8000 and abs(len(audio) / sr - 1.2) < 0.05 and np.abs(audio).max() > 0.05
    (tmp_path / "empty.gsm").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        real_sources.decode(real_sources.Source("v", "e", str(tmp_path / "empty.gsm"), "gsm", "es", None, 0.0))
