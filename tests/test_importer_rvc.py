"""Importing RVC bases and singer models: the same outputs as RVC's own code.

The reference outputs in tests/fixtures/rvc/ were made by RVC's own model code (the ``rvc`` 0.3.5 package,
tools/make_rvc_fixtures.py, in a separate virtual environment): a tiny v2 model of its architecture with
random weights saved in its training format, a "singer" exported by its own ``savee``, run on fixed inputs
with its random draws recorded. Here the files go through the importer, and our model is fed the same inputs
and draws (F0 with its gaps interpolated plus the voiced flag, as ai_singer's pipeline feeds it).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ai_singer import checkpoint
from ai_singer.importers import rvc
from ai_singer.importers.__main__ import main as importers_main
from ai_singer.model import SingerVAE
from ai_singer.model.encoders import mel_coarse_f0
from imported_model import (Payload, Replay, assert_discriminator_matches, assert_payload_refused,
                            assert_training_forward_matches, fine_tune_and_convert, fixture_discriminator_state,
                            load_model, one_line, truncated_copy)

FIXTURES = Path(__file__).parent / "fixtures" / "rvc"
TOLERANCE = 1e-4
RVC_NOISE_SCALE = 0.66666


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "reference.pt", weights_only=True)


def _import(out: Path, name: str, *extra: str, model: Path = FIXTURES / "G_0.pth") -> int:
    return importers_main(["rvc", str(model), "--name", name, "--pretrain-dir", str(out), *extra])


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    assert _import(out, "tiny-rvc", "--config", str(FIXTURES / "config.json")) == 0
    return out / "tiny-rvc"


@pytest.fixture(scope="module")
def singer(imported) -> Path:
    assert _import(imported.parent, "singer-full", "--base", str(imported), model=FIXTURES / "singer.pth") == 0
    return imported.parent / "singer-full"


def test_import_writes_a_self_describing_base(imported):
    base = checkpoint.load_base(imported)
    config = base.config
    assert config["content_encoder"] == {"name": "hubert", "dim": 768, "path": "pretrain/content/hubert",
                                         "layer": 12, "final_proj": False}
    assert config["speakers"] == ["speaker_0", "speaker_1", "speaker_2"] and config["steps"] == 1234
    model = config["model"]
    assert (model["voiced_embedding"], model["prior_input"], model["unvoiced_f0"]) == (False, "scaled_leaky_relu",
                                                                                       "zero")
    assert model["sample_rate"] == 40000 and model["hop_length"] == 16 and model["content_kernel_size"] == 1
    assert model["discriminator_periods"] == [2, 3, 5, 7, 11, 17, 23, 37]
    assert config["imported_from"]["format"] == "RVC v2 checkpoint"
    assert not any(k.startswith("prior_encoder.voiced_embedding") for k in base.generator_state)


def test_pitch_classes_are_rvcs(reference):
    """RVC's pipeline quantises 0 Hz to class 1; ours with ``unvoiced_f0: zero`` sees 0 Hz where unvoiced."""
    ours = mel_coarse_f0(reference["f0"], 256, 50.0, 1100.0)
    assert torch.equal(ours, reference["pitch"])


def _infer(model: SingerVAE, reference, monkeypatch, prefix: str, content: str = "content") -> torch.Tensor:
    prior_noise = reference[f"{prefix}_prior_noise"]
    source_noise = reference[f"{prefix}_source_noise"].transpose(1, 2)  # theirs [B, L, 1], ours [B, 1, L]
    replay = Replay(monkeypatch, {tuple(prior_noise.shape): [prior_noise], tuple(source_noise.shape): [source_noise]})
    content = reference[content][:1].transpose(1, 2)  # theirs [B, T, D]
    f0, voiced = reference["f0_interpolated"][:1], reference["voiced"][:1]
    with torch.inference_mode():
        wav = model.infer(content, f0, voiced, torch.ones_like(f0), model.embed_speaker(reference["speakers"][:1]),
                          noise_scale=RVC_NOISE_SCALE)
    assert replay.all_used()
    return wav


