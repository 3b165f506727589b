"""The synthetic corpus generator (tools/synth_corpus.py, tools/synth/): layout, determinism, label
framing, F0 accuracy against the intended melody, distinct singer timbres, parallel renditions,
accompaniment in time, and clear errors for bad settings."""
from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from tools import synth_corpus  # noqa: E402
from tools.synth.corpus import CorpusSettings, generate_corpus  # noqa: E402
from tools.synth.melody import SCALES, Note, Phrase, make_phrase, phone_segments  # noqa: E402
from tools.synth.phones import PHONES, PHONE_IDS  # noqa: E402
from tools.synth.singers import make_singer  # noqa: E402
from tools.synth.voice import render_phrase  # noqa: E402

SR = 16000
SMALL = dict(singers=3, phrases_per_singer=2, seconds=2.5, sample_rate=SR, seed=3, held_out=1, songs=1,
             song_seconds=9.0, parallel_phrases=2, progress=False)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    generate_corpus(CorpusSettings(out=out, **SMALL))
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cents(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1200.0 * np.abs(np.log2(a / b))


def test_layout_and_corpus_json(corpus_dir: Path):
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    names = [s["name"] for s in corpus["singers"]]
    assert names == ["s00_soprano", "s01_bass", "s02_tenor"]
    assert [s["split"] for s in corpus["singers"]] == ["train", "train", "held_out"]
    assert corpus["seed"] == 3 and corpus["sample_rate"] == SR and corpus["label_hop_samples"] == SR // 50
    for name in names:  # the raw layout preprocess reads: raw/<singer>/<clip>.wav
        assert sorted(p.name for p in (corpus_dir / "raw" / name).glob("*.wav")) == ["p000.wav", "p001.wav"]
    assert len(corpus["phrases"]) == 6
    for entry in corpus["phrases"]:
        for key in ("audio", "labels", "f0"):
            assert (corpus_dir / entry[key]).is_file(), entry[key]
        assert entry["phrase"]["lyrics"] and entry["phrase"]["notes"]
    assert [g["phrase_id"] for g in corpus["parallel"]] == ["par000", "par001"]
    for group in corpus["parallel"]:
        assert sorted(group["renditions"]) == names
        assert sorted(p.name for p in (corpus_dir / "parallel" / group["phrase_id"]).glob("*.wav")) == \
            [f"{n}.wav" for n in names]
    song_dir = corpus_dir / "songs" / "song00"
    assert {"vocals.wav", "pad.wav", "drums.wav"} <= {p.name for p in song_dir.iterdir()}
    song = corpus["songs"][0]
    assert song["singer"] == "s00_soprano" and list(song["renditions"]) == ["s02_tenor"]  # held-out singers
    assert (corpus_dir / "song_renditions/song00/s02_tenor.wav").is_file()
    phones = json.loads((corpus_dir / "phones.json").read_text())
    assert [p["symbol"] for p in phones["phones"]] == [p.symbol for p in PHONES]
    assert phones["phones"][0]["symbol"] == "sil" and phones["label_rate_hz"] == 50


def test_same_seed_gives_identical_files_and_cli_matches(corpus_dir: Path, tmp_path: Path):
    again = tmp_path / "again"
    args = ["--out", str(again), "--singers", "3", "--phrases-per-singer", "2", "--seconds", "2.5",
            "--sample-rate", str(SR), "--seed", "3", "--held-out", "1", "--songs", "1", "--song-seconds", "9",
            "--parallel-phrases", "2", "--no-progress"]
    assert synth_corpus.main(args) == 0
    first, second = _files(corpus_dir), _files(again)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert different == []

    other = tmp_path / "other_seed"
    generate_corpus(CorpusSettings(out=other, **{**SMALL, "seed": 4, "songs": 0, "parallel_phrases": 0}))
    assert (other / "raw/s00_soprano/p000.wav").read_bytes() != first["raw/s00_soprano/p000.wav"]


def test_worker_processes_write_the_same_bytes(corpus_dir: Path, tmp_path: Path):
    parallel_run = tmp_path / "two_workers"
    generate_corpus(CorpusSettings(out=parallel_run, workers=2, **SMALL))
    assert _files(parallel_run) == _files(corpus_dir)


def test_labels_and_f0_match_audio_length(corpus_dir: Path):
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    hop = corpus["label_hop_samples"]
    entries = corpus["phrases"] + corpus["songs"] + [
        {**r, "n_samples": g["n_samples"]} for g in corpus["parallel"] + corpus["songs"] for r in g["renditions"].values()]
    for entry in entries:
        info = sf.info(str(corpus_dir / entry["audio"]))
        labels = np.load(corpus_dir / entry["labels"])
        f0 = np.load(corpus_dir / entry["f0"])
        assert info.samplerate == SR and info.channels == 1 and info.subtype == "PCM_16"
        assert info.frames == entry["n_samples"] == labels.shape[0] * hop, entry["audio"]
        assert labels.dtype == np.int16 and f0.dtype == np.float32 and f0.shape == labels.shape
        assert labels.min() >= 0 and labels.max() < len(PHONES)
        assert labels[0] == 0 and labels[-1] == 0  # lead-in and tail are silence
        assert len(set(labels.tolist())) >= 4  # silence, vowels and consonants
        voiced_ids = [i for i, p in enumerate(PHONES) if p.is_voiced]
        # F0 labels are voiced exactly on voiced phones (allowing the voicing ramps at boundaries)
        agree = np.mean((f0 > 0) == np.isin(labels, voiced_ids))
        assert agree > 0.9, (entry["audio"], agree)


def test_labels_follow_the_phone_timeline():
    phrase = Phrase("t", 120.0, "major", 0, (0,), (
        Note(0.0, 2.0, 0, ("s", "a")), Note(2.0, 1.0, None, ()), Note(3.0, 2.0, 2, ("m", "i", "t"))), 0.3, 0.3)
    singer = make_singer(2, np.random.default_rng(0))
    rendition = render_phrase(phrase, singer, SR, np.random.default_rng(0))
    hop = rendition.label_hop
    times = (np.arange(len(rendition.labels)) + 0.5) * hop / SR
    for symbol, start, end in phone_segments(phrase):
        inside = (times > start + 0.011) & (times < end - 0.011)
        assert np.all(rendition.labels[inside] == PHONE_IDS[symbol]), symbol
    rest = (times > 0.3 + 2 * 0.5 + 0.01) & (times < 0.3 + 3 * 0.5 - 0.01)
    assert np.all(rendition.labels[rest] == 0) and np.all(rendition.f0_hz[rest] == 0)
    # the voiceless fricative at the start is quiet below 2 kHz and the vowel is not
    s_start, s_end = [(a, b) for sym, a, b in phone_segments(phrase) if sym == "s"][0]
    fric = rendition.audio[int(s_start * SR) + 200:int(s_end * SR) - 200]
    spectrum = np.abs(np.fft.rfft(fric)) ** 2
    freqs = np.fft.rfftfreq(len(fric), 1 / SR)
    assert spectrum[freqs > 3000].sum() > 5 * spectrum[freqs < 1500].sum()


@pytest.mark.parametrize("singer_index", [0, 1, 3])  # soprano, bass, alto
def test_f0_tracks_the_intended_melody(singer_index: int):
    import pyworld

    phrase = make_phrase(np.random.default_rng(11), "p", 3.0)
    singer = make_singer(singer_index, np.random.default_rng(singer_index))
    rendition = render_phrase(phrase, singer, SR, np.random.default_rng(5))
    hop_s = rendition.label_hop / SR
    f0, _ = pyworld.harvest(rendition.audio.astype(np.float64), SR, f0_floor=50.0, f0_ceil=1100.0,
                            frame_period=hop_s * 500)  # half the label hop: frame 2i+1 is label i's centre
    estimate = f0[1::2][:len(rendition.f0_hz)]
    intended = rendition.f0_hz[:len(estimate)]
    voiced = intended > 0
    both = voiced & (estimate > 0)
    assert both.sum() > 0.9 * voiced.sum()  # harvest hears the voiced phones as voiced
    assert np.median(_cents(estimate[both], intended[both])) < 30.0

    # and the intended F0 is the melody: the score's note pitches in the singer's key (vibrato, glides aside)
    times = (np.arange(len(intended)) + 0.5) * hop_s
    note_hz = np.zeros_like(intended, dtype=np.float64)
    for note in phrase.notes:
        if note.degree is not None:
            start, end = phrase.note_times(note)
            note_hz[(times >= start) & (times < end)] = 440.0 * 2 ** ((singer.tonic_midi + phrase.semitones(note) - 69) / 12)
    scored = both & (note_hz > 0)
    assert np.median(_cents(estimate[scored], note_hz[scored])) < 50.0


def _vowel_envelopes(renditions) -> dict[int, np.ndarray]:
    """Per vowel id, the mean WORLD CheapTrick log envelope (30 mel bands) of its voiced frames."""
    import librosa
    import pyworld

    mel = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=30, fmin=200.0, fmax=7000.0)
    vowels = [i for i, p in enumerate(PHONES) if p.kind == "vowel"]
    per_vowel: dict[int, list[np.ndarray]] = {v: [] for v in vowels}
    for r in renditions:
        times = (np.arange(len(r.f0_hz)) + 0.5) * r.label_hop / SR
        voiced = r.f0_hz > 0
        sp = pyworld.cheaptrick(r.audio.astype(np.float64), r.f0_hz[voiced].astype(np.float64),
                                times[voiced].copy(), SR, fft_size=1024)
        envelope, labels = np.log(sp @ mel.T + 1e-12), r.labels[voiced]
        for v in vowels:
            per_vowel[v].append(envelope[labels == v])
    return {v: np.concatenate(frames).mean(axis=0) for v, frames in per_vowel.items() if sum(map(len, frames))}


