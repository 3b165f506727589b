"""The ``ai-singer`` command: concat, convert through Hydra, and pass-through to the other stages."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import harmonic
from test_infer import make_adapter, make_base

from ai_singer import cli

REPO = Path(__file__).resolve().parent.parent


def _write(path: Path, audio: np.ndarray, sr: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_16" if path.suffix == ".flac" else "FLOAT"
    sf.write(str(path), audio.T if audio.ndim == 2 else audio, sr, subtype=subtype)
    return path


def test_concat_command(tmp_path, capsys):
    a = _write(tmp_path / "a.wav", np.stack([harmonic(220.0, 48000, 1.0)] * 2), 48000)
    b = _write(tmp_path / "b.flac", harmonic(330.0, 44100, 1.0), 44100)
    out = tmp_path / "joined.wav"
    assert cli.main(["concat", str(a), str(b), "-o", str(out), "--crossfade", "0.25"]) == 0
    data, sr = sf.read(str(out), always_2d=True)
    assert sr == 48000 and data.shape == (2 * 48000 - 12000, 2)
    assert "joined.wav" in capsys.readouterr().out
    # Without --crossfade the library default (no overlap) applies.
    assert cli.main(["concat", str(a), str(b), "-o", str(out)]) == 0
    assert sf.info(str(out)).frames == 2 * 48000


def test_concat_command_bad_input(tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"nope")
    assert cli.main(["concat", str(bad), "-o", str(tmp_path / "x.wav")]) == 2
    assert "broken.wav" in capsys.readouterr().err


@pytest.fixture
def hydra_clean():
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def test_convert_command_runs_the_hydra_stage(tmp_path, tiny_hubert_dir, hydra_clean, capsys):
    base = make_base(tmp_path)
    make_adapter(tmp_path, base, "alto")
    songs = tmp_path / "songs"
    _write(songs / "tune" / "vocals.wav", harmonic(220.0, 44100, 0.8), 44100)
    _write(songs / "tune" / "guitar.wav", harmonic(110.0, 44100, 0.8, amplitude=0.1), 44100)
    (songs / "empty").mkdir()
    common = [f"paths.pretrain={tmp_path / 'pretrain'}", f"paths.singers={tmp_path / 'singers'}",
              f"paths.output={tmp_path / 'out'}", f"content.path={tiny_hubert_dir}", "content.layer=2",
              "f0.method=dio", "progress=false", "device=cpu", "refine.steps=0"]
    code = cli.main(["convert", f"songs={songs}", "singer=alto", *common])
    captured = capsys.readouterr()
    assert code == 1  # the empty folder fails, the tune converts
    assert "FAILED  empty" in captured.out and "no vocal stem" in captured.out
    assert (tmp_path / "out" / "tune" / "mix.wav").is_file()
    assert json.loads((tmp_path / "out" / "batch_report.json").read_text())["summary"]["ok"] == 1


def test_unknown_singer_message_on_the_command_line(tmp_path, tiny_hubert_dir, hydra_clean, capsys):
    base = make_base(tmp_path)
    make_adapter(tmp_path, base, "alto")
    make_adapter(tmp_path, base, "tenor")
    _write(tmp_path / "song.wav", harmonic(220.0, 44100, 0.5), 44100)
    code = cli.main(["convert", f"songs={tmp_path / 'song.wav'}", "singer=soprano",
                     f"paths.pretrain={tmp_path / 'pretrain'}", f"paths.singers={tmp_path / 'singers'}",
                     f"paths.output={tmp_path / 'out'}", f"content.path={tiny_hubert_dir}"])
    assert code == 2
    assert "unknown singer" in (err := capsys.readouterr().err) and "Available singers: alto, tenor" in err


@pytest.mark.parametrize("stage, module", [("preprocess", "ai_singer.preprocess"), ("train", "ai_singer.train")])
def test_other_stages_receive_the_overrides_unchanged(stage, module, monkeypatch):
    import importlib

    seen = {}
    target = importlib.import_module(module)

    def fake_main():
        seen["argv"] = list(sys.argv)
        raise SystemExit(3)

    monkeypatch.setattr(target, "main", fake_main)
    assert cli.main([stage, "paths.raw=/data", "--cfg", "job"]) == 3
    assert seen["argv"][1:] == ["paths.raw=/data", "--cfg", "job"]


def test_python_dash_m_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "ai_singer", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0
    for command in ("preprocess", "train", "convert", "concat"):
        assert command in result.stdout


def test_concat_command_warns_when_the_crossfade_is_shortened(tmp_path, capsys):
    a = _write(tmp_path / "a.wav", harmonic(220.0, 44100, 1.0), 44100)
    b = _write(tmp_path / "b.wav", harmonic(330.0, 44100, 1.0), 44100)
    assert cli.main(["concat", str(a), str(b), "-o", str(tmp_path / "j.wav"), "--crossfade", "100"]) == 0
    err = capsys.readouterr().err
    assert err.count("concat: warning: ") == 1 and "instead of 100 s" in err
