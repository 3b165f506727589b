"""RMVPE (ai_singer.features.rmvpe_model) against RVC's own implementation: tests/fixtures/rmvpe_reference.npz,
written by tools/make_rmvpe_fixture.py with the ``rvc`` package (random weights in rmvpe.pt's layout, reduced
widths; the published model's tensor names and shapes). And f0.method=rmvpe as a user meets it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ai_singer.errors import UserError
from ai_singer.features.f0_settings import F0Settings
from ai_singer.features.pitch import extract_f0
from ai_singer.features.rmvpe_model import Rmvpe, load_rmvpe

FIXTURE = Path(__file__).parent / "fixtures" / "rmvpe_reference.npz"
THRESHOLD = 0.03  # RVC's, the one the fixture's F0 was decoded with


@pytest.fixture(scope="module")
def reference() -> dict:
    return dict(np.load(FIXTURE))


def write_weights(reference: dict, path: Path, dtype: torch.dtype | None = None) -> Path:
    """The fixture's rmvpe.pt again: a plain state dict saved by torch.save (float16, as published)."""
    state = {key[2:]: torch.from_numpy(value) for key, value in reference.items() if key.startswith("w:")}
    if dtype is not None:
        state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def weights(reference, tmp_path_factory) -> Path:
    return write_weights(reference, tmp_path_factory.mktemp("rmvpe") / "rmvpe.pt")


def settings_for(path: Path | str, **overrides) -> F0Settings:
    return F0Settings.from_conf(**{"method": "rmvpe", "rmvpe_path": str(path), "device": "cpu", **overrides})


