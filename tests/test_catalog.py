"""`ai-singer singers`: installed bases and adapters, which adapter fits which base, bad folders named."""
from __future__ import annotations

import torch
from torch import nn

from ai_singer import checkpoint as ckpt
from ai_singer.catalog import list_adapters, list_bases
from ai_singer.cli import main


def install(root):
    """pretrain/base-a (a real base artifact), a content-encoder-like folder, and three singer folders:
    one adapter for base-a, one for a base that is not installed, one with a broken adapter.yaml."""
    torch.manual_seed(0)
    generator = nn.Conv1d(4, 4, 3)
    base = ckpt.save_base(root / "pretrain" / "base-a", generator.state_dict(), None,
                          {"model": {"hidden_channels": 4}, "content_encoder": {"name": "hubert", "dim": 4},
                           "speakers": ["x", "y"], "steps": 7}, weights_dtype="float16")
    (root / "pretrain" / "content").mkdir()
    (root / "pretrain" / "content" / "config.json").write_text("{}")
    sha = ckpt.load_base(base).sha256
    tensors = {"lora_A": torch.zeros(2, 4), "singer_embedding": torch.zeros(4)}
    stats = {"seconds": 95.0, "f0_median_hz": 220.0}
    ckpt.save_adapter(root / "singers" / "alice", tensors, {"singer": "alice", "method": "lora", "steps": 300,
                                                            "base_sha256": sha, "base_name": "base-a", "stats": stats})
    ckpt.save_adapter(root / "singers" / "bob", tensors, {"singer": "bob", "method": "ia3", "base_sha256": "f" * 64,
                                                          "base_name": "elsewhere", "stats": {}})
    (root / "singers" / "carol").mkdir()
    (root / "singers" / "carol" / "adapter.yaml").write_text("singer: [unclosed\n")
    return sha


def test_bases_and_adapters_are_matched_by_hash(tmp_path):
    sha = install(tmp_path)
    bases = list_bases(tmp_path / "pretrain")
    assert [b.name for b in bases] == ["base-a"]  # the content encoder folder is not a base
    assert bases[0].sha256 == sha and bases[0].speakers == 2 and bases[0].steps == 7
    assert bases[0].weights_dtype == "float16" and bases[0].content_encoder == "hubert (4-dim)"
    adapters = {a.name: a for a in list_adapters(tmp_path / "singers", bases)}
    assert adapters["alice"].base is bases[0] and adapters["alice"].steps == 300 and adapters["alice"].megabytes > 0
    assert adapters["bob"].base is None and adapters["bob"].method == "ia3"
    assert "carol" in adapters and "adapter.yaml: unreadable (not valid YAML" in adapters["carol"].error


def test_the_command_lists_everything_and_says_what_does_not_fit(tmp_path, capsys):
    install(tmp_path)
    code = main(["singers", "--pretrain-dir", str(tmp_path / "pretrain"), "--singers-dir", str(tmp_path / "singers")])
    out = capsys.readouterr().out
    assert code == 0
    assert "base-a: sha256" in out and "2 speakers, 7 steps, float16" in out
    assert "alice: lora, 300 steps" in out and "95 s of singing, F0 median 220 Hz, retrieval index -; base base-a" in out
    assert "bob: ia3, - steps" in out and "its base (elsewhere, sha256 ffffffffffff) is not installed" in out
    assert "carol: " in out and "unreadable" in out


def test_an_adapter_fits_a_base_converted_from_its_own(tmp_path):
    install(tmp_path)
    ckpt.convert_base_dtype(tmp_path / "pretrain" / "base-a", tmp_path / "pretrain" / "base-a-fp32", "float32")
    bases = list_bases(tmp_path / "pretrain")
    adapters = {a.name: a for a in list_adapters(tmp_path / "singers", bases)}
    assert [b.name for b in bases] == ["base-a", "base-a-fp32"]
    assert adapters["alice"].base.name == "base-a"  # the base it was trained on, when installed
    (tmp_path / "pretrain" / "base-a" / "config.yaml").unlink()
    bases = list_bases(tmp_path / "pretrain")
    assert list_adapters(tmp_path / "singers", bases)[0].base.name == "base-a-fp32"  # else the converted copy


def test_no_folders_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from ai_singer import bundle

    monkeypatch.setattr(bundle, "bundle_root", lambda: None)  # nothing bundled either (else: tests/test_bundle.py)
    code = main(["singers", "--pretrain-dir", str(tmp_path / "p"), "--singers-dir", str(tmp_path / "s")])
    assert code == 2 and "neither" in capsys.readouterr().err
