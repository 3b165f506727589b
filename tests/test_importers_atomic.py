"""The so-vits-svc and RVC importers write a base whole or not at all: a failure while the weights are written
(over an existing base, with --overwrite) leaves the old base byte for byte, loadable, and nothing beside it; a
base that an import killed mid-swap left set aside comes back, and still counts as existing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ai_singer import checkpoint
from ai_singer.importers.__main__ import main as importers_main

FIXTURES = Path(__file__).parent / "fixtures"


SOURCES = pytest.mark.parametrize("kind, source", [
    ("sovits", [str(FIXTURES / "sovits" / "G_0.pth"), "--config", str(FIXTURES / "sovits" / "config.json")]),
    ("rvc", [str(FIXTURES / "rvc" / "G_0.pth"), "--config", str(FIXTURES / "rvc" / "config.json")]),
])


def _contents(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def _import_once(kind: str, source: list[str], pretrain_dir: Path) -> tuple[list[str], Path]:
    """Import ``source`` as the base ``tiny`` in ``pretrain_dir``; returns the command and the base folder."""
    command = [kind, *source, "--name", "tiny", "--pretrain-dir", str(pretrain_dir)]
    assert importers_main(command) == 0
    return command, pretrain_dir / "tiny"


@SOURCES
def test_a_failed_import_over_a_base_keeps_the_old_base(kind, source, tmp_path, monkeypatch):
    import safetensors.torch

    command, base_dir = _import_once(kind, source, tmp_path)
    before = _contents(base_dir)
    killed = tmp_path / ".tiny.999999999.abc.tmp"  # what an import killed mid-write left (pid beyond pid_max)
    killed.mkdir()
    (killed / checkpoint.BASE_GENERATOR_FILE).write_bytes(b"half")

    def half_then_disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        importers_main([*command, "--overwrite"])
    assert _contents(base_dir) == before
    assert os.listdir(tmp_path) == ["tiny"]
    assert checkpoint.load_base(base_dir).sha256 == checkpoint.sha256_file(base_dir / checkpoint.BASE_GENERATOR_FILE)


@SOURCES
def test_a_base_set_aside_by_a_killed_import_is_put_back_and_kept(kind, source, tmp_path, capsys):
    command, base_dir = _import_once(kind, source, tmp_path)
    before = _contents(base_dir)
    os.rename(base_dir, tmp_path / ".tiny.999999999.old.tmp")  # killed between its two renames
    assert importers_main(command) == 2  # without --overwrite: the old base is there
    assert "already exists" in capsys.readouterr().err
    assert _contents(base_dir) == before
    assert os.listdir(tmp_path) == ["tiny"]
