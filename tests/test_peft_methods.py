"""The PEFT methods beyond LoRA/IA3/BitFit on the tiny SingerVAE: bottleneck adapters, prefix and prompt
tuning, diff pruning and QLoRA keep the adapter contract (fresh = base, only the adapter trains, save -> load
round trip, merged = unmerged where mergeable), prefixes keep relative positions correct, diff pruning stays
sparse and is saved sparsely, and the int8 base holds a quarter of the bytes."""
from __future__ import annotations

import math

import pytest
import torch

from test_adapters import conf_peft, tiny_singer_vae, vae_infer

from ai_singer import checkpoint as ckpt
from ai_singer import int8
from ai_singer.adapters import (UNMERGEABLE_METHODS, adapter_state_dict, load_adapter_state, merge_adapters,
                                prepare_for_finetune)
from ai_singer.catalog import format_catalog, list_adapters
from ai_singer.diff_pruning import SparseDiff, topk_mask
from ai_singer.model.attention import RelativeMultiHeadAttention
from ai_singer.prefix import MemoryAttention

NEW_METHODS = ["adapter", "prefix", "prompt", "diff", "qlora"]
#: which parts of the SingerVAE each method adapts with conf/peft's targets
PARTS = {"adapter": {"prior_encoder", "decoder"}, "prefix": {"prior_encoder"}, "prompt": {"prior_encoder"},
         "diff": {"prior_encoder", "flow", "decoder"}, "qlora": {"prior_encoder", "flow", "decoder"}}


def reference_model(method: str):
    """The plain base the fresh adapter must reproduce: for qlora, the base as it holds it (int8)."""
    model = tiny_singer_vae()
    model.remove_weight_norm()
    if method == "qlora":
        int8.quantize(model)
    return model.requires_grad_(False)  # frozen like the base (CPU kernels differ with autograd otherwise)


def prior_mean(model) -> torch.Tensor:
    """The prior encoder's mean ``[1, I, 6]`` for fixed inputs."""
    inputs = torch.Generator().manual_seed(5)
    content = torch.randn(1, 16, 6, generator=inputs)
    with torch.no_grad():
        return model.prior_encoder(content, torch.full((1, 6), 220.0), torch.ones(1, 6), torch.full((1, 6), 0.05),
                                   torch.ones(1, 1, 6))[0]