def test_inference_matches_rvc(imported, reference, monkeypatch):
    model = load_model(imported).eval()
    model.remove_weight_norm()  # as conversion does (RVC keeps weight norm: the same weights)
    wav = _infer(model, reference, monkeypatch, "infer")
    assert wav.shape == reference["infer_wav"].shape
    assert (wav - reference["infer_wav"]).abs().max() <= TOLERANCE
    assert reference["infer_wav"].abs().max() > 0.01  # a real signal, not two silences


def test_an_rvc_v1_model_matches_rvc(tmp_path, reference, monkeypatch):
    """RVC v1 (256-d content: ContentVec layer 9 + final_proj, periods up to 17) from the same tiny config."""
    assert _import(tmp_path, "v1", "--config", str(FIXTURES / "config.json"), model=FIXTURES / "G_v1.pth") == 0
    base = checkpoint.load_base(tmp_path / "v1")
    assert base.config["content_encoder"]["layer"] == 9 and base.config["content_encoder"]["final_proj"]
    assert base.model_config["discriminator_periods"] == [2, 3, 5, 7, 11, 17]
    wav = _infer(load_model(tmp_path / "v1").eval(), reference, monkeypatch, "v1", "content_v1")
    assert (wav - reference["v1_wav"]).abs().max() <= TOLERANCE


def test_an_exported_singer_model_matches_rvc(singer, reference, monkeypatch):
    """RVC's exported model (float16, no posterior encoder: taken from --base) gives RVC's own output."""
    base = checkpoint.load_base(singer)
    assert base.config["imported_from"]["format"] == "RVC v2 singer model"
    assert base.config["imported_from"]["info"] == "100epoch"
    wav = _infer(load_model(singer).eval(), reference, monkeypatch, "singer")
    assert (wav - reference["singer_wav"]).abs().max() <= TOLERANCE
    assert (reference["singer_wav"] - reference["infer_wav"]).abs().max() > 1e-3  # another model's output


def test_training_forward_matches_rvc(imported, reference, monkeypatch):
    assert_training_forward_matches(load_model(imported).train(), reference, monkeypatch,
                                    reference["content"].transpose(1, 2), reference["f0_interpolated"],
                                    reference["voiced"], TOLERANCE)


def test_an_imported_rvc_base_fine_tunes_and_converts(imported, tmp_path):
    """train mode=finetune (LoRA) on the imported RVC base, then convert with the adapter."""
    fine_tune_and_convert(imported, tmp_path, sample_rate=40000, content_dim=768, layer=12, final_proj=False)


@pytest.mark.slow  # a full-size v2 discriminator (9 sub-discriminators) written, imported and read back: ~15 s
def test_discriminator_matches_rvc(reference, tmp_path):
    d_file = tmp_path / "f0D.pth"
    torch.save({"model": fixture_discriminator_state(FIXTURES)}, d_file)
    assert _import(tmp_path, "with-d", "--config", str(FIXTURES / "config.json"), "--discriminator", str(d_file)) == 0
    assert assert_discriminator_matches(tmp_path / "with-d", reference, TOLERANCE) == 9  # scale, periods 2 ... 37


def test_an_rvc_singer_model_becomes_an_adapter(imported, singer, tmp_path):
    """The exported singer, imported on its base, becomes a LoRA adapter; at full rank it holds the whole
    difference to the base."""
    from ai_singer.config import conf_file
    from ai_singer.extract import extract_adapter
    from ai_singer.lora_svd import ExtractSettings

    values = conf_file("extract")
    settings = ExtractSettings(rank=10_000, energy=None, drop=list(values["drop"]), dtype=values["dtype"])
    out, extraction = extract_adapter(imported, singer, tmp_path / "singers" / "alice", settings, speaker="0")
    assert checkpoint.load_adapter(out).base_sha256 == checkpoint.load_base(imported).sha256
    assert extraction.relative_error(("lora",)) < 1e-4


