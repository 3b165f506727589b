"""PEFT on a frozen base: fresh adapters reproduce the base, only adapters train, merge is exact,
adapters round-trip through the artifact files, each method trains what it says, configs agree."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from ai_singer import checkpoint as ckpt
from ai_singer import int8
from ai_singer.adapters import (PEFT_METHODS, IA3Conv1d, LoraConvTranspose1d, PeftSettings, adapter_state_dict,
                                load_adapter_state, merge_adapters, prepare_for_finetune,
                                remove_weight_norm_everywhere)
from ai_singer.config import conf_file, conf_group

CONF_PEFT = Path(__file__).resolve().parent.parent / "conf" / "peft"
TOY_TARGETS = ["pre", r"blocks\.\d+", "up", "proj", "post"]
#: prefix/prompt adapt attention, which the toy lacks: tests/test_peft_methods.py runs them on the SingerVAE
TOY_METHODS = [m for m in PEFT_METHODS if m not in ("prefix", "prompt")]


class ToyGenerator(nn.Module):
    """Weight-normed Conv1d (one dilated), ConvTranspose1d, Linear and Embedding, like the decoder.
    ``forward(x [B, 4, T], ids [B]) -> [B, 1, 2T]``."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(3, 8)
        self.pre = weight_norm(nn.Conv1d(4, 8, 3, padding=1))
        self.blocks = nn.ModuleList([weight_norm(nn.Conv1d(8, 8, 3, padding=d, dilation=d)) for d in (1, 2, 3)])
        self.up = weight_norm(nn.ConvTranspose1d(8, 8, 4, stride=2, padding=1))
        self.proj = nn.Linear(8, 8)
        self.post = weight_norm(nn.Conv1d(8, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = self.pre(x) + self.embed(ids).unsqueeze(-1)
        for block in self.blocks:
            h = h + block(torch.tanh(h))
        h = self.up(h)
        h = self.proj(h.transpose(1, 2)).transpose(1, 2)
        return self.post(torch.tanh(h))

    def remove_weight_norm(self) -> None:
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight")


def toy(seed: int = 0) -> ToyGenerator:
    """Same seed → same weights. (Never deepcopy a weight-normed model and then remove weight norm:
    torch's parametrized class is shared by the copies, so removing it from one breaks the other.)"""
    torch.manual_seed(seed)
    return ToyGenerator().eval()


def toy_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 12, generator=generator), torch.tensor([0, 2])


def conf_peft(option: str, **changes) -> PeftSettings:
    """The settings of conf/peft/<option>.yaml with ``changes``."""
    return PeftSettings(**{**conf_group("peft", option), **changes})


def settings(method: str, **overrides) -> PeftSettings:
    targets = ["pre", r"blocks\.\d+", "post"] if method == "adapter" else TOY_TARGETS  # blocks with [B, C, T] out
    values = dict(method=method, r=4, alpha=8.0, target_modules=targets, freeze_blocks=[r"blocks\.\d+"],
                  freeze_last_n=1, diff_density=0.1)
    return conf_peft(method, **{**values, **overrides})


def plain_toy(seed: int = 0) -> ToyGenerator:
    model = toy(seed)
    model.remove_weight_norm()
    return model


def train_a_little(model: nn.Module, trainable: list[str], steps: int = 3) -> None:
    params = [model.get_parameter(name) for name in trainable]
    optimiser = torch.optim.Adam(params, lr=0.05)
    x, ids = toy_inputs()
    target = torch.randn(2, 1, 24, generator=torch.Generator().manual_seed(2))
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = (model(x, ids) - target).pow(2).mean()
        loss.backward()
        optimiser.step()
    model.eval()


def test_peft_settings_come_from_the_conf_peft_files_only():
    from omegaconf import OmegaConf

    found = sorted(p.stem for p in CONF_PEFT.glob("*.yaml"))
    assert found == sorted(PEFT_METHODS)
    with pytest.raises(TypeError):
        PeftSettings(method="lora")  # no defaults of its own: conf/peft/<method>.yaml gives every value
    for method in PEFT_METHODS:
        values = yaml.safe_load((CONF_PEFT / f"{method}.yaml").read_text())
        assert values["method"] == method
        merged = OmegaConf.merge(OmegaConf.structured(PeftSettings), values)  # typos / wrong types fail here
        assert OmegaConf.to_object(merged) == PeftSettings(**values) == conf_peft(method)
    with pytest.raises(ValueError, match="peft.method"):
        conf_peft("lora", method="lokr")


def test_fresh_lora_reproduces_the_base_exactly():
    x, ids = toy_inputs()
    weight_normed = toy()
    reference = plain_toy().requires_grad_(False)  # frozen like the base (CPU linear kernels differ otherwise)
    model = toy()
    trainable = prepare_for_finetune(model, settings("lora"))
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # weight norm removed first
    with torch.no_grad():
        assert torch.equal(model(x, ids), reference(x, ids))  # B = 0: exactly the (plain) base
        assert torch.allclose(model(x, ids), weight_normed(x, ids), atol=1e-6)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable}
    assert adapted == {"pre", "blocks.0", "blocks.1", "blocks.2", "up", "proj", "post"}
    assert isinstance(model.up, LoraConvTranspose1d)  # peft has no ConvTranspose1d LoRA: ours
    # peft builds lora_A without dilation; the adapter path must follow the dilated base conv
    assert model.blocks[2].lora_A["default"].dilation == (3,)


