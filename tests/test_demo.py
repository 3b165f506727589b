"""``ai-singer demo``: the bundled example song converted with the real stages (against a tiny bundle
built by tools/build_bundle.py in a temporary folder), the missing-bundle message, and --full."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import soundfile as sf

from test_build_bundle import tiny_bundle

from ai_singer import cli, demo

REPO = Path(__file__).resolve().parent.parent

FAST = ["--convert-arg", "f0.method=dio", "--convert-arg", "progress=false", "--convert-arg", "refine.steps=0"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory)[0]


@pytest.fixture
def hydra_clean():
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def _assert_like_source(path: Path, source: Path) -> None:
    out, src = sf.info(str(path)), sf.info(str(source))
    assert (out.frames, out.samplerate) == (src.frames, src.samplerate), path


def test_demo_converts_the_example_song(bundle, tmp_path, hydra_clean, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--bundle", str(bundle), "--out", str(out), *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    source = bundle / "data/examples/song01/vocals.flac"
    for name in ("vocals.wav", "mix.wav"):
        _assert_like_source(out / "song01" / name, source)
        assert f"{out / 'song01' / name}" in printed
    vocal, _ = sf.read(str(out / "song01" / "vocals.wav"))
    assert abs(vocal).max() > 0  # something was sung
    report = json.loads((out / "song01" / "report.json").read_text())
    assert report["singer"] == "example" and report["base"]["path"].endswith("pretrain/synth-tiny")
    assert set(report["source"]["accompaniment"]) == {str(bundle / "data/examples/song01" / f)
                                                       for f in ("drums.flac", "pad.flac")}
    assert "demo: done in" in printed and "ai-singer convert songs=" in printed


def test_demo_from_another_working_directory(bundle, tmp_path, hydra_clean, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(demo.BUNDLE_ENV, str(bundle))
    assert demo.main(FAST) == 0  # default output folder is outputs/demo under the working directory
    _assert_like_source(tmp_path / "outputs/demo/song01/mix.wav", bundle / "data/examples/song01/vocals.flac")


def test_missing_bundle_says_which_file_and_how_to_rebuild(bundle, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(bundle / "pretrain", partial / "pretrain")
    shutil.copytree(bundle / "singers", partial / "singers")
    code = demo.main(["--bundle", str(partial), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    for name in demo.EXAMPLE_SONG_STEMS:
        assert str(partial / demo.EXAMPLE_SONG_DIR / name) in err
    assert "python tools/build_bundle.py" in err and "adapter" not in err
    assert not (tmp_path / "out").exists()

    # --full fine-tunes on the base (no adapter needed); the base's content encoder folder is needed
    shutil.copytree(bundle / demo.EXAMPLE_SONG_DIR, partial / demo.EXAMPLE_SONG_DIR)
    shutil.rmtree(partial / "singers")
    shutil.rmtree(partial / "pretrain/content")
    code = demo.main(["--full", "--bundle", str(partial), "--out", str(tmp_path / "full")])
    err = capsys.readouterr().err
    assert code == 2 and "pretrain/content/synth-hubert/config.json" in err and "adapter" not in err
    assert not (tmp_path / "full").exists()

    code = demo.main(["--bundle", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code == 2 and "singers/example/adapter.yaml" in err and "pretrain/bundle.json" in err


def test_synth_recordings_are_the_corpus_voice(bundle, tmp_path):
    name, wavs = demo.synth_recordings(tmp_path / "rec", voice_index=2, phrases=1, seconds=3.0)
    assert name == "s02_tenor" and [p.name for p in wavs] == ["p000.wav"]
    # the same singer and phrase as tools/synth_corpus.py --seed 0 wrote into the bundle's corpus
    assert wavs[0].read_bytes() == (bundle / "data/synth/raw/s02_tenor/p000.wav").read_bytes()
    stamp = wavs[0].stat().st_mtime_ns
    demo.synth_recordings(tmp_path / "rec", voice_index=2, phrases=1, seconds=3.0)
    assert wavs[0].stat().st_mtime_ns == stamp  # kept, not rendered again


def test_merge_overrides_later_wins():
    assert demo.merge_overrides(["a=1", "b=2"], ["a=3", "+c=4"]) == ["b=2", "a=3", "+c=4"]


def test_full_demo_runs_every_stage_and_resumes(bundle, tmp_path, hydra_clean, capsys):
    out = tmp_path / "full"
    args = ["--full", "--bundle", str(bundle), "--out", str(out), "--voice", "2", "--phrases", "2", "--steps", "2",
            "--preprocess-arg", "f0.method=dio", "--preprocess-arg", "num_workers=0",
            "--preprocess-arg", "slicer.min_length_s=1.0", "--train-arg", "trainer=tiny", *FAST]
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "ai-singer preprocess", "ai-singer train mode=finetune",
                  "ai-singer convert"):
        assert stage in printed
    assert (out / "singers/s02_tenor/adapter.safetensors").is_file()
    _assert_like_source(out / "converted/song01/mix.wav", bundle / "data/examples/song01/vocals.flac")
    # again with more steps: recordings kept, preprocess skips, training continues from its checkpoint
    assert demo.main([*args, "--steps", "3"]) == 0  # the last --steps wins
    printed = capsys.readouterr().out
    assert "1 unchanged" in printed or "unchanged (skipped)" in printed
    assert "3 steps done" in printed


@pytest.mark.slow
def test_demo_on_the_repository_bundle(tmp_path, hydra_clean, capsys):
    """The real bundle (skipped until tools/build_bundle.py has written it): under a minute on 2 CPU cores."""
    try:
        demo.find_bundle(REPO)
    except demo.BundleMissing as error:
        pytest.skip(str(error))
    started = time.perf_counter()
    assert demo.main(["--bundle", str(REPO), "--out", str(tmp_path / "demo"), "--convert-arg", "progress=false"]) == 0
    elapsed = time.perf_counter() - started
    _assert_like_source(tmp_path / "demo/song01/mix.wav", REPO / demo.EXAMPLE_SONG_DIR / "vocals.flac")
    print(f"demo on the repository bundle: {elapsed:.1f} s")
