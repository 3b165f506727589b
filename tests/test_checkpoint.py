"""Artifacts and training state: round trips, hash and format checks, strict loading, retention,
corrupt-file fallback and RNG restore."""
from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from ai_singer import checkpoint as ckpt


def tiny_generator() -> nn.Module:
    return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.Tanh(), nn.Conv1d(8, 1, 1))


def tiny_discriminator() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.LeakyReLU(), nn.Conv1d(4, 1, 3, padding=1))


BASE_CONFIG = {"model": {"hidden_channels": 8, "gin_channels": 4}, "content_encoder": {"name": "hubert", "dim": 4},
               "sample_rate": 44100, "hop_length": 512, "speakers": ["alice", "bob"]}


@pytest.fixture
def base_dir(tmp_path):
    torch.manual_seed(0)
    generator, discriminator = tiny_generator(), tiny_discriminator()
    directory = ckpt.save_base(tmp_path / "pretrain" / "base", generator.state_dict(), discriminator.state_dict(),
                               BASE_CONFIG)
    return directory, generator, discriminator


def test_base_round_trip_strict_and_hashed(base_dir):
    directory, generator, discriminator = base_dir
    assert sorted(p.name for p in directory.iterdir()) == ["config.yaml", "discriminator.safetensors",
                                                          "generator.safetensors"]
    config = yaml.safe_load((directory / "config.yaml").read_text())
    assert config["kind"] == "base" and config["format_version"] == ckpt.FORMAT_VERSION
    assert config["generator_sha256"] == ckpt.sha256_file(directory / "generator.safetensors")
    assert config["speakers"] == ["alice", "bob"] and config["model"]["gin_channels"] == 4 and config["created"]

    base = ckpt.load_base(directory)
    assert base.discriminator_state is None and base.sha256 == config["generator_sha256"]
    assert base.speakers == ["alice", "bob"] and base.name == "base" and base.model_config["hidden_channels"] == 8
    rebuilt = tiny_generator()
    ckpt.load_state_strict(rebuilt, base.generator_state, directory / "generator.safetensors")
    x = torch.randn(2, 4, 16)
    assert torch.equal(rebuilt(x), generator(x))

    with_d = ckpt.load_base(directory, with_discriminator=True)
    rebuilt_d = tiny_discriminator()
    ckpt.load_state_strict(rebuilt_d, with_d.discriminator_state, "discriminator")
    wav = torch.randn(1, 1, 64)
    assert torch.equal(rebuilt_d(wav), discriminator(wav))


def test_saving_the_same_base_again_gives_the_same_hash(base_dir, tmp_path):
    """A re-export of unchanged weights keeps the generator's sha256, so adapters trained on it still load."""
    directory, generator, discriminator = base_dir
    hashes = set()
    for attempt in range(8):  # safetensors would order a several-key metadata map at random
        again = ckpt.save_base(tmp_path / f"again{attempt}", generator.state_dict(), discriminator.state_dict(),
                               BASE_CONFIG)
        hashes.add(ckpt.load_base(again).sha256)
        assert (again / "discriminator.safetensors").read_bytes() == (directory / "discriminator.safetensors").read_bytes()
    assert hashes == {ckpt.load_base(directory).sha256}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_compact_base_loads_as_float32_and_stays_hashed(base_dir, tmp_path, dtype):
    """A base stored in half precision: half the file, the hash and strict loading still hold, the tensors
    come back as float32 and the module computes what the float32 base computes (to half precision)."""
    from safetensors.torch import load_file

    directory, generator, discriminator = base_dir
    half = ckpt.save_base(tmp_path / dtype, generator.state_dict(), discriminator.state_dict(), BASE_CONFIG,
                          weights_dtype=dtype)
    for name in ("generator.safetensors", "discriminator.safetensors"):
        assert {t.dtype for t in load_file(str(half / name)).values()} == {getattr(torch, dtype)}
    base = ckpt.load_base(half, with_discriminator=True)
    assert base.config["weights_dtype"] == dtype and base.sha256 == ckpt.sha256_file(half / "generator.safetensors")
    assert all(t.dtype == torch.float32 for t in [*base.generator_state.values(), *base.discriminator_state.values()])
    rebuilt = tiny_generator()
    ckpt.load_state_strict(rebuilt, base.generator_state, half / "generator.safetensors")
    x = torch.randn(2, 4, 16)
    assert torch.allclose(rebuilt(x), generator(x), atol=0.05, rtol=0.02)
    assert all(p.dtype == torch.float32 for p in rebuilt.parameters())
    with pytest.raises(ckpt.StateDictMismatch, match="missing"):
        ckpt.load_state_strict(rebuilt, {k: v for k, v in base.generator_state.items() if k != "0.bias"}, "gen")
    path = half / "generator.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.ArtifactHashMismatch):
        ckpt.load_base(half)
    with pytest.raises(ckpt.ArtifactError, match="weights_dtype 'float64'"):
        ckpt.save_base(tmp_path / "f64", generator.state_dict(), None, BASE_CONFIG, weights_dtype="float64")