@pytest.mark.parametrize("dtype", [None, torch.float32], ids=["float16 file", "float32 file"])
def test_mel_salience_and_f0_equal_rvc(reference, weights, tmp_path, dtype):
    path = weights if dtype is None else write_weights(reference, tmp_path / "rmvpe32.pt", dtype)
    model = load_rmvpe(str(path))
    wav = torch.from_numpy(reference["audio"].astype(np.float32) / 32768.0)
    with torch.no_grad():
        mel = model.mel(wav[None])[0]
        salience = model(mel[None])[0].numpy()
    assert mel.shape == reference["mel"].shape == (128, len(wav) // 160 + 1)
    # compared as energies: 1e-4 relative (as 1e-4 in the log) where there is energy; near the log floor (1e-5) the
    # log magnifies float32 rounding, which differs between CPUs (up to 3e-3 in the log at -11.4 on an Intel Xeon)
    np.testing.assert_allclose(np.exp(mel.numpy()), np.exp(reference["mel"]), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(salience, reference["salience"], atol=1e-4)

    f0, confidence = (t.numpy() for t in model.track(wav))
    voiced = reference["f0"] > 0
    clear = np.abs(reference["salience"].max(axis=1) - THRESHOLD) > 1e-4  # frames not on the threshold's edge
    np.testing.assert_array_equal((confidence > THRESHOLD)[clear], voiced[clear])
    assert 0.2 < voiced.mean() < 0.9  # the fixture holds both kinds of frame
    cents = 1200 * np.abs(np.log2(f0[voiced] / reference["f0"][voiced]))
    assert cents.max() < 1.0, f"up to {cents.max():.3f} cents from RVC"


def test_the_published_layout_is_what_the_model_builds(reference):
    """The full-size network has exactly the tensors (names and shapes) of RVC's rmvpe.pt."""
    with torch.device("meta"):
        state = Rmvpe().state_dict()
    ours = np.array([f"{key}:{'x'.join(map(str, tensor.shape))}" for key, tensor in state.items()])
    assert sorted(ours) == sorted(reference["full_layout"])


def test_extract_f0_with_rmvpe_uses_the_file_and_rvc_threshold(reference, weights):
    from ai_singer.features import f0_rmvpe

    audio = reference["audio"].astype(np.float32) / 32768.0
    settings = settings_for(weights, f0_max=2100.0)
    f0 = extract_f0(audio, 16000, 160, None, settings)
    assert f0.shape == (len(audio) // 160,)
    times, pitch, confidence = f0_rmvpe.track(audio, 16000, settings)
    np.testing.assert_allclose(times[:2], [0.0, 0.01])
    # Frame i of extract_f0 (centred at (i + 0.5) * 10 ms) lies between tracker frames i and i + 1, whose
    # voicing is RVC's threshold (and conf/f0's range): voiced where both are, unvoiced where neither is, and
    # its F0 between theirs.
    assert settings.threshold() == THRESHOLD
    kept = (confidence >= THRESHOLD) & (pitch >= 0.9 * settings.f0_min) & (pitch <= 1.1 * settings.f0_max)
    n = len(f0)
    both, either = (kept[:-1] & kept[1:])[:n], (kept[:-1] | kept[1:])[:n]
    assert both.any() and (~either).any()
    assert (f0[both] > 0).all() and (f0[~either] == 0).all()
    low, high = np.minimum(pitch[:-1], pitch[1:])[:n], np.maximum(pitch[:-1], pitch[1:])[:n]
    assert np.all((f0[both] >= low[both] * 0.9999) & (f0[both] <= high[both] * 1.0001))


@pytest.mark.parametrize("samples", [512, 1024, 512 * 40 + 1, 512 * 87 + 300])
def test_frame_count_is_samples_over_hop_at_44k(weights, samples):
    wav = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    assert extract_f0(wav, 44100, 512, None, settings_for(weights)).shape == (samples // 512,)
    assert extract_f0(wav, 44100, 512, 17, settings_for(weights)).shape == (17,)


def test_short_audio_gives_a_frame_per_hop(weights):
    from ai_singer.features import f0_rmvpe

    times, f0, confidence = f0_rmvpe.track(np.zeros(300, dtype=np.float32), 16000, settings_for(weights))
    assert times.shape == f0.shape == confidence.shape == (2,)


def test_a_missing_rmvpe_pt_says_where_to_get_it(tmp_path):
    missing = tmp_path / "pretrain" / "rmvpe" / "rmvpe.pt"
    with pytest.raises(UserError) as info:
        extract_f0(np.zeros(16000, dtype=np.float32), 16000, 160, None, settings_for(missing))
    message = str(info.value)
    assert info.value.where == f"f0.rmvpe_path={missing}"
    assert "lj1995/VoiceConversionWebUI" in message and "\n" not in message


def test_the_default_path_is_under_pretrain():
    assert F0Settings.from_conf().rmvpe_path == "pretrain/rmvpe/rmvpe.pt"


@pytest.mark.parametrize("content", ["garbage", "other layout"])
def test_a_file_that_is_not_rmvpe_is_a_user_error(tmp_path, content):
    path = tmp_path / "rmvpe.pt"
    if content == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not RVC's RMVPE weights") as info:
        extract_f0(np.zeros(16000, dtype=np.float32), 16000, 160, None, settings_for(path))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_device_on_a_cpu_machine_names_the_setting(weights):
    with pytest.raises(UserError, match="f0.device='cuda'"):
        extract_f0(np.zeros(16000, dtype=np.float32), 16000, 160, None, settings_for(weights, device="cuda"))


@pytest.mark.parametrize("stage", ["preprocess", "infer"])
def test_preprocess_and_conversion_take_f0_method_rmvpe(stage, weights):
    import importlib

    from ai_singer.config import compose

    cfg = compose(stage, ["f0.method=rmvpe", f"f0.rmvpe_path={weights}", "f0.device=cpu"])
    settings = importlib.import_module(f"ai_singer.{stage}").settings_from_config(cfg).f0
    assert (settings.method, settings.rmvpe_path, settings.threshold()) == ("rmvpe", str(weights), THRESHOLD)
    assert extract_f0(np.zeros(4410, dtype=np.float32), 44100, 512, None, settings).shape == (8,)
