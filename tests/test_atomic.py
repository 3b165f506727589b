"""Atomic writes: the target is the old file or the new one, never half of one, and has normal permissions."""
from __future__ import annotations

import json
import os
import stat

import pytest

from ai_singer.atomic import (atomic_path, atomic_write, atomic_write_json, atomic_write_text, file_lock,
                              remove_stale_temporaries)


def test_failed_write_leaves_the_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "manifest.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.jsonl"]


def test_atomic_path_keeps_the_suffix_and_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "clip.wav"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".wav" and tmp.parent == target.parent
        tmp.write_bytes(b"RIFF")
    assert target.read_bytes() == b"RIFF"
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.wav"]


def test_json_and_text_round_trip_with_umask_permissions(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"singer": "ä", "n": 1})
    atomic_write_text(tmp_path / "b.txt", "hello")
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"singer": "ä", "n": 1}
    assert (tmp_path / "b.txt").read_text() == "hello"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("a.json", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_leftovers_of_a_killed_save_are_removed_but_not_a_live_writers(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".step_00000400.{dead_pid}.abcd1234.tmp.pt").write_bytes(b"half")
    (tmp_path / f".vocals.{dead_pid}.k_9x2zqa.tmp.wav").write_bytes(b"half")
    live = tmp_path / f".mix.{os.getpid()}.zz99zz99.tmp.wav"
    live.write_bytes(b"being written")
    (tmp_path / "vocals.wav").write_bytes(b"done")
    (tmp_path / ".hidden.tmp").write_bytes(b"not ours")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".step_00000400.{dead_pid}.abcd1234.tmp.pt",
                                                      f".vocals.{dead_pid}.k_9x2zqa.tmp.wav"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "vocals.wav", ".hidden.tmp"])


def test_temporary_names_carry_the_writers_pid(tmp_path):
    with atomic_path(tmp_path / "clip.wav") as tmp:
        assert f".{os.getpid()}." in tmp.name
        tmp.write_bytes(b"x")
        assert remove_stale_temporaries(tmp_path) == []  # our own, still being written


def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


@pytest.mark.parametrize("exchange", [True, False])
def test_atomic_folder_replaces_the_whole_folder_or_nothing(tmp_path, monkeypatch, exchange):
    import ai_singer.atomic as atomic

    if not exchange:  # the three-rename path of systems without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "song"
    with atomic.atomic_folder(target) as folder:
        (folder / "vocals.wav").write_text("old vocal")
        (folder / "mix.wav").write_text("old mix")
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(target) as folder:
            (folder / "vocals.wav").write_text("new vocal")
            raise RuntimeError("killed before the mix")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"vocals.wav": "old vocal", "mix.wav": "old mix"}
    with atomic.atomic_folder(target) as folder:
        (folder / "vocals.wav").write_text("new vocal")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"vocals.wav": "new vocal"}
    assert [p.name for p in tmp_path.iterdir()] == ["song"]


def test_stale_temporary_folders_are_removed_and_a_set_aside_song_comes_back(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".one.{dead}.k2j4_x.tmp").mkdir()
    (tmp_path / f".one.{dead}.k2j4_x.tmp" / "vocals.wav").write_text("half")
    aside = tmp_path / f".two.{dead}.old.tmp"  # killed between "old aside" and "new in place"
    aside.mkdir()
    (aside / "mix.wav").write_text("old two")
    (tmp_path / "three").mkdir()
    (tmp_path / f".three.{dead}.old.tmp").mkdir()  # the new one made it: the old one goes
    live = tmp_path / f".four.{os.getpid()}.abc.tmp"
    live.mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".one.{dead}.k2j4_x.tmp", f".three.{dead}.old.tmp"])
    assert (tmp_path / "two" / "mix.wav").read_text() == "old two"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["two", "three", live.name])


def test_a_reader_puts_back_a_folder_set_aside_by_a_killed_swap(tmp_path):
    """restore_set_aside (called by load_adapter and convert's singer lookup): the old folder of a swap whose
    writer died between its renames comes back; one of a writer still running is left to it."""
    from ai_singer.atomic import restore_set_aside

    aside = tmp_path / f".carol.{_dead_pid()}.old.tmp"
    aside.mkdir()
    (aside / "adapter.yaml").write_text("old")
    live = tmp_path / f".dave.{os.getpid()}.old.tmp"
    live.mkdir()
    assert restore_set_aside(tmp_path / "carol") and (tmp_path / "carol" / "adapter.yaml").read_text() == "old"
    assert not restore_set_aside(tmp_path / "carol")  # already there
    assert not restore_set_aside(tmp_path / "dave") and live.is_dir()


def test_a_held_file_lock_refuses_a_second_holder_that_will_not_wait_and_frees_on_exit(tmp_path):
    lock = tmp_path / "folder.lock"
    with file_lock(lock):
        with pytest.raises(BlockingIOError):
            with file_lock(lock, wait=False):
                pass
    with file_lock(lock, wait=False):  # released: free again
        assert lock.exists()
