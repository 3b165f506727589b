"""A full singer model -> a LoRA adapter (``ai-singer extract-adapter``): exact at full rank, error falling with
rank, an unchanged model gives the base back, convert loads the result, bad inputs are one line with nothing
written."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from test_infer import TINY, make_base

from ai_singer import checkpoint as ckpt
from ai_singer import cli
from ai_singer.adapters import (PeftSettings, adapter_state_dict, load_adapter_state, merge_adapters,
                                prepare_for_finetune)
from ai_singer.config import conf_group, load_settings
from ai_singer.errors import UserError
from ai_singer.extract import extract_adapter
from ai_singer.full_model import base_model
from ai_singer.lora_svd import ExtractSettings, truncated_factors
from ai_singer.model.synthesizer import SingerVAE


@pytest.fixture
def hydra_clean():
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def settings(rank: int = 4, energy: float | None = None, **changes) -> ExtractSettings:
    return ExtractSettings(**{**conf_group_extract(), "rank": rank, "energy": energy, **changes})


def conf_group_extract() -> dict:
    from ai_singer.config import conf_file

    values = conf_file("extract")
    return {key: values[key] for key in ("rank", "energy", "drop", "dtype")}


def fine_tuned(base_dir: Path, scale: float = 0.02, seed: int = 3) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A 'full fine-tune' of the base: every parameter moved (full-rank random differences) and a singer vector."""
    model = base_model(ckpt.load_base(base_dir))
    generator = torch.Generator().manual_seed(seed)
    params = {name: p.detach() + scale * torch.randn(p.shape, generator=generator) * (p.detach().abs().mean() + 0.1)
              for name, p in model.named_parameters()}
    return params, torch.randn(TINY["gin_channels"], generator=generator)


def save_full_adapter(folder: Path, base_dir: Path, params: dict[str, torch.Tensor], g: torch.Tensor) -> Path:
    """``params`` as ``train mode=finetune peft=full`` exports them."""
    base = ckpt.load_base(base_dir)
    model = base_model(base)
    peft = PeftSettings(**conf_group("peft", "full"))
    prepare_for_finetune(model, peft)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    tensors = {**adapter_state_dict(model), "singer_embedding": g}
    return ckpt.save_adapter(folder, tensors, {"method": "full", "peft": peft.to_dict(), "singer": folder.name,
                                               "base_sha256": base.sha256, "base_name": base_dir.name,
                                               "stats": {"f0_median_hz": 200.0}})


def adapted(base_dir: Path, adapter_dir: Path) -> SingerVAE:
    """The base with the adapter loaded and merged, as ``convert`` does."""
    adapter = ckpt.load_adapter(adapter_dir)
    model = base_model(ckpt.load_base(base_dir))
    load_adapter_state(model, adapter.config["peft"], adapter.tensors)
    return merge_adapters(model)


def with_parameters(base_dir: Path, params: dict[str, torch.Tensor]) -> SingerVAE:
    model = base_model(ckpt.load_base(base_dir))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    return model