@pytest.mark.parametrize("version, rate, kernels, bins", [
    ("v1", "32k", [16, 16, 4, 4, 4], 513), ("v1", "40k", [16, 16, 4, 4], 1025), ("v1", "48k", [16, 16, 4, 4, 4], 1025),
    ("v2", "32k", [20, 16, 4, 4], 513), ("v2", "40k", [16, 16, 4, 4], 1025), ("v2", "48k", [24, 20, 4, 4], 1025)])
def test_the_published_layouts_are_recognised_from_their_shapes(version, rate, kernels, bins):
    """f0G40k.pth and friends carry no config: the rate comes from the upsamplers and spectrogram size."""
    state = {f"dec.ups.{i}.weight_v": torch.empty(2, 1, k) for i, k in enumerate(kernels)}
    state["enc_q.pre.weight"] = torch.empty(192, bins, 1)
    assert rvc._framing_from_shapes(state, version, None, Path("G.pth")) == rate
    assert rvc._framing_from_shapes(state, version, rate, Path("G.pth")) == rate


def test_the_rvc_layout_builds_rvcs_v2_40k_model():
    """conf/model/rvc.yaml (RVC v2 40k) against RVC's own parameter counts, part by part: the same prior
    encoder (768-d Linear, pitch embedding, no voicing embedding or volume input), flow (couplings of 3 layers),
    posterior encoder and speaker table."""
    import yaml

    layout = yaml.safe_load((Path(__file__).parents[1] / "conf" / "model" / "rvc.yaml").read_text())
    counts = SingerVAE(layout).parameter_counts()
    assert counts["flow"] == RVC_V2_40K_COUNTS["flow"]
    assert counts["prior_encoder"] == RVC_V2_40K_COUNTS["enc_p"]
    assert counts["posterior_encoder"] == RVC_V2_40K_COUNTS["enc_q"]
    assert counts["speaker_embedding"] == RVC_V2_40K_COUNTS["emb_g"]
    # ours: weight norm on the decoder's first and last conv (RVC's are plain): one g per output channel
    assert counts["decoder"] == RVC_V2_40K_COUNTS["dec"] + 512 + 1


#: RVC v2 40k SynthesizerTrnMs768NSFsid's parameters per part, counted with RVC's own code (the ``rvc`` 0.3.5
#: package, configs/v1/40k.json with spk_embed_dim 109) by tools/make_rvc_fixtures.py --counts.
RVC_V2_40K_COUNTS = {"enc_p": 6_503_232, "dec": 14_490_882, "enc_q": 8_921_472, "flow": 6_515_328, "emb_g": 27_904}


# ------------------------------------------------------------------------------------- bad input

def _run(capsys, tmp_path, model, *extra) -> tuple[int, str]:
    rc = importers_main(["rvc", str(model), "--name", "bad", "--pretrain-dir", str(tmp_path / "pretrain"), *extra])
    err = capsys.readouterr().err
    assert not (tmp_path / "pretrain" / "bad").exists()  # nothing written
    return rc, err


