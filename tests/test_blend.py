"""Blending singers: a weighted blend of adapters is exactly the weighted mean of the parents' merged weights
(LoRA: the sum of weighted B·A products, not of A and B), weights 1,0 give the parent, a blend's output lies
between its parents', and what cannot be blended exactly is one clear error."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_adapters import plain_toy, settings, toy, toy_inputs, train_a_little

from ai_singer import checkpoint as ckpt
from ai_singer.adapters import adapter_state_dict, load_adapter_state, merge_adapters, prepare_for_finetune
from ai_singer.blend import BlendError, blend_adapters
from ai_singer.cli import main as cli_main
from ai_singer.errors import UserError
from ai_singer.singer_spec import parse_singer_spec

BASE_SHA = "b" * 64


def trained(method: str, seed: int, folder: Path, base_sha256: str = BASE_SHA, steps: int = 3,
            **overrides) -> ckpt.AdapterArtifact:
    """A toy adapter of ``method`` trained a few steps (Adam from seed ``seed``), saved in ``folder``."""
    model = toy()
    torch.manual_seed(seed)  # after toy(), which seeds its own weights: the parents' LoRA A differ
    peft = settings(method, **overrides)
    trainable = prepare_for_finetune(model, peft)
    with torch.no_grad():  # different starting points, so the parents differ
        for name in trainable:
            if ".lora_A." not in name:
                model.get_parameter(name).add_(0.05 * torch.randn(model.get_parameter(name).shape))
    train_a_little(model, trainable, steps=steps)
    tensors = {**adapter_state_dict(model), "singer_embedding": torch.randn(8)}
    ckpt.save_adapter(folder, tensors, {"singer": folder.name, "method": method, "peft": peft,
                                        "base_sha256": base_sha256, "base_name": "toy",
                                        "stats": {"f0_median_hz": 100.0 * (seed + 1)}})
    return ckpt.load_adapter(folder)


def merged_weights(adapter: ckpt.AdapterArtifact) -> dict[str, torch.Tensor]:
    model = toy()
    load_adapter_state(model, adapter.config["peft"], adapter.tensors)
    merge_adapters(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def output(adapter: ckpt.AdapterArtifact) -> torch.Tensor:
    model = toy()
    load_adapter_state(model, adapter.config["peft"], adapter.tensors)
    x, ids = toy_inputs()
    with torch.no_grad():
        return model(x, ids)


@pytest.fixture(scope="module")
def lora_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("singers")
    alice = trained("lora", 1, root / "alice")
    bob = trained("lora", 2, root / "bob", r=2, alpha=6.0)  # another rank and scaling
    return root, alice, bob


def test_weights_1_0_give_the_parent(lora_pair):
    _, alice, bob = lora_pair
    blend = blend_adapters([alice, bob], [1.0, 0.0], ["alice", "bob"])
    assert torch.allclose(output(blend), output(alice), atol=1e-6)
    assert torch.equal(blend.tensors["singer_embedding"], alice.tensors["singer_embedding"])
    assert blend.config["stats"]["f0_median_hz"] == pytest.approx(200.0)


@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit", "full", "diff", "qlora"])
def test_a_blend_is_the_weighted_mean_of_the_parents_merged_weights(method, tmp_path):
    overrides = {"bias": "all"} if method == "lora" else {}
    alice = trained(method, 1, tmp_path / "alice", **overrides)
    bob = trained(method, 2, tmp_path / "bob", **overrides)
    blend = blend_adapters([alice, bob], [0.75, 0.25], ["alice", "bob"])
    assert blend.method == method and blend.base_sha256 == BASE_SHA
    a, b, mixed = merged_weights(alice), merged_weights(bob), merged_weights(blend)
    for key in a:
        assert torch.allclose(mixed[key], 0.75 * a[key] + 0.25 * b[key], atol=1e-6), key
    expected_g = 0.75 * alice.tensors["singer_embedding"] + 0.25 * bob.tensors["singer_embedding"]
    assert torch.allclose(blend.tensors["singer_embedding"], expected_g)
    if method == "diff":  # the union of the parents' supports, still stored sparsely
        assert blend.config["peft"]["diff_density"] >= alice.config["peft"]["diff_density"]
        assert blend.tensors["pre.parametrizations.weight.0.delta.indices"].dtype == torch.int32
    if method == "lora":  # rank r_a + r_b: the stacked factors, not the mean of A times the mean of B
        assert blend.config["peft"]["r"] == 8
        naive = {k: 0.75 * alice.tensors[k] + 0.25 * bob.tensors[k] for k in alice.tensors}
        naive_merged = merged_weights(ckpt.AdapterArtifact(alice.path, alice.config, naive))
        assert not torch.allclose(naive_merged["pre.weight"], mixed["pre.weight"], atol=1e-4)


def test_a_blend_lies_between_its_parents(lora_pair):
    _, alice, bob = lora_pair
    out_a, out_b = output(alice), output(bob)
    gap = (out_a - out_b).norm()
    to_alice, to_bob = [], []
    for w in (0.8, 0.5, 0.2):
        out = output(blend_adapters([alice, bob], [w, 1 - w], ["alice", "bob"]))
        to_alice.append(float((out - out_a).norm() / gap))
        to_bob.append(float((out - out_b).norm() / gap))
    assert to_alice == sorted(to_alice) and to_bob == sorted(to_bob, reverse=True)  # moves from alice to bob
    assert all(d < 1.0 for d in to_alice + to_bob)  # nearer each parent than the other parent is


def test_what_cannot_be_blended_exactly_is_a_clear_error(lora_pair, tmp_path):
    _, alice, bob = lora_pair
    dora = [trained("dora", s, tmp_path / f"d{s}") for s in (1, 2)]
    with pytest.raises(BlendError, match="method 'dora' cannot be blended exactly"):
        blend_adapters(dora, [0.5, 0.5])
    bottlenecks = [trained("adapter", s, tmp_path / f"a{s}", target_modules=["pre"]) for s in (1, 2)]
    with pytest.raises(BlendError, match="method 'adapter' cannot be blended exactly: bottleneck adapters are non-linear"):
        blend_adapters(bottlenecks, [0.5, 0.5])
    ia3 = trained("ia3", 3, tmp_path / "carol")
    with pytest.raises(BlendError, match="different PEFT methods"):
        blend_adapters([alice, ia3], [0.5, 0.5], ["alice", "carol"])
    elsewhere = trained("lora", 4, tmp_path / "dave", base_sha256="c" * 64)
    with pytest.raises(BlendError, match="different bases"):
        blend_adapters([alice, elsewhere], [0.5, 0.5], ["alice", "dave"])
    fewer = trained("lora", 5, tmp_path / "erin", target_modules=["pre", "post"])
    with pytest.raises(BlendError, match="adapt different parts"):
        blend_adapters([alice, fewer], [0.5, 0.5], ["alice", "erin"])


@pytest.mark.parametrize("spec, message", [
    ("alice:0", "every weight must be a number above 0"),
    ("alice:-0.5,bob:1.5", "every weight must be a number above 0"),
    ("alice:x,bob:1", "'x', is not a number"),
    ("alice:0.5,bob", "'bob' has no weight"),
    ("alice:0.5,alice:0.5", "named twice"),
    ("../alice:1,bob:1", "a singer is named by its folder name"),
])
def test_bad_blend_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_singer_spec(spec)


def test_spec_weights_are_normalised():
    spec = parse_singer_spec("alice:3,bob:1")
    assert spec.names == ("alice", "bob") and spec.weights == (0.75, 0.25) and spec.is_blend
    assert parse_singer_spec("alice").names == ("alice",) and not parse_singer_spec("alice:2").is_blend


def test_blend_command_saves_a_self_describing_adapter(lora_pair, tmp_path, capsys):
    root, alice, bob = lora_pair
    assert cli_main(["blend", "alice:0.6,bob:0.4", "out=mix", "--singers-dir", str(root)]) == 0
    saved = ckpt.load_adapter(root / "mix")
    assert saved.config["singer"] == "mix" and saved.method == "lora" and saved.base_sha256 == BASE_SHA
    parents = saved.config["blend"]["parents"]
    assert [(p["singer"], p["weight"]) for p in parents] == [("alice", 0.6), ("bob", 0.4)]
    assert parents[0]["adapter_sha256"] == ckpt.sha256_file(root / "alice" / ckpt.ADAPTER_TENSORS_FILE)
    in_memory = blend_adapters([alice, bob], [0.6, 0.4], ["alice", "bob"])
    assert torch.allclose(output(saved), output(in_memory), atol=1e-6)
    capsys.readouterr()
    assert cli_main(["singers", "--singers-dir", str(root), "--pretrain-dir", str(tmp_path)]) == 0
    assert "mix (singer mix)" not in (listing := capsys.readouterr().out) and "blend of alice:0.6,bob:0.4" in listing

    assert cli_main(["blend", "alice:0.6,bob:0.4", "out=mix", "--singers-dir", str(root)]) == 2
    assert "already holds an adapter" in capsys.readouterr().err
    assert cli_main(["blend", "alice:0.6,nobody:0.4", "out=mix2", "--singers-dir", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown singer" in err and not (root / "mix2").exists()
    assert cli_main(["blend", "alice:0,bob:1", "out=mix3", "--singers-dir", str(root)]) == 2
    assert "above 0" in capsys.readouterr().err


def test_blend_on_the_plain_base_changes_nothing_when_parents_are_fresh(tmp_path):
    """Fresh (untrained) LoRA parents blend into a fresh adapter: the base's output exactly."""
    parents = []
    for name in ("p", "q"):
        model = toy()
        peft = settings("lora")
        prepare_for_finetune(model, peft)
        tensors = {**adapter_state_dict(model), "singer_embedding": torch.zeros(8)}
        ckpt.save_adapter(tmp_path / name, tensors, {"method": "lora", "peft": peft, "base_sha256": BASE_SHA})
        parents.append(ckpt.load_adapter(tmp_path / name))
    x, ids = toy_inputs()
    with torch.no_grad():
        assert torch.equal(output(blend_adapters(parents, [0.3, 0.7])), plain_toy().requires_grad_(False)(x, ids))