def infer(model: SingerVAE, g: torch.Tensor) -> torch.Tensor:
    """wav [1, 1, 8 * hop] for fixed inputs and noise."""
    frames = 8
    inputs = torch.Generator().manual_seed(5)
    content = torch.randn(1, TINY["content_dim"], frames, generator=inputs)
    f0, voiced, volume = torch.full((1, frames), 220.0), torch.ones(1, frames), torch.full((1, frames), 0.05)
    with torch.no_grad():
        return model.infer(content, f0, voiced, volume, g.reshape(1, -1).float(), noise_scale=0.0,
                           generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("extract")
    base_dir = make_base(root)
    params, g = fine_tuned(base_dir)
    full_dir = save_full_adapter(root / "singers" / "full", base_dir, params, g)
    return root, base_dir, full_dir, params, g


def test_truncated_factors_are_the_best_low_rank_approximation():
    matrix = torch.randn(12, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    singular = torch.linalg.svdvals(matrix)
    for rank in (1, 3, 12):
        b, a, residual = truncated_factors(matrix, rank, None)
        assert b.shape == (12, rank) and a.shape == (rank, 30)
        assert residual == pytest.approx(float((matrix - b @ a).norm()), rel=1e-9)
        assert residual == pytest.approx(float(singular[rank:].pow(2).sum().sqrt()), rel=1e-9, abs=1e-9)
    b, a, _ = truncated_factors(matrix, 12, 0.5)  # energy: the smallest rank keeping half of ||M||^2
    kept = int(a.shape[0])
    power = singular.pow(2).cumsum(0) / singular.pow(2).sum()
    assert power[kept - 1] >= 0.5 > (power[kept - 2] if kept > 1 else 0.0)


def test_full_rank_reproduces_the_full_model_and_the_artifact_describes_itself(setup, tmp_path):
    root, base_dir, full_dir, params, g = setup
    out, extraction = extract_adapter(base_dir, full_dir, tmp_path / "alice", settings(rank=10_000))
    assert extraction.relative_error() < 1e-6
    model = adapted(base_dir, out)
    for name, p in model.named_parameters():
        if name != "speaker_embedding.weight":
            assert torch.allclose(p, params[name], atol=2e-6), name
    assert torch.allclose(infer(model, ckpt.load_adapter(out).tensors["singer_embedding"]),
                          infer(with_parameters(base_dir, params), g), atol=1e-4)
    config = yaml.safe_load((out / ckpt.ADAPTER_CONFIG_FILE).read_text())
    assert config["method"] == "lora" and config["base_sha256"] == ckpt.load_base(base_dir).sha256
    assert config["extraction"]["method"] == "truncated_svd" and config["extraction"]["rank"] == 10_000
    assert config["extraction"]["from_sha256"] == ckpt.sha256_file(full_dir / ckpt.ADAPTER_TENSORS_FILE)
    assert config["stats"] == {"f0_median_hz": 200.0}  # the singer's statistics travel with it
    from ai_singer.catalog import list_adapters

    listed = list_adapters(tmp_path, [])
    assert listed[0].method == "lora" and listed[0].extracted == "r=10000, weight error 0.00"


def test_error_decreases_with_rank_and_energy_picks_ranks_per_layer(setup, tmp_path):
    root, base_dir, full_dir, params, g = setup
    reference = infer(with_parameters(base_dir, params), g)
    weight_errors, wave_errors = [], []
    for rank in (1, 2, 4, 8):
        out, extraction = extract_adapter(base_dir, full_dir, tmp_path / f"r{rank}", settings(rank=rank))
        weight_errors.append(extraction.relative_error())
        wave_errors.append(float((infer(adapted(base_dir, out), g) - reference).norm() / reference.norm()))
        assert {layer.rank for layer in extraction.layers if layer.kind == "lora"} == {rank}
    assert weight_errors == sorted(weight_errors, reverse=True) and len(set(weight_errors)) == 4
    assert wave_errors[-1] < wave_errors[0]
    out, extraction = extract_adapter(base_dir, full_dir, tmp_path / "energy", settings(rank=64, energy=0.6))
    lora = [layer for layer in extraction.layers if layer.kind == "lora"]
    assert len({layer.rank for layer in lora}) > 1 and extraction.peft.rank_pattern
    assert all(layer.error ** 2 <= 0.4 * layer.delta ** 2 + 1e-12 for layer in lora)
    adapted(base_dir, out)  # per-layer ranks load and merge


def test_an_unchanged_model_gives_the_base_back_through_convert(setup, tmp_path, tiny_hubert_dir):
    from ai_singer.convert import Converter

    root, base_dir, _, _, g = setup
    base = base_model(ckpt.load_base(base_dir))
    same = {name: p.detach().clone() for name, p in base.named_parameters()}
    full_dir = save_full_adapter(tmp_path / "full-same", base_dir, same, g)
    out, extraction = extract_adapter(base_dir, full_dir, tmp_path / "singers" / "same", settings(rank=8))
    assert extraction.summary()["lora_layers"] == 0 and set(extraction.tensors) == {"singer_embedding"}
    converter = Converter(base_dir, {"name": "hubert", "path": str(tiny_hubert_dir), "layer": 2},
                          load_settings("infer", ["noise_scale=0", "f0.method=dio", "refine.steps=0"]),
                          tmp_path / "singers", device="cpu")
    with converter.singer_model("same") as (model, singer_g):
        assert torch.equal(singer_g.reshape(-1), g)
        assert torch.equal(infer(model, singer_g), infer(base, g))


def test_safetensors_and_base_layout_inputs_with_a_speaker_table(setup, tmp_path):
    root, base_dir, _, params, _ = setup
    file = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in params.items()}, str(file))
    with pytest.raises(UserError, match=r"2 speakers[\s\S]*speaker=<index or name>"):
        extract_adapter(base_dir, file, tmp_path / "x", settings())
    assert not (tmp_path / "x").exists()
    out, _ = extract_adapter(base_dir, file, tmp_path / "from-file", settings(rank=10_000), speaker=1)
    assert torch.equal(ckpt.load_adapter(out).tensors["singer_embedding"], params["speaker_embedding.weight"][1])
    base = ckpt.load_base(base_dir)
    layout = ckpt.save_base(tmp_path / "full-base", params, None, base.config)
    out, extraction = extract_adapter(base_dir, layout, tmp_path / "from-base", settings(rank=10_000), speaker="a")
    assert torch.equal(ckpt.load_adapter(out).tensors["singer_embedding"], params["speaker_embedding.weight"][0])
    assert extraction.relative_error() < 1e-6


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()  # only this command's output (a handler left by an earlier test may have written)
    code = cli.main(["extract-adapter", *argv])
    return code, capsys.readouterr().err.strip()