def test_a_pickle_with_foreign_classes_is_refused(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    payload = torch.load(FIXTURES / "singer.pth", weights_only=True)
    torch.save({**payload, "info": Payload()}, bad)
    rc, err = _run(capsys, tmp_path, bad)
    assert_payload_refused(rc, err, bad)


def test_a_truncated_file_is_refused(tmp_path, capsys):
    cut = truncated_copy(FIXTURES / "singer.pth", tmp_path / "cut.pth")
    rc, err = _run(capsys, tmp_path, cut)
    assert rc == 2 and "truncated" in one_line(err) and str(cut) in err


def _variant(tmp_path, change) -> Path:
    payload = torch.load(FIXTURES / "singer.pth", weights_only=True)
    change(payload)
    path = tmp_path / "variant.pth"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("kind, expect", [
    ("json", "JSON"), ("sovits", "import sovits"), ("discriminator", "--discriminator"), ("nono", "pitch"),
    ("list", "not an RVC model")])
def test_a_file_of_the_wrong_kind_is_refused(tmp_path, capsys, imported, kind, expect):
    wrong = tmp_path / "wrong.pth"
    if kind == "json":
        wrong.write_text((FIXTURES / "config.json").read_text())
    elif kind == "sovits":
        sovits = Path(__file__).parent / "fixtures" / "sovits" / "G_0.pth"
        wrong.write_bytes(sovits.read_bytes())
    elif kind == "discriminator":
        torch.save({"model": {"discriminators.0.convs.0.bias": torch.zeros(16)}}, wrong)
    elif kind == "nono":
        wrong = _variant(tmp_path, lambda p: (p.update(f0=0), p["weight"].pop("enc_p.emb_pitch.weight")))
    else:
        torch.save([1, 2, 3], wrong)
    rc, err = _run(capsys, tmp_path, wrong, "--base", str(imported))
    line = one_line(err)
    assert rc == 2 and str(wrong) in line and expect in line


def test_a_config_that_does_not_match_the_weights_is_refused(tmp_path, capsys, imported):
    def change(payload):
        payload["config"][3] = 12  # hidden_channels
    rc, err = _run(capsys, tmp_path, _variant(tmp_path, change), "--base", str(imported))
    line = one_line(err)
    assert rc == 2 and "do not match" in line and "variant.pth" in line

    config = json.loads((FIXTURES / "config.json").read_text())
    config["model"]["filter_channels"] = 24
    other = tmp_path / "config.json"
    other.write_text(json.dumps(config))
    rc, err = _run(capsys, tmp_path, FIXTURES / "G_0.pth", "--config", str(other))
    line = one_line(err)
    assert rc == 2 and "G_0.pth" in line and "do not match" in line


def test_a_base_without_config_must_be_a_published_layout(tmp_path, capsys):
    rc, err = _run(capsys, tmp_path, FIXTURES / "G_0.pth")
    assert rc == 2 and "--sample-rate" in one_line(err)


def test_a_singer_model_needs_its_base(tmp_path, capsys):
    rc, err = _run(capsys, tmp_path, FIXTURES / "singer.pth")
    assert rc == 2 and "--base" in one_line(err)


def test_a_singer_model_on_a_base_of_another_architecture_is_refused(tmp_path, capsys):
    sovits = Path(__file__).parent / "fixtures" / "sovits"
    assert importers_main(["sovits", str(sovits / "G_0.pth"), "--config", str(sovits / "config.json"),
                           "--name", "other", "--pretrain-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    rc, err = _run(capsys, tmp_path, FIXTURES / "singer.pth", "--base", str(tmp_path / "other"))
    line = one_line(err)
    assert rc == 2 and "singer.pth" in line and "architecture" in line and "other" in line


def test_an_existing_base_is_kept_without_overwrite(imported, capsys):
    rc = _import(imported.parent, imported.name, "--config", str(FIXTURES / "config.json"))
    assert rc == 2 and "--overwrite" in one_line(capsys.readouterr().err)


def test_key_map():
    assert rvc.map_rvc_key("enc_p.encoder.attn_layers.1.emb_rel_k") == "prior_encoder.encoder.layers.1.attention.relative_key"
    assert rvc.map_rvc_key("enc_p.emb_phone.weight") == "prior_encoder.content_proj.weight"
    assert rvc.map_rvc_key("dec.m_source.l_linear.bias") == "decoder.source.merge.bias"
    assert rvc.map_rvc_key("flow.flows.4.enc.cond_layer.weight_v") == \
        "flow.couplings.2.wavenet.speaker_proj.parametrizations.weight.original1"
