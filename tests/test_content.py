"""Content encoders: offline loading of HuBERT / ContentVec folders, layer and final_proj choices,
chunked encoding, alignment to model frames, and clear errors for a missing encoder."""
from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import harmonic

from ai_singer.conf_dir import conf_dir
from ai_singer.features.content import (
    CONTENT_ENCODERS, ContentEncoder, ContentEncoderMissing, HubertContentEncoder, align_to_frames, describe_encoder,
    encode_audio, encoder_mismatches, load_content_encoder, normalize_encoder_record,
)

HIDDEN, PROJECTED, LAYERS = 32, 16, 3


def _tiny_config():
    from transformers import HubertConfig

    return HubertConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=PROJECTED,
    )


@pytest.fixture(scope="module")
def contentvec(tmp_path_factory):
    """ContentVec-style folders as so-vits-svc-fork uses them: HubertModel.save_pretrained plus
    final_proj.weight / final_proj.bias added to the saved state dict; one with safetensors, one with
    pytorch_model.bin, and one without final_proj. Returns (dirs, reference model, final_proj Linear)."""
    from safetensors.torch import load_file, save_file
    from transformers import HubertModel

    torch.manual_seed(1)
    model = HubertModel(_tiny_config()).eval()
    final_proj = torch.nn.Linear(HIDDEN, PROJECTED).eval()
    root = tmp_path_factory.mktemp("contentvec")
    dirs = {}
    plain = root / "plain"
    model.save_pretrained(plain)
    dirs["plain"] = plain

    state = load_file(plain / "model.safetensors")
    state["final_proj.weight"] = final_proj.weight.detach().clone()
    state["final_proj.bias"] = final_proj.bias.detach().clone()
    for kind in ("safetensors", "bin"):
        folder = root / kind
        folder.mkdir()
        (folder / "config.json").write_text((plain / "config.json").read_text())
        if kind == "safetensors":
            save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        else:
            torch.save(state, folder / "pytorch_model.bin")
        dirs[kind] = folder
    return dirs, model, final_proj


@pytest.fixture(scope="module")
def voice16k():
    """10 s of a steady sung tone with vibrato and a little noise, 16 kHz."""
    sr = 16000
    t = np.arange(10 * sr) / sr
    wav = harmonic(220 * 2 ** (0.3 / 12 * np.sin(2 * np.pi * 5.5 * t)), sr)
    return wav + 0.01 * np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32)


def _reference(model, final_proj, wav, layer, project):
    with torch.no_grad():
        hidden = model(torch.as_tensor(wav), output_hidden_states=True).hidden_states[layer]
        return final_proj(hidden) if project else hidden


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
@pytest.mark.parametrize("layer,project", [(LAYERS, False), (2, True), (1, False), (0, True)])
def test_matches_the_hubert_model_run_directly(contentvec, kind, layer, project, monkeypatch):
    dirs, model, final_proj = contentvec

    def no_network(*args, **kwargs):
        raise AssertionError("the content encoder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    encoder = HubertContentEncoder(dirs[kind], layer=layer, final_proj=project)
    assert isinstance(encoder, ContentEncoder)
    assert encoder.dim == (PROJECTED if project else HIDDEN)
    assert (encoder.sample_rate, encoder.hop, encoder.receptive_field) == (16000, 320, 400)

    wav = torch.randn(2, 16000) * 0.1
    features = encoder.encode(wav)
    assert features.shape == (2, 49, encoder.dim) and features.dtype == torch.float32
    torch.testing.assert_close(features, _reference(model, final_proj, wav, layer, project), rtol=1e-4, atol=1e-5)


def test_tiny_hubert_folder_and_registry(tiny_hubert_dir):
    encoder = load_content_encoder("hubert", tiny_hubert_dir, layer=2, final_proj=False, device="cpu")
    assert isinstance(encoder, HubertContentEncoder) and encoder.dim == 32 and encoder.name in CONTENT_ENCODERS
    assert encoder.encode(torch.zeros(16000)).shape == (1, 49, 32)
    with pytest.raises(ValueError) as info:
        load_content_encoder("wavlm", tiny_hubert_dir)
    assert "wavlm" in str(info.value) and "hubert, whisper" in str(info.value)


def test_encoder_record_and_mismatches(tiny_hubert_dir):
    """What preprocess records about the encoder, and how records are compared (unknown is no mismatch)."""
    encoder = load_content_encoder("hubert", tiny_hubert_dir, layer=2, final_proj=False, device="cpu")
    record = describe_encoder(encoder)
    assert record == {"name": "hubert", "dim": 32, "path": str(tiny_hubert_dir), "layer": 2, "final_proj": False}
    as_metadata = {"name": "hubert", "dim": "32", "path": str(tiny_hubert_dir), "layer": "2", "final_proj": "false"}
    assert normalize_encoder_record(as_metadata) == record
    assert encoder_mismatches(record, {"name": "hubert", "dim": 32}) == []  # older record: unknown keys
    assert encoder_mismatches(record, {**record, "path": "elsewhere"}) == []  # where it lives is not what it is
    assert encoder_mismatches(record, {**record, "layer": 9, "final_proj": True}) == ["layer 2 vs 9",
                                                                                       "final_proj False vs True"]
    assert encoder_mismatches({"name": "hubert"}, {"name": "contentvec"}) == ["name 'hubert' vs 'contentvec'"]


def test_bundled_encoder_group():
    with open(f"{conf_dir()}/content/synth.yaml") as handle:
        cfg = yaml.safe_load(handle)
    assert cfg == {"name": "hubert", "path": "pretrain/content/synth-hubert", "layer": 3, "final_proj": False,
                   "device": "cpu"}


def test_bad_layer_and_missing_final_proj_are_clear_errors(contentvec):
    dirs, _, _ = contentvec
    with pytest.raises(ValueError, match=rf"0\.\.{LAYERS}"):
        HubertContentEncoder(dirs["plain"], layer=LAYERS + 1)
    with pytest.raises(ValueError, match="final_proj"):
        HubertContentEncoder(dirs["plain"], layer=1, final_proj=True)


def test_weights_that_do_not_match_the_config_are_an_error(contentvec, tmp_path):
    from safetensors.torch import load_file, save_file

    dirs, _, _ = contentvec
    state = load_file(dirs["safetensors"] / "model.safetensors")
    del state["encoder.layers.0.attention.k_proj.weight"]
    (tmp_path / "config.json").write_text((dirs["safetensors"] / "config.json").read_text())
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="k_proj"):
        HubertContentEncoder(tmp_path, layer=1)