def test_training_changes_only_the_adapter():
    model = toy()
    trainable = prepare_for_finetune(model, settings("lora"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_a_little(model, trainable)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(trainable)
    assert any(".lora_B." in k for k in changed)
    frozen = [k for k in before if k not in set(trainable)]
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # base tensors bit-identical
    assert all(not model.get_parameter(k).requires_grad for k in frozen if k in dict(model.named_parameters()))


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "diff", "qlora"])
def test_merged_equals_unmerged_and_model_is_plain_again(method):
    x, ids = toy_inputs()
    model = toy()
    trainable = prepare_for_finetune(model, settings(method, dropout=0.1 if method == "lora" else 0.0))
    train_a_little(model, trainable)
    with torch.no_grad():
        unmerged = model(x, ids)
        assert not torch.allclose(unmerged, plain_toy()(x, ids), atol=1e-4)  # the adapter does something
    merge_adapters(model)
    with torch.no_grad():
        merged = model(x, ids)
    assert torch.allclose(merged, unmerged, atol=1e-5), (merged - unmerged).abs().max()
    assert not any(isinstance(m, IA3Conv1d) or "lora" in type(m).__module__ or "ia3" in type(m).__module__
                   for m in model.modules())
    assert set(model.state_dict()) == set(plain_toy().state_dict())  # same structure as the plain base
    assert all(type(a) is type(b) for a, b in zip(model.modules(), plain_toy().modules()))


@pytest.mark.parametrize("method", TOY_METHODS)
def test_adapter_save_load_into_a_fresh_base(method, tmp_path):
    x, ids = toy_inputs()
    base_dir = ckpt.save_base(tmp_path / "base", toy().state_dict(), None, {"model": {}})
    base = ckpt.load_base(base_dir)

    model = toy()
    ckpt.load_state_strict(model, base.generator_state)
    peft = settings(method)
    trainable = prepare_for_finetune(model, peft)
    train_a_little(model, trainable, steps=2)
    with torch.no_grad():
        expected = model(x, ids)
    tensors = adapter_state_dict(model)
    if method == "diff":  # stored sparsely: indices, values and shape of each difference
        assert set(tensors) == {f"{n}.{part}" for n in trainable for part in ("indices", "values", "shape")}
    else:
        assert set(tensors) == set(trainable)
    singer = torch.randn(8)
    ckpt.save_adapter(tmp_path / "singer", {**tensors, "singer_embedding": singer},
                      {"singer": "carol", "method": method, "peft": peft, "base_sha256": base.sha256})

    adapter = ckpt.load_adapter(tmp_path / "singer")
    ckpt.check_adapter_base(adapter, ckpt.load_base(base_dir))
    assert torch.equal(adapter.tensors["singer_embedding"], singer)
    fresh = toy(seed=123)  # different random init: everything must come from the files
    ckpt.load_state_strict(fresh, base.generator_state)
    load_adapter_state(fresh, PeftSettings(**adapter.config["peft"]), adapter.tensors)
    with torch.no_grad():
        assert torch.equal(fresh(x, ids), expected)
        merge_adapters(fresh)
        assert torch.allclose(fresh(x, ids), expected, atol=1e-5)


