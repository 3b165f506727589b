"""One error type for user mistakes (ai_singer.errors.UserError), reported once by the Hydra entry wrapper:
one line on stderr, exit code 2, no traceback; output folders are checked before Hydra writes its logs."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from ai_singer import cli
from ai_singer.errors import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def hydra_clean():
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def run(stage: str, *overrides, capsys) -> tuple[int, list[str]]:
    """``ai-singer <stage> <overrides>`` in this process: (exit code, stderr lines that are not log lines)."""
    code = cli.main([stage, *[str(o) for o in overrides]])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_one_line(code: int, lines: list[str], stage: str, *needles: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: error: "), lines
    assert "Traceback" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_user_error_message_fix_and_pickling():
    from ai_singer.audio import AudioError
    from ai_singer.checkpoint import ArtifactError, ArtifactMissing
    from ai_singer.demo import BundleMissing
    from ai_singer.device import DeviceError
    from ai_singer.features.whisper_models import WhisperModelMissing
    from ai_singer.infer import InferError
    from ai_singer.manifest import ManifestError
    from ai_singer.preprocess import PreprocessError
    from ai_singer.sections import SectionsError
    from ai_singer.train_settings import TrainSetupError

    error = UserError("transpose=abc", "not a number", "give semitones, e.g. transpose=-12, or transpose=auto")
    assert str(error) == "transpose=abc: not a number — give semitones, e.g. transpose=-12, or transpose=auto"
    assert str(UserError("a.wav", "empty")) == "a.wav: empty"
    examples = [AudioError("a.wav", "empty"), ArtifactError("base/", "bad hash"), ArtifactMissing("base/", "gone"),
                BundleMissing(Path("/b"), ["x"]), DeviceError("device", "no CUDA"), InferError("song", "bad"),
                ManifestError("m.jsonl", "line 3: bad"), PreprocessError("paths.raw=x: not found"),
                SectionsError("s.txt", "line 1: bad"), TrainSetupError("peft.r", "must be >= 1"),
                WhisperModelMissing("wheel:base", "not installed"), error]
    for example in examples:
        assert isinstance(example, UserError)
        again = pickle.loads(pickle.dumps(example))
        assert type(again) is type(example) and str(again) == str(example)
    assert str(PreprocessError("paths.raw=x: not found")) == "paths.raw=x: not found"
    assert isinstance(SectionsError("s", "r"), ValueError) and isinstance(ArtifactMissing("p", "r"), FileNotFoundError)


def test_a_user_error_is_one_line_and_exit_2_for_every_stage(tmp_path, hydra_clean, capsys):
    code, lines = run("convert", f"songs={tmp_path / 'missing'}", "singer=example", f"paths.singers={REPO / 'singers'}",
                      f"paths.output={tmp_path / 'out'}", capsys=capsys)
    assert_one_line(code, lines, "convert", "songs path does not exist")
    code, lines = run("preprocess", f"paths.raw={tmp_path / 'nowhere'}", f"paths.processed={tmp_path / 'p'}",
                      capsys=capsys)
    assert_one_line(code, lines, "preprocess", "paths.raw=")
    code, lines = run("train", "mode=finetune", f"paths.processed={tmp_path / 'nothing'}", "singer=alice",
                      "base=nowhere", f"paths.runs={tmp_path / 'runs'}", f"paths.singers={tmp_path / 's'}",
                      capsys=capsys)
    assert_one_line(code, lines, "train")


@pytest.mark.parametrize("stage, setting", [("convert", "paths.output"), ("preprocess", "paths.processed"),
                                            ("train", "paths.runs"), ("train", "paths.singers")])
def test_an_output_folder_that_cannot_be_created_is_one_line_before_hydra_writes(tmp_path, hydra_clean, capsys,
                                                                                  stage, setting):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    overrides = {"convert": ["songs=x", "singer=y"], "preprocess": [f"paths.raw={tmp_path}"],
                 "train": ["mode=finetune", "singer=y", "base=z"]}[stage]
    code, lines = run(stage, *overrides, f"{setting}={blocker / 'sub'}", capsys=capsys)
    assert_one_line(code, lines, stage, f"{setting}=", "is a file, not a folder", f"{setting}=DIR")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder this process cannot write in: a read-only tmpfs when running as root (root ignores
    permissions), else a folder with mode 0555; skipped when neither is possible."""
    import subprocess

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
        yield locked
        subprocess.run(["umount", "-l", str(locked)], check=False)
    else:
        locked.chmod(0o555)
        yield locked
        locked.chmod(0o755)


