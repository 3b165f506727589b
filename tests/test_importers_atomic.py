"""The so-vits-svc and RVC importers write a base whole or not at all: a failure while the weights are written
(over an existing base, with --overwrite) leaves the old base byte for byte, loadable, and nothing beside it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ai_singer import checkpoint
from ai_singer.importers.__main__ import main as importers_main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("kind, source", [
    ("sovits", [str(FIXTURES / "sovits" / "G_0.pth"), "--config", str(FIXTURES / "sovits" / "config.json")]),
    ("rvc", [str(FIXTURES / "rvc" / "G_0.pth"), "--config", str(FIXTURES / "rvc" / "config.json")]),
])
def test_a_failed_import_over_a_base_keeps_the_old_base(kind, source, tmp_path, monkeypatch):
    import safetensors.torch

    command = [kind, *source, "--name", "tiny", "--pretrain-dir", str(tmp_path)]
    assert importers_main(command) == 0
    base_dir = tmp_path / "tiny"
    before = {name: (base_dir / name).read_bytes() for name in os.listdir(base_dir)}
    killed = tmp_path / ".tiny.999999999.abc.tmp"  # what an import killed mid-write left (pid beyond pid_max)
    killed.mkdir()
    (killed / checkpoint.BASE_GENERATOR_FILE).write_bytes(b"half")

    def half_then_disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        importers_main([*command, "--overwrite"])
    assert {name: (base_dir / name).read_bytes() for name in os.listdir(base_dir)} == before
    assert os.listdir(tmp_path) == ["tiny"]
    assert checkpoint.load_base(base_dir).sha256 == checkpoint.sha256_file(base_dir / checkpoint.BASE_GENERATOR_FILE)