def test_bad_inputs_are_one_line_errors_and_write_nothing(setup, tmp_path, hydra_clean, capsys):
    root, base_dir, full_dir, params, g = setup
    other = make_base(tmp_path, "other", seed=4)  # same architecture, other weights
    other_params, _ = fine_tuned(other)
    mismatched = tmp_path / "bigger.safetensors"  # another architecture: a wider input conv
    save_file({**{k: v.contiguous() for k, v in params.items()},
               "decoder.input_conv.weight": torch.zeros(64, TINY["inter_channels"], 7)}, str(mismatched))
    pickled = tmp_path / "G_1000.pth"
    torch.save({"model": {}}, pickled)
    not_safetensors = tmp_path / "notes.safetensors"
    not_safetensors.write_text("hello")
    other_base_full = save_full_adapter(tmp_path / "other-full", other, other_params, g)
    lora = tmp_path / "lora"
    out0, _ = extract_adapter(base_dir, full_dir, lora, settings(rank=2))
    cases = {mismatched: "not the architecture of the base", pickled: "not a generator this project reads",
             not_safetensors: "not a readable safetensors file", other_base_full: "trained on other",
             lora: "already an adapter", tmp_path / "missing.safetensors": "no such file"}
    out = tmp_path / "singers" / "never"
    for full, message in cases.items():
        code, err = _run([f"base={base_dir}", f"full={full}", f"out={out}"], capsys)
        assert code == 2, (full, err)
        assert err.startswith("extract-adapter: error:") and len(err.splitlines()) == 1, err
        assert str(full) in err and message in err, err
        assert not out.exists()
    code, err = _run([f"base={base_dir}", f"full={full_dir}", f"out={lora}"], capsys)  # would overwrite
    assert code == 2 and "already holds an adapter" in err and "overwrite=true" in err
    code, err = _run([f"base={base_dir}", f"out={out}"], capsys)
    assert code == 2 and "full: set full=PATH" in err and not out.exists()
    code, err = _run([f"base={base_dir}", f"full={full_dir}", f"out={out}", "rank=0"], capsys)
    assert code == 2 and "rank=0" in err and not out.exists()
    code, err = _run([f"base={base_dir}", f"full={full_dir}", f"out={out}", "rank=3"], capsys)
    assert code == 0 and (out / ckpt.ADAPTER_CONFIG_FILE).is_file()