def test_a_read_only_output_folder_is_one_line(read_only_dir, hydra_clean, capsys):
    code, lines = run("convert", "songs=x", "singer=y", f"paths.output={read_only_dir}", capsys=capsys)
    assert_one_line(code, lines, "convert", "is not writable")
    code, lines = run("convert", "songs=x", "singer=y", f"paths.output={read_only_dir / 'new'}", capsys=capsys)
    assert_one_line(code, lines, "convert", "cannot be created", "not writable")
    assert list(read_only_dir.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# every setting is checked before any model loads

@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a base, an adapter's weights, a content encoder or a training run is loaded/started."""
    import ai_singer.checkpoint as ckpt
    import ai_singer.features.content as content
    import ai_singer.infer as infer
    import ai_singer.train as train

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(ckpt, "load_base", loaded)
    monkeypatch.setattr(infer.Converter, "__init__", loaded)
    monkeypatch.setattr(content, "load_content_encoder", loaded)
    monkeypatch.setattr(train, "run_training", loaded)


def _song_folder(root: Path, sections: str | None = None) -> Path:
    import numpy as np
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    sf.write(str(root / "vocals.wav"), (0.1 * np.sin(np.arange(22050) * 0.05)).astype(np.float32), 22050)
    if sections is not None:
        (root / "sections.txt").write_text(sections)
    return root


CONVERT_MISTAKES = [
    (["noise_scale=abc"], "noise_scale='abc': not a number"),
    (["transpose=nan"], "transpose=nan: must be a finite number"),
    (["transpose=100"], "transpose=100: more than 36 semitones"),
    (["transpose=-100"], "transpose=-100: more than 36 semitones"),
    (["transpose=high"], "transpose='high': not a number; give semitones or 'auto'"),
    (["pitch_correction.key=H"], "pitch_correction.key='H': not a key"),
    (["pitch_correction.scale=blues"], "pitch_correction.scale='blues': unknown scale"),
    (["pitch_correction.strength=2"], "pitch_correction.strength=2: must be within 0..1"),
    (["singer=../x"], "singer='../x': a singer is named by its folder name"),
    (["f0.method=crepe"], "f0.method='crepe': unknown F0 method"),
    (["chunk.batch_size=many"], "chunk.batch_size='many': not a whole number"),
    (["mix.subtype=PCM_99"], "mix.subtype='PCM_99': cannot be written as wav"),
    (["overwrite=maybe"], "overwrite='maybe': expected true or false"),
    (["strength=1"], "strength is not a setting of convert — did you mean pitch_correction.strength?"),
]


@pytest.mark.parametrize("overrides, message", CONVERT_MISTAKES, ids=[m[0][0] for m in CONVERT_MISTAKES])
def test_each_convert_mistake_is_one_line_before_any_model_loads(tmp_path, hydra_clean, capsys, nothing_loads,
                                                                 overrides, message):
    song = _song_folder(tmp_path / "songs" / "one")
    code, lines = run("convert", f"songs={song.parent}", "singer=example", f"paths.singers={REPO / 'singers'}",
                      f"paths.pretrain={REPO / 'pretrain'}", f"paths.output={tmp_path / 'out'}", *overrides,
                      capsys=capsys)
    assert_one_line(code, lines, "convert", message)


def test_every_sections_file_of_the_batch_is_read_before_any_model_loads(tmp_path, hydra_clean, capsys,
                                                                         nothing_loads):
    songs = tmp_path / "songs"
    _song_folder(songs / "a_fine", "0 end example\n")
    _song_folder(songs / "b_broken", "0 1 example\n0.5 x example\n")
    common = [f"songs={songs}", f"paths.singers={REPO / 'singers'}", f"paths.pretrain={REPO / 'pretrain'}",
              f"paths.output={tmp_path / 'out'}"]
    code, lines = run("convert", *common, capsys=capsys)
    assert_one_line(code, lines, "convert", "b_broken/sections.txt: line 2")
    (songs / "b_broken" / "sections.txt").write_text("0 end nobody\n")
    code, lines = run("convert", *common, capsys=capsys)
    assert_one_line(code, lines, "convert", "b_broken/sections.txt: names singer 'nobody': unknown singer")
    (songs / "b_broken" / "sections.txt").write_text("0 end ../example\n")
    code, lines = run("convert", *common, capsys=capsys)
    assert_one_line(code, lines, "convert", "line 1: '../example' is not a singer name")


TRAIN_MISTAKES = [
    (["peft.r=-1"], "peft.r must be >= 1"),
    (["peft.method=nope"], "peft.method must be one of"),
    (["model.hidden_channels=-3"], "hidden_channels must be positive"),
    (["num_workers=abc"], "num_workers is not a setting of train — did you mean trainer.num_workers?"),
    (["trainer.num_workers=abc"], "trainer.num_workers"),
]


@pytest.mark.parametrize("overrides, message", TRAIN_MISTAKES, ids=[m[0][0] for m in TRAIN_MISTAKES])
def test_each_train_mistake_is_one_line_before_training_starts(tmp_path, hydra_clean, capsys, nothing_loads,
                                                               overrides, message):
    code, lines = run("train", "mode=finetune", "singer=alice", "base=pretrain/real-ddsp-words",
                      f"paths.runs={tmp_path / 'runs'}", f"paths.singers={tmp_path / 'singers'}", *overrides,
                      capsys=capsys)
    assert_one_line(code, lines, "train", message)


def test_preprocess_num_workers_abc_is_one_line_before_any_work(tmp_path, hydra_clean, capsys, nothing_loads):
    code, lines = run("preprocess", f"paths.raw={tmp_path}", f"paths.processed={tmp_path / 'p'}",
                      "num_workers=abc", capsys=capsys)
    assert_one_line(code, lines, "preprocess", "num_workers='abc': not a whole number")


@pytest.mark.parametrize("stage, module, function, overrides", [
    ("preprocess", "ai_singer.preprocess", "run_preprocess", ["paths.raw={tmp}", "paths.processed={tmp}/p"]),
    ("convert", "ai_singer.infer", "check_batch", ["songs={tmp}", "singer=x", "paths.output={tmp}/o"]),
])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, hydra_clean, capsys, monkeypatch, stage, module, function,
                                        overrides):
    """A Ctrl-C in preprocess or convert (whose writes are atomic and resume) ends with one line and exit 130,
    so ``preprocess && train`` stops there; train saves and returns 130 itself (tests/test_train.py)."""
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, interrupted)
    code, lines = run(stage, *[o.format(tmp=tmp_path) for o in overrides], capsys=capsys)
    assert code == 130 and lines == [f"{stage}: interrupted; what was finished is kept: run the same command "
                                     "again to resume"]