def test_convert_base_dtype_keeps_adapters_of_the_source_base(base_dir, tmp_path):
    directory, generator, _ = base_dir
    source = ckpt.load_base(directory)
    half_dir = ckpt.convert_base_dtype(directory, tmp_path / "half", "float16")
    half = ckpt.load_base(half_dir, with_discriminator=True)
    assert half.sha256 != source.sha256 and half.config["weights_dtype"] == "float16"
    assert half.config["converted_from"][0]["generator_sha256"] == source.sha256
    assert {k: v for k, v in half.config.items() if k not in ("weights_dtype", "generator_sha256", "created",
                                                             "converted_from")} == \
        {k: v for k, v in source.config.items() if k not in ("weights_dtype", "generator_sha256", "created")}
    for key, value in source.generator_state.items():
        assert torch.equal(half.generator_state[key], value.half().float())
    # back to float32: a second link in the chain; adapters of either earlier base are accepted
    again = ckpt.load_base(ckpt.convert_base_dtype(half_dir, tmp_path / "again", "float32"))
    assert ckpt.base_lineage(again) == [again.sha256, half.sha256, source.sha256]
    adapter_dir = ckpt.save_adapter(tmp_path / "singers" / "alice", {"w": torch.zeros(2)},
                                    {"method": "lora", "base_sha256": source.sha256, "base_name": "base"})
    adapter = ckpt.load_adapter(adapter_dir)
    ckpt.check_adapter_base(adapter, half)
    ckpt.check_adapter_base(adapter, again)
    unrelated = ckpt.load_base(ckpt.save_base(tmp_path / "unrelated", tiny_generator().state_dict(), None,
                                              BASE_CONFIG))
    with pytest.raises(ckpt.AdapterBaseMismatch):
        ckpt.check_adapter_base(adapter, unrelated)
    with pytest.raises(ckpt.ArtifactError, match="another destination"):
        ckpt.convert_base_dtype(directory, directory, "float16")


def test_tampered_generator_is_refused_naming_the_file(base_dir):
    directory, _, _ = base_dir
    path = directory / "generator.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last weight
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.ArtifactHashMismatch) as info:
        ckpt.load_base(directory)
    assert "generator.safetensors" in str(info.value) and "sha256" in str(info.value)


