"""tools/train_content_encoder.py: trains a small HuBERT on a tiny synthetic corpus, saves it in
Hugging Face format, and the result loads through the `hubert` content backend."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tools.synth` (the corpus generator)


def _load_tool():
    name = "train_content_encoder"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "train_content_encoder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tce = _load_tool()

TINY = ["--hidden", "32", "--layers", "2", "--heads", "2", "--intermediate", "64",
        "--conv-dim", "16,16,16,32,32,32,32", "--pos-conv-kernel", "8", "--pos-conv-groups", "4",
        "--batch-size", "4", "--crop-frames", "50", "--threads", "1", "--no-progress", "--dropout", "0.0"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """3 singers (the last held out), 2 short raw phrases each + 1 parallel phrase, no songs."""
    from tools.synth.corpus import CorpusSettings, generate_corpus

    out = tmp_path_factory.mktemp("synth")
    generate_corpus(CorpusSettings(out=out, singers=3, phrases_per_singer=2, seconds=2.0, held_out=1, songs=0,
                                   parallel_phrases=1, progress=False))
    return out


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory) -> tuple[Path, dict]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("encoders") / "synth-hubert"
    code = tce.main(["--corpus", str(tiny_corpus), "--out", str(out), "--steps", "40", "--lr", "3e-3",
                     "--seed", "0", *TINY])
    assert code == 0
    return out, json.loads((out / "training.json").read_text())


def test_artifact_is_a_hubert_folder_that_describes_itself(trained, tiny_corpus):
    out, doc = trained
    assert {"config.json", "model.safetensors", "phone_head.safetensors", "training.json"} <= {
        p.name for p in out.iterdir()}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left behind
    corpus = json.loads((tiny_corpus / "corpus.json").read_text())
    held_out = sorted(s["name"] for s in corpus["singers"] if s["split"] == "held_out")
    assert doc["corpus"]["held_out_singers"] == held_out
    assert not set(doc["corpus"]["train_singers"]) & set(held_out)  # held-out voices never trained on
    assert doc["corpus"]["seed"] == corpus["seed"]
    assert doc["content_overrides"] == {"name": "hubert", "layer": 2, "final_proj": False, "dim": 32}
    assert 0.0 <= doc["frame_accuracy_held_out"] <= 1.0
    assert doc["training"]["steps"] == 40 and "--steps 40" in doc["command"] and doc["created"]
    assert doc["training"]["loss_last"] < doc["training"]["loss_first"]  # it learned something


def test_loads_through_the_hubert_content_backend(trained):
    from ai_singer.features.content import HubertContentEncoder, encode_audio

    out, doc = trained
    encoder = HubertContentEncoder(out, layer=doc["content_overrides"]["layer"], final_proj=False)
    assert encoder.dim == 32 and encoder.hop == 320 and encoder.receptive_field == 400
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    features = encode_audio(encoder, wav)
    assert features.shape == (50, 32)  # 50 Hz frames at 16 kHz
    assert np.isfinite(features).all()


def test_saved_encoder_reproduces_the_reported_accuracy(trained, tiny_corpus):
    """Held-out accuracy recomputed from the saved files (backend + phone head) equals training.json's."""
    from safetensors.torch import load_file

    from ai_singer.features.content import HubertContentEncoder, encode_audio

    out, doc = trained
    encoder = HubertContentEncoder(out, layer=2, final_proj=False)
    head = load_file(str(out / "phone_head.safetensors"))
    corpus = tce.load_corpus(tiny_corpus, progress=False)
    correct = total = 0
    for clip in corpus.held_out:
        features = torch.from_numpy(encode_audio(encoder, clip.audio))
        predicted = (features @ head["weight"].T + head["bias"]).argmax(-1).numpy()
        assert len(predicted) == len(clip.labels)
        correct += int((predicted == clip.labels).sum())
        total += len(clip.labels)
    assert correct / total == pytest.approx(doc["frame_accuracy_held_out"], abs=0.01)