def perturb(model, trainable: list[str], scale: float = 0.05) -> None:
    with torch.no_grad():
        for name in trainable:
            parameter = model.get_parameter(name)
            parameter.add_(scale * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("method", NEW_METHODS)
def test_new_methods_keep_the_adapter_contract(method, tmp_path):
    torch.set_num_threads(1)
    base_state = {k: v.clone() for k, v in tiny_singer_vae().state_dict().items()}
    g = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
    reference = vae_infer(reference_model(method), g)

    model = tiny_singer_vae()
    peft = conf_peft(method)
    trainable = prepare_for_finetune(model, peft)
    assert torch.equal(vae_infer(model, g), reference)  # fresh adapter: exactly the base
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
    assert {name.split(".")[0] for name in trainable} == PARTS[method]
    n_adapter = sum(model.get_parameter(n).numel() for n in trainable)
    n_base = sum(v.numel() for v in base_state.values())
    assert 0 < n_adapter < (1.0 if method == "diff" else 0.2) * n_base  # diff's delta is dense while training

    model.train()  # gradients reach every adapter tensor and nothing else
    torch.manual_seed(0)
    perturb(model, trainable)
    content, f0 = torch.randn(1, 16, 6), torch.full((1, 6), 220.0)
    out = model.infer(content, f0, torch.ones(1, 6), torch.full((1, 6), 0.05), g, noise_scale=0.0)
    out.pow(2).mean().backward()
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    model.eval()
    adapted = vae_infer(model, g)
    prior = prior_mean(model)  # (the tiny random decoder barely hears its latent: look before it too)
    prior_reference = prior_mean(reference_model(method))
    assert max((adapted - reference).norm() / reference.norm(), (prior - prior_reference).norm() /
               prior_reference.norm()) > 1e-3  # the adapter does something

    tensors = adapter_state_dict(model)
    base_dir = ckpt.save_base(tmp_path / "base", base_state, None, {"model": {}})
    base = ckpt.load_base(base_dir)
    ckpt.save_adapter(tmp_path / "carol", {**tensors, "singer_embedding": g[0]},
                      {"singer": "carol", "method": method, "peft": peft, "base_sha256": base.sha256})
    adapter = ckpt.load_adapter(tmp_path / "carol")
    ckpt.check_adapter_base(adapter, base)
    assert adapter.method == method and adapter.config["peft"]["method"] == method
    fresh = tiny_singer_vae(seed=9)
    fresh.load_state_dict(base_state)
    load_adapter_state(fresh, adapter.config["peft"], adapter.tensors)
    assert torch.equal(vae_infer(fresh, g), adapted)
    merge_adapters(fresh)
    assert torch.allclose(vae_infer(fresh, g), adapted, atol=1e-5)
    plain = reference_model("lora")
    if method not in UNMERGEABLE_METHODS:  # the base's own structure again
        assert set(fresh.state_dict()) == set(plain.state_dict())
        assert all(type(a) is type(b) for a, b in zip(fresh.modules(), plain.modules()))
    listing = format_catalog([], list_adapters(tmp_path), tmp_path, tmp_path)
    assert f"carol: {method}, " in listing  # `ai-singer singers` lists it with its method


def test_prefix_keeps_relative_positions_and_the_base_attention():
    """The memory has its own softmax: the base's relative-position attention over the real frames is
    untouched, and padding frames in front (masked) change nothing at the real frames, as for the base."""
    torch.manual_seed(0)
    attention = RelativeMultiHeadAttention(16, 2, window_size=2).eval()
    layer = MemoryAttention(attention, length=3).eval()
    with torch.no_grad():
        layer.prefix_gate.fill_(0.7)
    x, mask = torch.randn(1, 16, 9), torch.ones(1, 1, 9)
    pad = 4
    x_padded = torch.cat([torch.randn(1, 16, pad), x], dim=-1)
    mask_padded = torch.cat([torch.zeros(1, 1, pad), mask], dim=-1)
    with torch.no_grad():
        y, y_padded = layer(x, mask), layer(x_padded, mask_padded)[..., pad:]
        base, base_padded = attention(x, mask), attention(x_padded, mask_padded)[..., pad:]
        assert torch.allclose(y, y_padded, atol=1e-5) and torch.allclose(base, base_padded, atol=1e-5)
        # the memory term at a frame depends on that frame alone: reversing the frames reverses it
        term = y - base
        flipped = layer(x.flip(-1), mask) - attention(x.flip(-1), mask)
        assert torch.allclose(term.flip(-1), flipped, atol=1e-5)
        assert term.abs().max() > 1e-3  # and it does something


def test_diff_pruning_is_sparse_saved_sparsely_and_straight_through():
    torch.set_num_threads(1)
    model = tiny_singer_vae()
    peft = conf_peft("diff", diff_density=0.05)
    trainable = prepare_for_finetune(model, peft)
    perturb(model, trainable)  # every entry of every delta moves
    tensors = adapter_state_dict(model)
    deltas = [n for n in trainable if n.endswith(".delta")]
    assert deltas and all(tensors[n + ".indices"].dtype == torch.int32 for n in deltas)
    for name in deltas:
        numel = model.get_parameter(name).numel()
        assert tensors[name + ".values"].numel() <= math.ceil(0.05 * numel)
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    dense = sum(model.get_parameter(n).numel() * 4 for n in deltas)
    assert stored < 0.15 * dense
    diff = SparseDiff(torch.zeros(4, 5), density=0.1)
    with torch.no_grad():
        diff.delta.copy_(torch.arange(20.0).view(4, 5) - 10)
    assert torch.count_nonzero(diff.sparse_delta()) == 2 and torch.equal(topk_mask(diff.delta, 0.1).sum(), torch.tensor(2))
    diff(torch.zeros(4, 5)).sum().backward()
    assert torch.equal(diff.delta.grad, torch.ones(4, 5))  # straight-through: every entry may grow into the top-k


def test_qlora_holds_the_frozen_base_in_a_quarter_of_the_bytes():
    torch.set_num_threads(1)
    g = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
    plain = reference_model("lora")
    before = int8.weight_bytes(plain)
    model = tiny_singer_vae()
    prepare_for_finetune(model, conf_peft("qlora"))
    frozen = int8.weight_bytes(model) - sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert frozen < 0.35 * before
    out, float_out = vae_infer(model, g), vae_infer(plain, g)
    assert (out - float_out).norm() < 0.05 * float_out.norm()  # int8 rounding costs little
    merge_adapters(model)
    assert not any(isinstance(m, int8.Int8Weight) for m in model.modules())
    assert torch.allclose(vae_infer(model, g), out, atol=1e-5)
