"""The neural F0 models written here against their packages' own output: FCPE (ai_singer.features.fcpe_model
vs torchfcpe; tests/fixtures/fcpe_reference.npz from tools/make_fcpe_fixture.py) and CREPE tiny
(ai_singer.features.crepe_model vs torchcrepe; tests/fixtures/crepe_tiny_reference.npz from
tools/make_crepe_fixture.py). The tools' docstrings say how the fixtures were made."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_singer.features.f0_settings import F0Settings
from ai_singer.features.pitch import extract_f0

#: How far above the range's top bin the local average over +-4 bins of 20 cents can reach.
LOCAL_CENTS = 80.0

FIXTURES = Path(__file__).parent / "fixtures"


def installed(module):
    """``module`` (f0_fcpe or f0_crepe) when its package's weights are installed; the test is skipped otherwise."""
    from ai_singer.errors import UserError

    try:
        module.weights_path()
    except UserError as error:
        pytest.skip(str(error))
    return module


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "fcpe_reference.npz"))


@pytest.fixture(scope="module")
def fcpe_track():
    from ai_singer.features import f0_fcpe

    return installed(f0_fcpe).track


def test_f0_and_confidence_equal_the_package(reference, fcpe_track):
    audio = reference["audio"].astype(np.float32) / 32768.0
    times, f0, confidence = fcpe_track(audio, int(reference["sample_rate"]), 50.0, 1100.0)
    assert f0.shape == reference["f0"].shape == confidence.shape == times.shape
    np.testing.assert_allclose(times[:2], [0.005, 0.015])
    cents = 1200 * np.abs(np.log2(f0 / reference["f0"]))
    assert cents.max() < 1.0, f"up to {cents.max():.2f} cents from the package"
    np.testing.assert_allclose(confidence, reference["confidence"], atol=1e-4)
    # The package's own voicing (threshold 0.006) is ours with the same threshold.
    voiced = reference["f0_voiced"] > 0
    np.testing.assert_array_equal(confidence > 0.006, voiced)
    assert 0.3 < voiced.mean() < 0.9  # the fixture holds both kinds of frame


def test_fcpe_through_extract_f0_follows_the_glide(reference, fcpe_track):
    audio = reference["audio"].astype(np.float32) / 32768.0
    settings = F0Settings.from_conf(method="fcpe", voicing_threshold={"fcpe": 0.006})
    f0 = extract_f0(audio, 16000, 160, None, settings)
    assert f0.shape == (len(audio) // 160,)
    glide = f0[5:55]  # 50-550 ms: 110 Hz rising to 880 Hz with vibrato
    assert (glide > 0).all() and glide[-1] > 4 * glide[0]


def test_crepe_tiny_scores_equal_the_package():
    import torch

    from ai_singer.features import f0_crepe
    from ai_singer.features.crepe_model import Crepe

    crepe = installed(f0_crepe)
    reference = dict(np.load(FIXTURES / "crepe_tiny_reference.npz"))
    wav = torch.from_numpy(reference["audio"].astype(np.float32) / 32768.0)
    with torch.no_grad():
        scores = crepe._model()(Crepe.windows(wav)).numpy()
    assert scores.shape == reference["scores"].shape == (len(wav) // 160 + 1, 360)
    np.testing.assert_allclose(scores, reference["scores"].astype(np.float32), atol=2e-3)  # stored as float16


def test_crepe_tiny_through_extract_f0_follows_the_glide():
    from ai_singer.features import f0_crepe

    installed(f0_crepe)
    audio = dict(np.load(FIXTURES / "crepe_tiny_reference.npz"))["audio"].astype(np.float32) / 32768.0
    f0 = extract_f0(audio, 16000, 160, None,
                    F0Settings.from_conf(method="crepe_tiny", voicing_threshold={"crepe_tiny": 0.1}))
    glide = f0[10:55]  # 100-550 ms: 110 Hz rising to 880 Hz with vibrato
    assert (glide > 0).all() and glide[-1] > 4 * glide[0]
    times, pitch, confidence = f0_crepe.track(audio, 16000, 50.0, 1100.0)
    np.testing.assert_allclose(times[:2], [0.0, 0.01])
    assert pitch.max() <= 1100.0 * 2 ** (LOCAL_CENTS / 1200)  # the best bin is searched within the range