def test_missing_encoder_names_the_path_and_what_to_put_there(tmp_path):
    missing = tmp_path / "pretrain" / "content" / "hubert"
    with pytest.raises(ContentEncoderMissing) as info:
        load_content_encoder("hubert", missing)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(missing) in message and "config.json" in message and "model.safetensors" in message

    missing.mkdir(parents=True)
    with pytest.raises(ContentEncoderMissing, match="config.json is missing"):
        HubertContentEncoder(missing)
    (missing / "config.json").write_text(json.dumps(_tiny_config().to_dict()))
    with pytest.raises(ContentEncoderMissing, match="no weights file") as info:
        HubertContentEncoder(missing)
    assert str(missing) in str(info.value)
    legacy = tmp_path / "checkpoint_best_legacy_500.pt"
    legacy.write_bytes(b"not a folder")
    with pytest.raises(ContentEncoderMissing, match="not a folder"):
        HubertContentEncoder(legacy)


@pytest.mark.parametrize("samples", [16000 * 10, 16000 * 10 - 1, 16000 * 7 + 123, 350, 100])
def test_encode_audio_gives_samples_over_320_frames(contentvec, voice16k, samples):
    dirs, _, _ = contentvec
    encoder = HubertContentEncoder(dirs["safetensors"], layer=2, final_proj=True)
    features = encode_audio(encoder, voice16k[:samples], chunk_seconds=3.0, context_seconds=1.0)
    assert features.shape == (samples // 320, PROJECTED) and features.dtype == np.float32


def test_chunked_encoding_matches_one_shot(contentvec, voice16k):
    dirs, model, final_proj = contentvec
    encoder = HubertContentEncoder(dirs["safetensors"], layer=LAYERS)
    one_shot = encode_audio(encoder, voice16k, chunk_seconds=60.0)
    assert one_shot.shape == (500, HIDDEN)
    # One shot is the model run directly on the audio padded by 40 samples each side.
    padded = np.pad(voice16k, 40, mode="reflect")[None]
    np.testing.assert_allclose(one_shot, _reference(model, final_proj, padded, LAYERS, False)[0].numpy(),
                               rtol=1e-4, atol=1e-5)

    def worst_relative_error(features):
        return float(np.max(np.linalg.norm(features - one_shot, axis=1) / np.linalg.norm(one_shot, axis=1)))

    # 2 s chunks (4 of them the same length, batched) with 1 s of context either side.
    chunked = encode_audio(encoder, voice16k, chunk_seconds=2.0, context_seconds=1.0, batch_size=4)
    assert chunked.shape == one_shot.shape
    assert worst_relative_error(chunked) < 0.02
    # Without context the frames next to each join are visibly off: the context is what removes them.
    assert worst_relative_error(encode_audio(encoder, voice16k, chunk_seconds=2.0, context_seconds=0.0)) > 0.05


def test_align_to_frames_picks_the_nearest_frame_in_time():
    source = np.arange(500, dtype=np.float32)[:, None].repeat(3, axis=1)  # frame j holds j
    aligned = align_to_frames(source, 430, hop=512, sr=44100)
    assert aligned.shape == (430, 3)
    centres = (np.arange(430) + 0.5) * 512 / 44100
    np.testing.assert_array_equal(aligned[:, 0], np.floor(centres * 50))
    # Past the end of the source: the last frame is held; torch in, torch out.
    longer = align_to_frames(torch.from_numpy(source[:200]), 450, hop=512, sr=44100)
    assert isinstance(longer, torch.Tensor) and longer.shape == (450, 3) and longer[-1, 0] == 199
    assert align_to_frames(source, 1000, hop=160, sr=16000).shape == (1000, 3)
    np.testing.assert_array_equal(align_to_frames(source, 1000, hop=160, sr=16000)[:6, 0], [0, 0, 1, 1, 2, 2])


def test_config_matches_the_encoder_defaults():
    with open(f"{conf_dir()}/content/hubert.yaml") as handle:
        cfg = yaml.safe_load(handle)
    assert cfg["name"] in CONTENT_ENCODERS and cfg["path"] == "pretrain/content/hubert"
    defaults = inspect.signature(CONTENT_ENCODERS[cfg["name"]]).parameters
    for key in ("layer", "final_proj", "device"):
        assert cfg[key] == defaults[key].default


def test_transformers_is_imported_lazily():
    code = "import sys, ai_singer.features.content, ai_singer.features.pitch; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