# --------------------------------------------------------------------------------------------------
# a full disk is the environment's failure: one line, exit 3

def test_out_of_space_is_recognised_and_picklable(tmp_path, monkeypatch):
    import errno

    import ai_singer.errors as errors

    full = OSError(errno.ENOSPC, "No space left on device")
    assert errors.is_out_of_space(full) and not errors.is_out_of_space(OSError(errno.EACCES, "denied"))
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("could not save") from inner
    except RuntimeError as outer:
        assert errors.is_out_of_space(outer)
    system_error = RuntimeError("Error opening 'x.wav': System error.")  # libsndfile's words for a full disk
    monkeypatch.setattr(errors, "free_bytes", lambda folder: 10 << 30)
    assert not errors.is_out_of_space(system_error, tmp_path)
    monkeypatch.setattr(errors, "free_bytes", lambda folder: 100 << 10)
    assert errors.is_out_of_space(system_error, tmp_path) and not errors.is_out_of_space(system_error)
    error = errors.OutOfSpace(tmp_path, needed_bytes=3 << 20, free=100 << 10)
    assert str(error).startswith(f"{tmp_path}: out of disk space (100.0 KB free; the rest of the run needs about 3.0 MB)")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_a_full_disk_anywhere_in_a_stage_is_one_line_and_exit_3(tmp_path, hydra_clean, capsys, monkeypatch):
    import errno

    import ai_singer.infer as infer

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x" / "vocals.wav"))

    monkeypatch.setattr(infer, "run_batch", full)
    code, lines = run("convert", "songs=x", "singer=y", f"paths.output={tmp_path / 'out'}", capsys=capsys)
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith(f"convert: error: {tmp_path / 'out' / 'x'}: out of disk space (")
