"""Post-processing of F0 tracks: octave repair keeps real leaps, median smoothing keeps vibrato; the settings
that turn them on; the message when a tracker's optional package is missing."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import harmonic

from ai_singer.errors import UserError
from ai_singer.features.f0_postprocess import median_smooth, repair_octaves
from ai_singer.features.f0_settings import F0Settings
from ai_singer.features.pitch import extract_f0

STEP = 0.005  # s


def cents(a, b):
    return 1200.0 * np.abs(np.log2(np.asarray(a) / np.asarray(b)))


def test_octave_repair_folds_short_jumps_and_keeps_a_real_leap():
    truth = np.concatenate([np.full(200, 220.0), np.zeros(20), np.full(200, 440.0)])  # a rest, then an octave up
    tracked = truth.copy()
    tracked[50:60] *= 2.0     # 50 ms on the second harmonic
    tracked[300:306] /= 2.0   # 30 ms on the sub-harmonic
    tracked[100:104] *= 1.5   # a fifth off: not an octave error, left alone
    repaired = repair_octaves(tracked, STEP, 0.3)
    expected = truth.copy()
    expected[100:104] *= 1.5
    assert np.array_equal(repaired > 0, truth > 0)
    np.testing.assert_allclose(repaired, expected)
    assert np.array_equal(repair_octaves(tracked, STEP, 0.0), tracked)  # 0 = off


def test_median_smoothing_removes_spikes_and_keeps_vibrato():
    t = np.arange(400) * STEP
    vibrato = 440.0 * 2.0 ** (100.0 * np.sin(2 * np.pi * 6.0 * t) / 1200.0)  # +-100 cents at 6 Hz
    tracked = vibrato.copy()
    tracked[[57, 211]] *= 1.2  # one-frame spikes
    tracked[300:310] = 0.0     # a gap: its neighbours are not smoothed across it
    smoothed = median_smooth(tracked, STEP, 0.03)
    voiced = tracked > 0
    assert np.array_equal(smoothed > 0, voiced)
    assert cents(smoothed[voiced], vibrato[voiced]).max() < 15.0  # vibrato kept within 15 cents, spikes gone
    assert np.array_equal(median_smooth(tracked, STEP, 0.0), tracked)


def test_post_processing_settings_reach_extract_f0():
    sr, hop = 16000, 160
    wav = harmonic(220.0, sr, 1.0)
    plain = extract_f0(wav, sr, hop, None, F0Settings.from_conf(method="dio", octave_repair_ms=0, median_ms=0))
    post = extract_f0(wav, sr, hop, None, F0Settings.from_conf(method="dio", octave_repair_ms=300, median_ms=30))
    assert plain.shape == post.shape and np.array_equal(plain > 0, post > 0)
    assert np.median(cents(post[post > 0], 220.0)) < 5.0


@pytest.mark.parametrize("key, value, where", [("median_ms", -1, "f0.median_ms=-1"),
                                               ("octave_repair_ms", -5, "f0.octave_repair_ms=-5"),
                                               ("f0_max", 10.0, "f0.f0_min=50 f0.f0_max=10")])
def test_bad_values_name_the_setting(key, value, where):
    with pytest.raises(UserError) as info:
        F0Settings.from_conf(**{key: value})
    assert info.value.where == where


def test_a_threshold_missing_for_a_confidence_tracker_is_named():
    settings = F0Settings.from_conf(method="swift", voicing_threshold={})
    with pytest.raises(UserError, match="f0.voicing_threshold.swift"):
        extract_f0(harmonic(220.0, 16000, 0.5), 16000, 160, None, settings)


def test_a_missing_swift_f0_says_how_to_install_it(monkeypatch):
    from ai_singer.features import f0_swift

    f0_swift._detector.cache_clear()
    monkeypatch.setitem(sys.modules, "swift_f0", None)  # `import swift_f0` now raises ImportError
    try:
        with pytest.raises(UserError) as info:
            extract_f0(harmonic(220.0, 16000, 0.5), 16000, 160, None, F0Settings.from_conf(method="swift"))
    finally:
        f0_swift._detector.cache_clear()
    assert info.value.where == "f0.method=swift"
    assert "pip install 'swift-f0>=0.3,<0.4'" in str(info.value)


def test_a_missing_torchfcpe_says_how_to_install_it_without_its_dependencies(monkeypatch):
    from ai_singer.features import f0_fcpe

    f0_fcpe._model.cache_clear()
    from ai_singer.features import wheel_weights

    monkeypatch.setattr(wheel_weights.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(UserError) as info:
            extract_f0(harmonic(220.0, 16000, 0.5), 16000, 160, None, F0Settings.from_conf(method="fcpe"))
    finally:
        f0_fcpe._model.cache_clear()
    assert info.value.where == "f0.method=fcpe"
    assert "pip install --no-deps torchfcpe==0.0.4" in str(info.value)
