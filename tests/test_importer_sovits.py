"""Importing so-vits-svc generators and discriminators: the same outputs as so-vits-svc-fork's own code.

The reference outputs in tests/fixtures/sovits/ were made by so-vits-svc-fork 4.2.30 itself
(tools/make_sovits_fixtures.py, in a separate virtual environment): a tiny model of its architecture with
random weights, saved in its own checkpoint format, run on fixed inputs with its random draws recorded.
Here the checkpoint goes through the importer, and our model is fed the same inputs and draws.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ai_singer import checkpoint
from ai_singer.importers import sovits
from ai_singer.importers.__main__ import main as importers_main
from ai_singer.model import SingerVAE
from imported_model import (Payload, Replay, assert_discriminator_matches, assert_payload_refused,
                            assert_training_forward_matches, fine_tune_and_convert, fixture_discriminator_state,
                            load_model, one_line, truncated_copy)

FIXTURES = Path(__file__).parent / "fixtures" / "sovits"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    rc = importers_main(["sovits", str(FIXTURES / "G_0.pth"), "--config", str(FIXTURES / "config.json"),
                         "--name", "tiny-sovits", "--pretrain-dir", str(out)])
    assert rc == 0
    return out / "tiny-sovits"


def test_import_writes_a_self_describing_base(imported):
    base = checkpoint.load_base(imported)
    config = base.config
    assert config["content_encoder"] == {"name": "hubert", "dim": 256, "path": "pretrain/content/hubert",
                                         "layer": 9, "final_proj": True}
    assert config["speakers"] == ["alice", "bob", "carol"]
    assert config["steps"] == 1234
    assert config["model"]["volume_embedding"] == "none" and config["model"]["nsf_source"] == "sovits"
    assert "f0_decoder" in config["imported_from"]["left_out"]
    assert config["generator_sha256"] == checkpoint.sha256_file(imported / checkpoint.BASE_GENERATOR_FILE)
    assert not any(key.startswith("f0_decoder") for key in base.generator_state)


def test_inference_matches_so_vits_svc(imported, reference, monkeypatch):
    model = load_model(imported).eval()
    model.remove_weight_norm()  # as conversion does (and as their Svc.load_model does)
    content, f0, uv = reference["content"][:1], reference["f0"][:1], reference["uv"][:1]
    prior_noise = reference["infer_prior_noise"]
    source_noise = reference["infer_source_noise"].transpose(1, 2)  # theirs [B, L, K], ours [B, K, L]
    replay = Replay(monkeypatch, {tuple(prior_noise.shape): [prior_noise], tuple(source_noise.shape): [source_noise]})
    with torch.inference_mode():
        g = model.embed_speaker(reference["speakers"][:1])
        wav = model.infer(content, f0, uv, torch.ones_like(f0), g,
                          noise_scale=float(reference["infer_noise_scale"]))
    assert replay.all_used()
    assert wav.shape == reference["infer_wav"].shape
    assert (wav - reference["infer_wav"]).abs().max() <= TOLERANCE
    assert reference["infer_wav"].abs().max() > 0.01  # a real signal, not two silences


def test_training_forward_matches_so_vits_svc(imported, reference, monkeypatch):
    assert_training_forward_matches(load_model(imported).train(), reference, monkeypatch, reference["content"],
                                    reference["f0"], reference["uv"], TOLERANCE)


@pytest.mark.slow  # a full-size discriminator (47 M parameters) written, imported and read back: ~10 s
def test_discriminator_matches_so_vits_svc(reference, tmp_path):
    d_file = tmp_path / "D_0.pth"
    torch.save({"model": fixture_discriminator_state(FIXTURES), "iteration": 1234, "optimizer": None,
                "learning_rate": 1e-4}, d_file)
    rc = importers_main(["sovits", str(FIXTURES / "G_0.pth"), "--config", str(FIXTURES / "config.json"),
                         "--discriminator", str(d_file), "--name", "with-d", "--pretrain-dir", str(tmp_path)])
    assert rc == 0
    assert assert_discriminator_matches(tmp_path / "with-d", reference, TOLERANCE) == 6  # scale, periods 2 ... 11


# ------------------------------------------------------------------------------------- bad input

def _run(capsys, tmp_path, generator, config=FIXTURES / "config.json", *extra) -> tuple[int, str]:
    rc = importers_main(["sovits", str(generator), "--config", str(config), "--name", "bad",
                         "--pretrain-dir", str(tmp_path / "pretrain"), *extra])
    err = capsys.readouterr().err
    assert not (tmp_path / "pretrain" / "bad").exists()  # nothing written
    return rc, err


def test_a_pickle_with_foreign_classes_is_refused(tmp_path, capsys):
    bad = tmp_path / "G_evil.pth"
    model = torch.load(FIXTURES / "G_0.pth", weights_only=True)["model"]
    torch.save({"model": model, "extra": Payload()}, bad)
    rc, err = _run(capsys, tmp_path, bad)
    assert_payload_refused(rc, err, bad)


def test_a_truncated_file_is_refused(tmp_path, capsys):
    cut = truncated_copy(FIXTURES / "G_0.pth", tmp_path / "G_cut.pth")
    rc, err = _run(capsys, tmp_path, cut)
    line = one_line(err)
    assert rc == 2 and str(cut) in line and "truncated" in line


@pytest.mark.parametrize("kind", ["json", "discriminator", "rvc", "rvc-base"])
def test_a_file_of_the_wrong_kind_is_refused(tmp_path, capsys, kind):
    wrong = tmp_path / "wrong.pth"
    if kind == "json":
        wrong.write_text((FIXTURES / "config.json").read_text())
        expect = "JSON"
    elif kind == "discriminator":
        torch.save({"model": {"discriminators.0.convs.0.bias": torch.zeros(16)}}, wrong)
        expect = "--discriminator"
    elif kind == "rvc":
        torch.save({"weight": {"emb_g.weight": torch.zeros(1, 2)}, "config": [1, 2], "version": "v2"}, wrong)
        expect = "import rvc"
    else:
        wrong.write_bytes((Path(__file__).parent / "fixtures" / "rvc" / "G_0.pth").read_bytes())
        expect = "import rvc"
    rc, err = _run(capsys, tmp_path, wrong)
    line = one_line(err)
    assert rc == 2 and str(wrong) in line and expect in line


def test_a_config_that_does_not_match_the_weights_is_refused(tmp_path, capsys):
    config = json.loads((FIXTURES / "config.json").read_text())
    config["model"]["hidden_channels"] = 12
    other = tmp_path / "config.json"
    other.write_text(json.dumps(config))
    rc, err = _run(capsys, tmp_path, FIXTURES / "G_0.pth", other)
    line = one_line(err)
    assert rc == 2 and "G_0.pth" in line and "do not match" in line and str(other) in line


@pytest.mark.parametrize("change, expect", [
    ({"type_": "mb-istft"}, "type_"),
    ({"resblock": "2"}, "resblock"),
    ({"ssl_dim": 1024}, "ssl_dim"),
    ({"speech_encoder": "whisper-ppg"}, "whisper-ppg"),
])
def test_unsupported_so_vits_options_are_named(tmp_path, capsys, change, expect):
    config = json.loads((FIXTURES / "config.json").read_text())
    config["model"].update(change)
    other = tmp_path / "config.json"
    other.write_text(json.dumps(config))
    rc, err = _run(capsys, tmp_path, FIXTURES / "G_0.pth", other)
    line = one_line(err)
    assert rc == 2 and str(other) in line and expect in line


def test_an_existing_base_is_kept_without_overwrite(imported, capsys):
    rc = importers_main(["sovits", str(FIXTURES / "G_0.pth"), "--config", str(FIXTURES / "config.json"),
                         "--name", imported.name, "--pretrain-dir", str(imported.parent)])
    assert rc == 2 and "--overwrite" in one_line(capsys.readouterr().err)


def test_ai_singer_import_runs_the_importer(tmp_path, capsys):
    from ai_singer.cli import main as cli_main

    rc = cli_main(["import", "sovits", str(FIXTURES / "G_0.pth"), "--config", str(FIXTURES / "config.json"),
                   "--name", "via-cli", "--pretrain-dir", str(tmp_path)])
    assert rc == 0 and (tmp_path / "via-cli" / checkpoint.BASE_CONFIG_FILE).is_file()
    with pytest.raises(SystemExit) as stop:
        cli_main(["import", "nosuchkind"])
    assert stop.value.code == 2 and "nosuchkind" in capsys.readouterr().err


def test_key_maps_cover_the_layouts():
    assert sovits.map_generator_key("flow.flows.6.enc.in_layers.3.weight_g") == \
        "flow.couplings.3.wavenet.dilated_convs.3.parametrizations.weight.original0"
    assert sovits.map_generator_key("enc_p.enc_.norm_layers_2.1.gamma") == \
        "prior_encoder.encoder.layers.1.feed_forward_norm.norm.weight"
    assert sovits.map_generator_key("f0_decoder.prenet.weight") is None
    assert sovits.map_discriminator_key("discriminators.3.conv_post.weight_v") == \
        "period_discriminators.2.output_conv.parametrizations.weight.original1"


# ------------------------------------------------------------------------------ used like any base

def test_an_imported_base_fine_tunes_and_converts(imported, tmp_path):
    """train mode=finetune (LoRA) on the imported so-vits-svc base, then convert with the adapter."""
    fine_tune_and_convert(imported, tmp_path, sample_rate=44100, content_dim=256, layer=9, final_proj=True)


def test_the_sovits_layout_differs_from_model_base_by_four_options():
    """so-vits-svc-fork's 44.1 kHz model vs ``model=base``: flow, posterior encoder and discriminator are the
    same size; the prior encoder has no volume input (-384 = volume_proj's 192 weights + 192 biases) and the
    decoder's output conv a bias (+1)."""
    import yaml

    conf = Path(__file__).parents[1] / "conf" / "model"
    base = yaml.safe_load((conf / "base.yaml").read_text())
    layout = yaml.safe_load((conf / "sovits.yaml").read_text())
    differing = sorted(k for k in base if base[k] != layout[k] and k not in
                       ("sample_rate", "hop_length", "n_fft", "win_length"))
    assert differing == ["decoder_output_bias", "f0_coarse", "nsf_source", "volume_embedding"]
    # (the discriminator settings are among the equal keys above)
    framing = {k: layout[k] for k in ("sample_rate", "hop_length", "n_fft", "win_length")}
    a = SingerVAE({**base, **framing}).parameter_counts()
    b = SingerVAE(layout).parameter_counts()
    assert a["flow"] == b["flow"] == 8_687_232 and a["posterior_encoder"] == b["posterior_encoder"] == 8_921_472
    assert a["prior_encoder"] - b["prior_encoder"] == 384 and b["decoder"] - a["decoder"] == 1


def test_a_so_vits_singer_model_becomes_an_adapter(imported, tmp_path):
    """A singer's G_xxxx.pth (fine-tuned from the base) imports the same way and ``extract-adapter`` turns it
    into a LoRA adapter on the imported base; at full rank it reproduces the singer's generator."""
    from ai_singer.config import conf_file
    from ai_singer.extract import extract_adapter
    from ai_singer.lora_svd import ExtractSettings

    payload = torch.load(FIXTURES / "G_0.pth", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    payload["model"] = {key: value + 0.02 * value.abs().mean() * torch.randn(value.shape, generator=generator)
                        for key, value in payload["model"].items()}
    singer_file = tmp_path / "G_5000.pth"
    torch.save(payload, singer_file)
    assert importers_main(["sovits", str(singer_file), "--config", str(FIXTURES / "config.json"),
                           "--name", "alice-full", "--pretrain-dir", str(tmp_path)]) == 0
    values = conf_file("extract")
    settings = ExtractSettings(rank=10_000, energy=None, drop=list(values["drop"]), dtype=values["dtype"])
    out, extraction = extract_adapter(imported, tmp_path / "alice-full", tmp_path / "singers" / "alice", settings,
                                      speaker="bob")
    adapter = checkpoint.load_adapter(out)
    assert adapter.base_sha256 == checkpoint.load_base(imported).sha256
    assert extraction.relative_error(("lora",)) < 1e-4  # full rank: the LoRA layers hold the whole difference


def test_so_vits_svc_4_1_volume_embedding_becomes_the_linear_volume_input(imported, tmp_path):
    """4.1's ``vol_embedding``: ``emb_vol`` (a Linear(1, hidden) of the frame RMS, added to the content
    projection) becomes ``volume_embedding: linear``. Checked by its meaning: the same as the 4.0 model whose
    content projection's bias absorbed ``emb_vol(v)`` for a constant volume ``v`` (no 4.1 code runs here)."""
    payload = torch.load(FIXTURES / "G_0.pth", weights_only=True)
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(8, 1, generator=generator), torch.randn(8, generator=generator)
    payload["model"].update({"emb_vol.weight": weight, "emb_vol.bias": bias})
    torch.save(payload, tmp_path / "G_41.pth")
    config = json.loads((FIXTURES / "config.json").read_text())
    config["model"].update(vol_embedding=True, speech_encoder="vec256l9")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert importers_main(["sovits", str(tmp_path / "G_41.pth"), "--config", str(tmp_path / "config.json"),
                           "--name", "v41", "--pretrain-dir", str(tmp_path)]) == 0
    base = checkpoint.load_base(tmp_path / "v41")
    assert base.model_config["volume_embedding"] == "linear"
    assert base.config["imported_from"]["format"] == "so-vits-svc 4.1"
    with_volume, without = load_model(tmp_path / "v41").eval(), load_model(imported).eval()
    level = 0.05
    with torch.no_grad():
        without.prior_encoder.content_proj.bias += weight[:, 0] * level + bias
    content, f0, uv = (torch.load(FIXTURES / "reference.pt", weights_only=True)[k][:1]
                                          for k in ("content", "f0", "uv"))
    mask = torch.ones(1, 1, content.shape[-1])
    with torch.no_grad():
        a = with_volume.prior_encoder(content, f0, uv, torch.full_like(f0, level), mask)
        b = without.prior_encoder(content, f0, uv, torch.ones_like(f0), mask)
    for ours, expected in zip(a, b):
        assert (ours - expected).abs().max() < 1e-5