def test_each_method_trains_what_it_says():
    sizes = {}
    for method in TOY_METHODS:
        model = toy()
        trainable = prepare_for_finetune(model, settings(method))
        grads = {n for n, p in model.named_parameters() if p.requires_grad}
        assert grads == set(trainable), method
        sizes[method] = sum(t.numel() for t in adapter_state_dict(model).values())
        if method == "dora":
            assert any("lora_magnitude_vector" in n for n in trainable)
            assert not any(n.startswith("up.") for n in trainable)  # no DoRA for ConvTranspose1d
        if method == "lora":
            assert {"up.lora_A.default.weight", "up.lora_B.default.weight"} <= set(trainable)
        if method == "ia3":
            assert sorted(trainable) == sorted(f"{m}.ia3_l.default" for m in
                                               ["pre", "blocks.0", "blocks.1", "blocks.2", "proj", "post"])
            assert isinstance(model.pre, IA3Conv1d)  # peft has no Conv1d (IA)^3
        if method == "bitfit":
            assert trainable and all(n.endswith(".bias") for n in trainable)
            assert "up.bias" in trainable and "proj.bias" in trainable
        if method == "freeze":
            assert sorted(trainable) == ["blocks.2.bias", "blocks.2.weight"]  # the last block only
        if method == "full":
            assert set(trainable) == {n for n, _ in model.named_parameters()}
        if method == "qlora":  # LoRA's tensors, on int8 layers
            assert set(trainable) == set(lora_names) and isinstance(model.pre.base_layer, int8.Int8Weight)
        if method == "lora":
            lora_names = trainable
        if method == "diff":
            assert sorted(trainable) == sorted(f"{m}.parametrizations.weight.0.delta" for m in
                                               ["pre", "blocks.0", "blocks.1", "blocks.2", "up", "proj", "post"])
        if method == "adapter":
            assert {n.split(".bottleneck")[0] for n in trainable} == {"pre", "blocks.0", "blocks.1", "blocks.2", "post"}
    full = sizes["full"]
    assert sizes["ia3"] < sizes["bitfit"] < full and sizes["lora"] < full and sizes["dora"] < full
    assert sizes["qlora"] == sizes["lora"] and sizes["adapter"] < full


def test_strict_adapter_loading_names_the_problem():
    model = toy()
    trainable = prepare_for_finetune(model, settings("lora"))
    state = adapter_state_dict(model)
    missing = dict(state)
    del missing[trainable[0]]
    with pytest.raises(ValueError, match=r"missing \(1\)"):
        load_adapter_state(toy(), settings("lora"), missing)
    with pytest.raises(ValueError, match=r"unexpected \(1\)[\s\S]*decoder.extra"):
        load_adapter_state(toy(), settings("lora"), {**state, "decoder.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape mismatch"):
        load_adapter_state(toy(), settings("lora", r=2), state)  # trained with r=4
    with pytest.raises(ValueError, match="prepared with lora"):
        load_adapter_state(model, settings("bitfit"), state)
    with pytest.raises(RuntimeError, match="already prepared"):
        prepare_for_finetune(model, settings("lora"))


def test_unmatched_targets_are_an_error_listing_candidates():
    with pytest.raises(ValueError, match=r"match no Conv1d/Linear[\s\S]*blocks\.0"):
        prepare_for_finetune(toy(), settings("lora", target_modules=["nothing_here"]))


def test_generic_weight_norm_removal_without_a_model_method():
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):
        old_style = torch.nn.utils.weight_norm(nn.Conv1d(2, 3, 3, padding=1))
    model = nn.Sequential(weight_norm(nn.Conv1d(4, 2, 3, padding=1)), nn.Tanh(), old_style)
    x = torch.randn(1, 4, 9)
    with torch.no_grad():
        before = model(x)
    assert remove_weight_norm_everywhere(model) == 2
    assert not parametrize.is_parametrized(model[0]) and not hasattr(model[2], "weight_g")
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
    assert remove_weight_norm_everywhere(model) == 0


# ----------------------------------------------------------------------- on the real (tiny) SingerVAE

def tiny_singer_vae(seed: int = 0):
    synthesizer = pytest.importorskip("ai_singer.model.synthesizer")
    values = yaml.safe_load((CONF_PEFT.parent / "model" / "tiny.yaml").read_text())
    values.update(sample_rate=44100, hop_length=512, n_fft=2048, win_length=2048, content_dim=16, n_speakers=2)
    torch.manual_seed(seed)
    return synthesizer.SingerVAE(synthesizer.SingerVAEConfig.from_dict(values)).eval()


def vae_infer(model, g: torch.Tensor) -> torch.Tensor:
    frames = 6
    inputs = torch.Generator().manual_seed(5)
    content = torch.randn(1, 16, frames, generator=inputs)
    f0, voiced, volume = torch.full((1, frames), 220.0), torch.ones(1, frames), torch.full((1, frames), 0.05)
    with torch.no_grad():
        return model.infer(content, f0, voiced, volume, g, noise_scale=conf_file("infer")["noise_scale"],
                           generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_singer_vae_default_targets_adapt_merge_and_round_trip(method):
    torch.set_num_threads(1)
    base_state = {k: v.clone() for k, v in tiny_singer_vae().state_dict().items()}
    reference = tiny_singer_vae()
    reference.remove_weight_norm()
    g = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))

    model = tiny_singer_vae()
    peft = conf_peft(method)  # the conf/peft values
    trainable = prepare_for_finetune(model, peft)
    assert torch.allclose(vae_infer(model, g), vae_infer(reference, g), atol=1e-6)
    parts = {name.split(".")[0] for name in trainable}
    assert parts == {"prior_encoder", "flow", "decoder"}  # every block of the inference path
    n_adapter = sum(model.get_parameter(n).numel() for n in trainable)
    assert n_adapter < 0.35 * sum(p.numel() for p in reference.parameters())
    with torch.no_grad():
        for name in trainable:
            parameter = model.get_parameter(name)
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)))
    adapted = vae_infer(model, g)
    assert not torch.allclose(adapted, vae_infer(reference, g), atol=1e-5)

    fresh = tiny_singer_vae(seed=9)
    fresh.load_state_dict(base_state)
    load_adapter_state(fresh, peft, adapter_state_dict(model))
    assert torch.equal(vae_infer(fresh, g), adapted)
    merge_adapters(fresh)
    assert torch.allclose(vae_infer(fresh, g), adapted, atol=1e-5)
    assert set(fresh.state_dict()) == set(reference.state_dict())