def test_same_seed_gives_the_same_weights(tiny_corpus, tmp_path):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng_state = torch.get_rng_state()
    runs = []
    for name in ("a", "b"):
        assert tce.main(["--corpus", str(tiny_corpus), "--out", str(tmp_path / name), "--steps", "3", *TINY]) == 0
        runs.append(load_file(str(tmp_path / name / "model.safetensors")))
    # the caller's torch settings and RNG are left as they were
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_a_failed_save_leaves_the_old_artifact_whole(tmp_path, monkeypatch):
    """The artifact is written in a temporary folder and swapped in: a save that fails after the encoder's
    files are written (here the phone head's) leaves the previous artifact byte for byte and nothing beside
    it; a later save replaces it whole."""
    size = tce.EncoderSize(hidden=32, layers=2, heads=2, intermediate=64, conv_dim=(16, 16, 16, 32, 32, 32, 32),
                           pos_conv_kernel=8, pos_conv_groups=4, dropout=0.0)
    torch.manual_seed(0)
    out = tmp_path / "encoders" / "synth-hubert"
    tce.write_artifact(out, tce.PhoneTagger(tce.build_config(size), 3), ["sil", "a", "b"], {"run": 1})
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert {"config.json", "model.safetensors", "phone_head.safetensors", "training.json"} <= before.keys()

    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tce.write_artifact(out, tce.PhoneTagger(tce.build_config(size), 3), ["sil", "a", "b"], {"run": 2})
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert [path.name for path in out.parent.iterdir()] == [out.name]  # no temporary folder left
    monkeypatch.undo()

    tce.write_artifact(out, tce.PhoneTagger(tce.build_config(size), 3), ["sil", "a", "b"], {"run": 3})
    assert json.loads((out / "training.json").read_text()) == {"run": 3}
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert [path.name for path in out.parent.iterdir()] == [out.name]


def test_speed_perturbation_keeps_labels_on_the_audio():
    """A clip alternating tone (label 1) and silence (label 0): after resampling by 1.19 or 0.84, each
    output frame's label still says whether that frame is loud."""
    sr, hop = 16000, 320
    pattern = np.repeat(np.array([0, 1, 1, 0, 1, 0, 0, 1] * 10), 7)  # runs of 7 frames
    t = np.arange(len(pattern) * hop) / sr
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * np.repeat(pattern, hop)).astype(np.float32)
    clip = tce.Clip("s", "p", Path("p.wav"), audio, pattern.astype(np.int64))
    for rate in (1.19, 0.84):
        settings = tce.TrainSettings(batch_size=8, crop_frames=60, augment_prob=1.0, speed_min=rate, speed_max=rate,
                                     gain_db=0.0, seed=1)
        batch, labels = tce.CropSampler([clip], settings).batch()
        assert batch.shape == (8, 60 * hop + 80) and labels.shape == (8, 60)
        # frame j is centred on padded sample 40 + (j + 0.5) * hop: look at the middle 100 samples
        centres = 40 + (np.arange(60) + 0.5) * hop
        windows = np.stack([np.arange(int(c) - 50, int(c) + 50) for c in centres])
        loud = batch[:, windows].pow(2).mean(-1).sqrt() > 0.1
        valid = labels != tce.IGNORE_LABEL
        assert valid.float().mean() > 0.9
        agreement = (loud == (labels == 1))[valid].float().mean().item()
        assert agreement > 0.95, (rate, agreement)


def test_frame_loss_trims_an_off_by_one_frame():
    logits = torch.zeros(2, 11, 5)
    logits[..., 3] = 10.0
    labels = torch.full((2, 10), 3, dtype=torch.long)
    assert tce.frame_loss(logits, labels).item() < 1e-3
    assert tce.frame_loss(logits[:, :9], labels).item() < 1e-3


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    code = tce.main(["--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "enc"), "--steps", "1",
                     "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "corpus.json" in err and "file not found" in err
    assert not (tmp_path / "enc").exists()


def test_bad_labels_name_the_file(tiny_corpus, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_corpus, broken)
    labels = sorted((broken / "raw").glob("*/*.labels.npy"))[0]
    np.save(labels, np.full(3, 99, dtype=np.int16))
    with pytest.raises(tce.CorpusError, match=labels.name):
        tce.load_corpus(broken, progress=False)