def _timbre_distance(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float:
    """Distance of two singers' vowel envelopes, over the vowels both sang, with the level removed
    (so neither the phrases' vowel mix nor the loudness counts)."""
    common = sorted(set(a) & set(b))
    assert len(common) >= 4
    difference = np.mean([a[v] - b[v] for v in common], axis=0)
    return float(np.linalg.norm(difference - difference.mean()))


def test_different_singers_have_clearly_different_timbres():
    phrases = [make_phrase(np.random.default_rng(100 + k), f"p{k}", 2.5) for k in range(6)]
    singers = [make_singer(i, np.random.default_rng(40 + i)) for i in (0, 6, 1, 2)]  # 2 sopranos, bass, tenor

    def timbre(singer, subset):
        return _vowel_envelopes([render_phrase(phrases[k], singer, SR, np.random.default_rng(k)) for k in subset])

    first, second = (0, 2, 4), (1, 3, 5)
    first_half = [timbre(s, first) for s in singers]
    # same singer, different phrases
    within = [_timbre_distance(a, timbre(s, second)) for s, a in zip(singers, first_half)]
    for i, j in itertools.combinations(range(len(singers)), 2):
        between = _timbre_distance(first_half[i], first_half[j])  # different singers, the same phrases
        assert between > 1.5 * max(within[i], within[j]), (singers[i].name, singers[j].name, between, within)


def test_formants_scale_with_the_vocal_tract_factor():
    import pyworld

    phrase = Phrase("vowel", 100.0, "major", 0, (0,), (Note(0.0, 3.0, 0, ("a",)),), 0.2, 0.2)
    base = dataclasses.replace(make_singer(2, np.random.default_rng(0)), formant_fine=(1.0,) * 7,
                               formant_factor=1.0, vibrato_depth_cents=0.0, breathiness=0.0)
    short_tract = dataclasses.replace(base, formant_factor=1.2)

    def envelope(singer):
        r = render_phrase(phrase, singer, SR, np.random.default_rng(0))
        times = (np.arange(len(r.f0_hz)) + 0.5) * r.label_hop / SR
        keep = r.f0_hz > 0
        sp = pyworld.cheaptrick(r.audio.astype(np.float64), r.f0_hz[keep].astype(np.float64), times[keep].copy(),
                                SR, fft_size=2048)
        return np.log(sp[10:-10].mean(axis=0))

    freqs = np.fft.rfftfreq(2048, 1 / SR)
    env_base, env_short = envelope(base), envelope(short_tract)
    band = (freqs > 300) & (freqs < 3500)
    factors = np.arange(0.9, 1.41, 0.01)
    errors = []
    for factor in factors:  # the short tract's envelope is the base's stretched by the factor
        warped = np.interp(freqs[band] / factor, freqs, env_base)
        difference = env_short[band] - warped
        errors.append(np.mean((difference - difference.mean()) ** 2))
    assert abs(factors[int(np.argmin(errors))] - 1.2) <= 0.03


def test_parallel_renditions_share_timing_and_labels(corpus_dir: Path):
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    tonic = {s["name"]: s["tonic_midi"] for s in corpus["singers"]}
    for group in corpus["parallel"]:
        renditions = group["renditions"]
        lengths = {sf.info(str(corpus_dir / r["audio"])).frames for r in renditions.values()}
        assert lengths == {group["n_samples"]}
        labels = [np.load(corpus_dir / r["labels"]) for r in renditions.values()]
        assert all(np.array_equal(labels[0], other) for other in labels[1:])
        # same melody relative to each range: F0 ratios follow the tonic difference
        f0 = {name: np.load(corpus_dir / r["f0"]) for name, r in renditions.items()}
        a, b = "s00_soprano", "s01_bass"
        both = (f0[a] > 0) & (f0[b] > 0)
        ratio_cents = 1200 * np.log2(f0[a][both] / f0[b][both])
        assert abs(np.median(ratio_cents) - 100 * (tonic[a] - tonic[b])) < 40.0


def test_song_renditions_share_the_song_timing(corpus_dir: Path):
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    for song in corpus["songs"]:
        labels = np.load(corpus_dir / song["labels"])
        for rendition in song["renditions"].values():
            assert np.array_equal(np.load(corpus_dir / rendition["labels"]), labels)
            assert sf.info(str(corpus_dir / rendition["audio"])).frames == song["n_samples"]


def test_song_stems_share_length_and_tempo(corpus_dir: Path):
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    song = corpus["songs"][0]
    vocals, sr = sf.read(corpus_dir / song["audio"])
    pad, _ = sf.read(corpus_dir / song["pad"])
    drums, _ = sf.read(corpus_dir / song["drums"])
    assert len(vocals) == len(pad) == len(drums) == song["n_samples"]
    assert all(np.sqrt(np.mean(x ** 2)) > 0.01 for x in (vocals, pad, drums))
    # drum hits land on the beat grid: energy just after each beat exceeds energy just before it
    beat_s, lead_in = 60.0 / song["phrase"]["tempo_bpm"], song["phrase"]["lead_in_s"]
    window = int(0.03 * sr)
    beats = [int(round(k * beat_s * sr)) for k in range(1, int(len(drums) / sr / beat_s) - 1)]
    after = np.array([np.mean(drums[b:b + window] ** 2) for b in beats])
    before = np.array([np.mean(drums[b - window - int(0.1 * beat_s * sr):b - int(0.1 * beat_s * sr)] ** 2) for b in beats])
    assert np.mean(after > 4 * before) > 0.9
    # the vocals start after the count-in bar, the pad and drums from the start
    assert np.sqrt(np.mean(vocals[:int(0.8 * lead_in * sr)] ** 2)) < 1e-3
    assert np.sqrt(np.mean(pad[:int(0.8 * lead_in * sr)] ** 2)) > 0.01


def test_pad_plays_the_chords_in_the_singers_key(corpus_dir: Path):
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    song = corpus["songs"][0]
    phrase = song["phrase"]
    pad, sr = sf.read(corpus_dir / song["pad"])
    bar_s = 4 * 60.0 / phrase["tempo_bpm"]
    scale = SCALES[phrase["scale"]]
    key_pc = (song["tonic_midi"] + phrase["key_shift"])
    n_bars = int((len(pad) / sr - phrase["lead_in_s"] - 0.6) / bar_s)
    assert n_bars >= 2
    for bar in range(-1, n_bars):  # bar -1 is the count-in, on the first chord
        start = phrase["lead_in_s"] + bar * bar_s
        segment = pad[int((start + 0.25) * sr):int((start + bar_s - 0.05) * sr)]
        spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)))) ** 2
        freqs = np.fft.rfftfreq(len(segment), 1 / sr)
        band = (freqs > 100) & (freqs < 1100)
        pitch_class = np.round(12 * np.log2(freqs[band] / 440.0) + 69 - key_pc).astype(int) % 12
        chroma = np.bincount(pitch_class, weights=spectrum[band], minlength=12)
        root = phrase["chords"][max(bar, 0) % len(phrase["chords"])]
        triad = {(12 * ((root + k) // 7) + scale[(root + k) % 7]) % 12 for k in (0, 2, 4)}
        assert set(np.argsort(chroma)[-3:].tolist()) == triad, (bar, np.round(chroma / chroma.max(), 2))


@pytest.mark.parametrize("override, message", [
    ({"held_out": 3}, "--held-out"),
    ({"sample_rate": 22051}, "multiple of the label rate"),
    ({"singers": 0}, "--singers"),
])
def test_bad_settings_are_clear_errors(tmp_path: Path, override: dict, message: str):
    with pytest.raises(ValueError, match=message):
        generate_corpus(CorpusSettings(out=tmp_path / "x", **{**SMALL, **override}))
    assert not (tmp_path / "x").exists()


def test_cli_reports_bad_settings(tmp_path: Path, capsys):
    assert synth_corpus.main(["--out", str(tmp_path / "x"), "--singers", "2", "--held-out", "2"]) == 2
    assert "--held-out" in capsys.readouterr().err