def test_lora_merge_on_a_weight_normed_model_without_its_own_removal_method():
    """The trap: peft's merge writes into a weight that weight norm recomputes on the next call. The
    generic removal in prepare_for_finetune makes merging work on any weight-normed model."""
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Conv1d(4, 8, 3, padding=2, dilation=2)), nn.Tanh(),
                          weight_norm(nn.Conv1d(8, 2, 1))).eval()
    trainable = prepare_for_finetune(model, conf_peft("lora", r=2, target_modules=[r"\d+"]))
    assert len(trainable) == 4 and not any(parametrize.is_parametrized(m) for m in model.modules())
    with torch.no_grad():
        for name in trainable:
            model.get_parameter(name).normal_(0.0, 0.3)
        x = torch.randn(1, 4, 10)
        unmerged = model(x)
        merge_adapters(model)
        assert torch.allclose(model(x), unmerged, atol=1e-5)


def test_lora_with_embedding_targets_rank_pattern_and_whole_parameters_round_trips(tmp_path):
    x, ids = toy_inputs()
    peft = settings("lora", target_modules=["embed", "pre", r"blocks\.\d+"], rank_pattern={r"blocks\.1": 2},
                    full_parameters=[r"up\.weight", r"blocks\.0\.bias"])
    model = toy()
    trainable = prepare_for_finetune(model, peft)
    assert {"embed.lora_embedding_A.default", "up.weight", "blocks.0.base_layer.bias"} <= set(trainable)
    assert model.blocks[1].lora_A["default"].weight.shape[0] == 2 and model.blocks[2].lora_A["default"].weight.shape[0] == 4
    train_a_little(model, trainable)
    expected = model(x, ids)
    fresh = toy()
    load_adapter_state(fresh, peft, adapter_state_dict(model))
    assert torch.allclose(fresh(x, ids), expected, atol=1e-6)
    merge_adapters(fresh)
    assert torch.allclose(fresh(x, ids), expected, atol=1e-5)


def test_adapter_yaml_written_before_rank_pattern_and_full_parameters_still_loads():
    from ai_singer.adapters import as_peft_settings

    old = {k: v for k, v in conf_group("peft", "lora").items() if k not in ("rank_pattern", "full_parameters")}
    loaded = as_peft_settings(old)
    assert loaded.rank_pattern == {} and loaded.full_parameters == [] and loaded == conf_peft("lora")


def test_convtranspose_lora_merge_is_the_weight_delta_and_keeps_the_length():
    torch.manual_seed(0)
    base = nn.ConvTranspose1d(6, 4, 8, stride=4, padding=2)
    layer = LoraConvTranspose1d(base, r=3, alpha=6.0, dropout=0.0)
    x = torch.randn(2, 6, 9)
    with torch.no_grad():
        assert torch.equal(layer(x), base(x))  # B = 0
        layer.lora_B["default"].weight.normal_()
        expected = layer(x)
        plain = nn.ConvTranspose1d(6, 4, 8, stride=4, padding=2)
        plain.load_state_dict(base.state_dict())
        plain.weight.add_(layer.delta_weight())
        assert torch.allclose(plain(x), expected, atol=1e-5) and expected.shape == base(x).shape
        layer.merge()
        assert torch.allclose(base(x), expected, atol=1e-5)


def test_freeze_skips_a_block_pattern_the_model_lacks_and_refuses_when_none_matches(caplog):
    model = plain_toy()
    trainable = prepare_for_finetune(model, settings("freeze", freeze_blocks=[r"blocks\.\d+", r"upsamplers\.\d+"]))
    assert sorted(trainable) == ["blocks.2.bias", "blocks.2.weight"]
    assert "upsamplers" in caplog.text and "skipped" in caplog.text
    with pytest.raises(ValueError, match=r"no pattern of .*upsamplers.* matches a module of ToyGenerator"):
        prepare_for_finetune(plain_toy(), settings("freeze", freeze_blocks=[r"upsamplers\.\d+"]))