def test_missing_files_and_unknown_format_are_clear(base_dir, tmp_path):
    with pytest.raises(ckpt.ArtifactMissing) as info:
        ckpt.load_base(tmp_path / "nowhere")
    assert "mode=pretrain" in str(info.value)

    directory, _, _ = base_dir
    (directory / "discriminator.safetensors").unlink()
    ckpt.load_base(directory)  # inference does not need the discriminator
    with pytest.raises(ckpt.ArtifactMissing) as info:
        ckpt.load_base(directory, with_discriminator=True)
    assert "discriminator.safetensors" in str(info.value) and "python -m ai_singer.train" in str(info.value)

    config = yaml.safe_load((directory / "config.yaml").read_text())
    config["format_version"] = 99
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ckpt.UnsupportedFormatVersion) as info:
        ckpt.load_base(directory)
    assert "99" in str(info.value) and "config.yaml" in str(info.value)


def test_strict_loading_lists_missing_unexpected_and_shape_mismatch():
    module = tiny_generator()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    del state["0.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["2.weight"] = torch.zeros(1, 8, 3)
    with pytest.raises(ckpt.StateDictMismatch) as info:
        ckpt.load_state_strict(module, state, "pretrain/base/generator.safetensors")
    message = str(info.value)
    assert "pretrain/base/generator.safetensors" in message
    assert "missing (1)" in message and "0.bias" in message
    assert "unexpected (1)" in message and "extra.weight" in message
    assert "2.weight: (1, 8, 3) vs (1, 8, 1)" in message


def test_adapter_round_trip_and_base_mismatch(base_dir, tmp_path):
    directory, _, _ = base_dir
    base = ckpt.load_base(directory)
    tensors = {"decoder.conv.lora_A.default.weight": torch.randn(2, 8, 3), "singer_embedding": torch.randn(4)}
    config = {"singer": "carol", "method": "lora", "peft": {"method": "lora", "r": 2}, "base_sha256": base.sha256,
              "base_name": base.name, "stats": {"f0_median_hz": 220.0}}
    adapter_dir = ckpt.save_adapter(tmp_path / "singers" / "carol", tensors, config)
    adapter = ckpt.load_adapter(adapter_dir)
    assert adapter.singer == "carol" and adapter.method == "lora" and adapter.config["kind"] == "adapter"
    assert adapter.config["stats"]["f0_median_hz"] == 220.0 and adapter.config["format_version"] == 1
    assert all(torch.equal(adapter.tensors[k], v) for k, v in tensors.items())
    ckpt.check_adapter_base(adapter, base)  # same base: fine

    other_dir = ckpt.save_base(tmp_path / "pretrain" / "other", tiny_generator().state_dict(), None, BASE_CONFIG)
    other = ckpt.load_base(other_dir)
    with pytest.raises(ckpt.AdapterBaseMismatch) as info:
        ckpt.check_adapter_base(adapter, other)
    message = str(info.value)
    assert base.sha256 in message and other.sha256 in message and str(other_dir) in message

    with pytest.raises(ckpt.ArtifactMissing) as info:
        ckpt.load_adapter(tmp_path / "singers" / "nobody")
    assert "mode=finetune" in str(info.value)
    with pytest.raises(ValueError, match="base_sha256"):
        ckpt.save_adapter(tmp_path / "bad", tensors, {"method": "lora"})


def _export_killed_at(step: int, exchange: bool, folder, tensors, config, index) -> int:
    """``save_adapter`` in a forked child that dies (``os._exit``: no cleanup, like ``kill -9``) just before
    its ``step``-th rename, replace, folder swap or folder removal; the child's exit code (0: the export
    finished first, 9: killed)."""
    import os
    import shutil

    import ai_singer.atomic as atomic

    pid = os.fork()
    if pid == 0:
        try:
            calls = [0]

            def dying(real):
                def call(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == step:
                        os._exit(9)
                    return real(*args, **kwargs)
                return call

            os.rename, os.replace, shutil.rmtree = dying(os.rename), dying(os.replace), dying(shutil.rmtree)
            atomic._exchange = dying(atomic._exchange if exchange else lambda a, b: False)
            ckpt.save_adapter(folder, tensors, config, retrieval_index=index)
        except BaseException:  # noqa: BLE001 - any other ending is a failure of the test
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.parametrize("exchange", [True, False], ids=["one-swap", "two-renames"])
def test_an_export_killed_at_any_step_leaves_the_whole_old_or_the_whole_new_adapter(base_dir, tmp_path, exchange):
    """An adapter folder (tensors, yaml, retrieval index, and a file of the user's) re-exported, with the
    writer killed before each of its renames in turn: loading finds the complete old adapter or the complete
    new one (never a mix; a folder set aside by a swap killed half-way is put back), and the next export
    removes every leftover."""
    directory, _, _ = base_dir
    base = ckpt.load_base(directory)
    config = {"singer": "carol", "method": "lora", "base_sha256": base.sha256}
    old_tensors, new_tensors = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    singers = tmp_path / "singers"
    seen, step = set(), 0
    while True:
        step += 1
        if singers.exists():
            import shutil

            shutil.rmtree(singers)
        folder = ckpt.save_adapter(singers / "carol", old_tensors, config, retrieval_index=torch.ones(2, 4))
        (folder / "notes.txt").write_text("mine")
        code = _export_killed_at(step, exchange, folder, new_tensors, config, None)
        assert code in (0, 9), f"step {step}: the export failed with exit code {code}"
        if not folder.exists():
            seen.add("set aside")  # killed between the two renames: the old folder waits beside it
        adapter = ckpt.load_adapter(folder)
        files = sorted(p.name for p in folder.iterdir())
        if torch.equal(adapter.tensors["w"], old_tensors["w"]):
            seen.add("old")
            assert files == ["adapter.safetensors", "adapter.yaml", "notes.txt", "retrieval.safetensors"]
            assert adapter.config["retrieval_index"]["sha256"] == ckpt.sha256_file(folder / "retrieval.safetensors")
        else:
            seen.add("new")
            assert torch.equal(adapter.tensors["w"], new_tensors["w"])
            assert files == ["adapter.safetensors", "adapter.yaml", "notes.txt"]  # the stale index went
            assert adapter.config.get("retrieval_index") is None
        ckpt.save_adapter(folder, new_tensors, config)  # the next export cleans up after the killed one
        assert sorted(p.name for p in singers.iterdir()) == ["carol"], f"step {step}: leftovers"
        assert torch.equal(ckpt.load_adapter(folder).tensors["w"], new_tensors["w"])
        if code == 0:
            break
    assert step > 4 and {"old", "new"} <= seen
    assert ("set aside" in seen) == (not exchange)


def test_an_adapter_changed_after_export_is_refused(base_dir, tmp_path):
    """adapter.yaml records the tensors' sha256: tensors swapped or damaged after the export are refused."""
    directory, _, _ = base_dir
    config = {"singer": "carol", "method": "lora", "base_sha256": ckpt.load_base(directory).sha256}
    folder = ckpt.save_adapter(tmp_path / "carol", {"w": torch.zeros(3)}, config)
    other = ckpt.save_adapter(tmp_path / "other", {"w": torch.ones(3)}, config)
    (other / ckpt.ADAPTER_TENSORS_FILE).replace(folder / ckpt.ADAPTER_TENSORS_FILE)
    with pytest.raises(ckpt.ArtifactHashMismatch, match="changed or damaged after the export"):
        ckpt.load_adapter(folder)


def test_a_base_export_is_swapped_in_whole(base_dir, monkeypatch):
    """save_base writes the folder whole and swaps it in: an export that fails half-way leaves the old base."""
    directory, generator, _ = base_dir
    before = ckpt.load_base(directory).sha256

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for the kill, after the weights and before config.yaml

    monkeypatch.setattr(ckpt, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_base(directory, {k: v + 1 for k, v in generator.state_dict().items()}, None, BASE_CONFIG)
    monkeypatch.undo()
    assert ckpt.load_base(directory, with_discriminator=True).sha256 == before
    assert sorted(p.name for p in directory.parent.iterdir()) == ["base"]


def test_train_state_keeps_last_k_and_loads_weights_only(tmp_path):
    run = tmp_path / "runs" / "carol"
    assert ckpt.load_latest_train_state(run) is None
    model = tiny_generator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.999)
    model(torch.randn(1, 4, 8)).sum().backward()
    optimizer.step()
    schedule.step()
    for step in (200, 400, 600, 800):
        state = {"weights": {"w": torch.full((3,), float(step))}, "step": step, "note": "x", "lrs": [1e-4, 2e-4],
                 "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "rng": ckpt.capture_rng_state()}
        path = ckpt.save_train_state(run, step, state, keep_last=2)
        assert path.name == f"step_{step:08d}.pt"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_00000600.pt", "step_00000800.pt"]
    step, state = ckpt.load_latest_train_state(run)
    assert step == 800 and torch.equal(state["weights"]["w"], torch.full((3,), 800.0)) and state["lrs"] == [1e-4, 2e-4]
    resumed = torch.optim.AdamW(model.parameters(), lr=1e-3)
    resumed.load_state_dict(state["optimizer"])
    assert torch.equal(resumed.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert ckpt.prune_checkpoints(run, 1) == [run / "checkpoints" / "step_00000600.pt"]


def test_corrupt_newest_train_state_is_skipped_with_a_warning(tmp_path):
    run = tmp_path / "run"
    ckpt.save_train_state(run, 2, {"x": torch.tensor(2.0)}, keep_last=3)
    newest = ckpt.save_train_state(run, 4, {"x": torch.tensor(4.0)}, keep_last=3)
    newest.write_bytes(newest.read_bytes()[:50])  # a torn write
    with pytest.warns(ckpt.CorruptCheckpointWarning, match="step_00000004.pt"):
        step, state = ckpt.load_latest_train_state(run)
    assert step == 2 and state["x"].item() == 2.0
    # an atomic-write leftover is never mistaken for a checkpoint
    (run / "checkpoints" / ".step_00000006.abc.tmp.pt").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ckpt.CorruptCheckpointWarning)
        assert ckpt.load_latest_train_state(run)[0] == 2


def test_train_state_refuses_what_weights_only_cannot_load(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TypeError, match=r"state\['optimizer'\]\['extra'\].*numpy"):
        ckpt.save_train_state(run, 1, {"optimizer": {"extra": np.zeros(2)}})
    assert ckpt.load_latest_train_state(run) is None
    # a file holding a pickled object (written by other code) is skipped, never executed
    ckpt.save_train_state(run, 1, {"ok": torch.tensor(1.0)})
    torch.save({"format_version": 1, "step": 3, "state": {"obj": np.zeros(2)}}, ckpt.checkpoint_path(run, 3))
    with pytest.warns(ckpt.CorruptCheckpointWarning, match="step_00000003.pt"):
        assert ckpt.load_latest_train_state(run)[0] == 1


def test_rng_restore_reproduces_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # and in NumPy's
    state = ckpt.capture_rng_state()
    ckpt.save_train_state(tmp_path, 10, {"rng": state})

    def draws():
        return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
                torch.rand(3).tolist())

    first = draws()
    _, loaded = ckpt.load_latest_train_state(tmp_path)  # weights_only=True
    ckpt.restore_rng_state(loaded["rng"])
    assert draws() == first


def test_convert_base_tool(base_dir, tmp_path, capsys):
    """tools/convert_base.py SRC DST --dtype float16 (tools import ai_singer, never the reverse)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "convert_base.py"
    spec = importlib.util.spec_from_file_location("convert_base_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    directory, _, _ = base_dir
    assert tool.main([str(directory), str(tmp_path / "b16"), "--dtype", "float16"]) == 0
    assert ckpt.load_base(tmp_path / "b16").config["weights_dtype"] == "float16"
    assert tool.main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "no base artifact folder" in capsys.readouterr().err
