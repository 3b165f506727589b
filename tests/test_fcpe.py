"""FCPE written here (ai_singer.features.fcpe_model) against the torchfcpe package's own output: the fixture
tests/fixtures/fcpe_reference.npz was written by tools/make_fcpe_fixture.py (its docstring says how)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai_singer.features.f0_settings import F0Settings
from ai_singer.features.pitch import extract_f0

FIXTURE = Path(__file__).parent / "fixtures" / "fcpe_reference.npz"


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def fcpe_track():
    from ai_singer.errors import UserError
    from ai_singer.features import f0_fcpe

    try:
        f0_fcpe.weights_path()
    except UserError as error:
        pytest.skip(str(error))
    return f0_fcpe.track


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
