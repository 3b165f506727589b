"""F0 extraction accuracy on a known sung contour, frame counts, and pitch arithmetic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import harmonic, phrase_with_silences
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from ai_singer.config import conf_group
from ai_singer.errors import UserError
from ai_singer.features.f0_settings import F0Settings
from ai_singer.features.pitch import (
    F0_EXTRACTORS, SCALES, choose_transpose, extract_f0, hz_to_midi, interpolate_unvoiced, midi_to_hz, snap_to_scale,
    transpose,
)


def f0_settings(method: str, **overrides) -> F0Settings:
    """conf/f0 (the only place its values are written) with another method. RMVPE's accuracy needs the real
    rmvpe.pt, which ships in no package: without it at f0.rmvpe_path the test is skipped
    (tests/test_f0_rmvpe.py tests the network against RVC's with random weights)."""
    settings = F0Settings.from_conf(method=method, **overrides)
    if method == "rmvpe" and not Path(settings.rmvpe_path).is_file():
        pytest.skip(f"no real RMVPE weights at f0.rmvpe_path={settings.rmvpe_path}")
    return settings


def cents(a, b):
    return 1200.0 * np.abs(np.log2(np.asarray(a, dtype=np.float64) / np.asarray(b, dtype=np.float64)))


@pytest.fixture(scope="module", params=[(44100, 512), (16000, 160)], ids=["44k-hop512", "16k-hop160"])
def phrase(request):
    sr, hop = request.param
    wav, truth = phrase_with_silences(sr)
    n_frames = len(wav) // hop
    centre_samples = ((np.arange(n_frames) + 0.5) * hop).astype(int)
    return sr, hop, wav, truth[centre_samples]


@pytest.mark.parametrize("method", sorted(F0_EXTRACTORS))
def test_f0_follows_a_sung_phrase(phrase, method):
    sr, hop, wav, truth = phrase
    f0 = extract_f0(wav, sr, hop, len(truth), f0_settings(method))
    assert f0.dtype == np.float32 and f0.shape == truth.shape

    truly_voiced = truth > 0
    # Frames at least 35 ms (3 frames at 44.1 kHz / 512) away from a note/rest boundary and from the clip's
    # edges (a neural tracker's window reaches past them).
    width = 2 * int(np.ceil(0.035 * sr / hop)) + 1
    clearly_voiced = minimum_filter1d(truly_voiced.astype(int), width, mode="constant", cval=0) == 1
    clearly_rest = maximum_filter1d(truly_voiced.astype(int), width) == 0
    assert clearly_voiced.sum() > 200 and clearly_rest.sum() > 40

    assert (f0[clearly_voiced] > 0).all(), "a clearly sung frame was marked unvoiced"
    assert (f0[clearly_rest] == 0).all(), "a frame inside a rest was marked voiced"
    errors = cents(f0[clearly_voiced], truth[clearly_voiced])
    assert np.median(errors) < 10.0
    assert np.percentile(errors, 95) < 20.0
    # The voicing decision is wrong only within 25 ms (two 44.1 kHz / 512 frames) of a boundary.
    wrong = (f0 > 0) != truly_voiced
    edges = np.abs(np.diff(truly_voiced.astype(int), prepend=0, append=0))  # boundaries, clip edges included
    near = int(np.ceil(0.025 * sr / hop))
    near_boundary = maximum_filter1d(edges[:-1] + edges[1:], 2 * near + 1) > 0
    assert not (wrong & ~near_boundary).any()
    assert wrong.sum() <= 2 * 6 * near  # 4 boundaries and 2 edges, at most `near` frames each side


@pytest.mark.parametrize("method", sorted(F0_EXTRACTORS))
@pytest.mark.parametrize("samples", [512 * 40, 512 * 40 + 1, 512 * 41 - 1, 512 * 87 + 300])
def test_frame_count_is_samples_over_hop(method, samples):
    wav = harmonic(220.0, 44100, samples / 44100)[:samples]
    f0 = extract_f0(wav, 44100, 512, None, f0_settings(method))
    assert f0.shape == (samples // 512,)
    assert np.median(f0[f0 > 0]) == pytest.approx(220.0, rel=0.01)
    # An explicit n_frames is honoured exactly (e.g. the trimmed clip length).
    assert extract_f0(wav, 44100, 512, 17, f0_settings(method)).shape == (17,)


@pytest.mark.parametrize("method", sorted(F0_EXTRACTORS))
def test_very_short_audio_works(method):
    for samples in (512, 1024, 2048):
        wav = harmonic(220.0, 44100, samples / 44100)[:samples]
        f0 = extract_f0(wav, 44100, 512, None, f0_settings(method))
        assert f0.shape == (samples // 512,)
        assert ((f0 == 0) | (np.abs(f0 - 220.0) < 10.0)).all()


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(UserError) as info:
        f0_settings("yin")
    assert info.value.where == "f0.method='yin'"
    for name in ("harvest", "dio", "parselmouth", "swift"):
        assert name in str(info.value)


def test_silence_is_unvoiced_and_short_input_gives_no_frames():
    assert not extract_f0(np.zeros(44100, dtype=np.float32), 44100, 512, None, f0_settings("dio")).any()
    assert extract_f0(np.zeros(100, dtype=np.float32), 44100, 512, None, f0_settings("harvest")).shape == (0,)


def test_the_settings_are_the_callers():
    """extract_f0 has no defaults of its own: conf/f0 is the one place (tests/test_config.py)."""
    with pytest.raises(TypeError):
        extract_f0(np.zeros(44100, dtype=np.float32), 44100, 512, None)  # type: ignore[call-arg]
    assert conf_group("f0")["method"] in F0_EXTRACTORS
    with pytest.raises(UserError, match="missing key"):
        F0Settings.from_values({"method": "dio", "f0_min": 50.0, "f0_max": 1100.0})


def test_interpolate_unvoiced_fills_gaps_in_log_f0_and_holds_edges():
    f0 = np.array([0, 0, 100, 0, 0, 0, 1600, 200, 0, 0], dtype=np.float32)
    filled, voiced = interpolate_unvoiced(f0)
    assert filled.dtype == np.float32 and voiced.dtype == bool
    assert voiced.tolist() == [False, False, True, False, False, False, True, True, False, False]
    # 100 -> 1600 is 4 octaves over 4 steps: one octave per frame.
    np.testing.assert_allclose(filled, [100, 100, 100, 200, 400, 800, 1600, 200, 200, 200], rtol=1e-5)
    empty, none_voiced = interpolate_unvoiced(np.zeros(5))
    assert not empty.any() and not none_voiced.any()


def test_transpose_and_midi_conversions():
    f0 = np.array([220.0, 0.0, 440.0])
    np.testing.assert_allclose(transpose(f0, 12), [440.0, 0.0, 880.0])
    np.testing.assert_allclose(transpose(f0, -7), [220 * 2 ** (-7 / 12), 0.0, 440 * 2 ** (-7 / 12)])
    np.testing.assert_allclose(hz_to_midi([440.0, 261.6255653, 880.0]), [69.0, 60.0, 81.0], atol=1e-6)
    np.testing.assert_allclose(midi_to_hz([69.0, 60.0, 57.5]), [440.0, 261.6255653, 220 * 2 ** (0.5 / 12)])
    np.testing.assert_allclose(midi_to_hz(hz_to_midi([123.4, 987.6])), [123.4, 987.6])
    assert hz_to_midi(0.0) == -np.inf


def test_snap_to_scale_pulls_toward_scale_notes():
    # C4 + 30 cents, C#4 (not in C major), E4 - 40 cents, rest, A4 + 10 cents
    midi = np.array([60.3, 61.0, 63.6, -np.inf, 69.1])
    f0 = np.where(np.isfinite(midi), midi_to_hz(midi), 0.0)
    snapped = hz_to_midi(snap_to_scale(f0, "C", "major", 1.0))
    np.testing.assert_allclose(snapped[[0, 2, 4]], [60.0, 64.0, 69.0], atol=1e-4)
    assert snapped[1] in (pytest.approx(60.0, abs=1e-4), pytest.approx(62.0, abs=1e-4))
    assert snap_to_scale(f0, "C", "major", 1.0)[3] == 0.0

    np.testing.assert_allclose(snap_to_scale(f0, "C", "major", 0.0), f0, rtol=1e-6)
    half = hz_to_midi(snap_to_scale(f0, "C", "major", 0.5))
    np.testing.assert_allclose(half[[0, 2, 4]], [60.15, 63.8, 69.05], atol=1e-4)
    # C# major contains C# (61) and F (65); A minor contains G (67), not G# (68).
    np.testing.assert_allclose(hz_to_midi(snap_to_scale(midi_to_hz([61.2, 64.6]), "C#", "major")), [61.0, 65.0], atol=1e-4)
    np.testing.assert_allclose(hz_to_midi(snap_to_scale(midi_to_hz([67.4]), "A", "minor")), [67.0], atol=1e-4)
    np.testing.assert_allclose(hz_to_midi(snap_to_scale(midi_to_hz([61.4, 61.6]), "Eb", "chromatic")), [61.0, 62.0], atol=1e-4)
    # Snapping across an octave boundary: B3 - 10 cents in C major is B3, 11.6 above C rounds up to C.
    np.testing.assert_allclose(hz_to_midi(snap_to_scale(midi_to_hz([58.9, 71.6]), "C")), [59.0, 72.0], atol=1e-4)
    assert {"major", "minor", "chromatic"} <= set(SCALES)
    with pytest.raises(ValueError, match="dorian"):
        snap_to_scale(f0, "C", "dorian")
    with pytest.raises(ValueError, match="H"):
        snap_to_scale(f0, "H", "major")


# --------------------------------------------------------------------------------------------------
# transpose=auto (issue 9: rounding the median difference to the nearest octave flipped octaves between
# songs of one register)

MALE = (130.0, (100.0, 190.0))     # singer median and p05-p95 range, Hz
FEMALE = (300.0, (210.0, 430.0))


def song_f0(median_hz: float, seed: int = 0, spread_semitones: float = 2.5, frames: int = 3000) -> np.ndarray:
    """F0 frames of a song: notes scattered around ``median_hz`` (log-normal), a quarter unvoiced."""
    rng = np.random.default_rng(seed)
    f0 = median_hz * 2.0 ** (rng.normal(0.0, spread_semitones, frames) / 12.0)
    f0[rng.random(frames) < 0.25] = 0.0
    return f0 * median_hz / np.median(f0[f0 > 0])  # exactly this median


@pytest.mark.parametrize("singer", [MALE, FEMALE], ids=["male", "female"])
@pytest.mark.parametrize("apart", [0.0, 2.0, 5.0, 6.5, 7.0])
@pytest.mark.parametrize("direction", [1, -1], ids=["source-higher", "source-lower"])
def test_auto_transpose_leaves_a_same_register_pair_alone(singer, apart, direction):
    median, singer_range = singer
    decision = choose_transpose(song_f0(median * 2 ** (direction * apart / 12)), median, singer_range)
    assert decision.semitones == 0.0, decision.reason


@pytest.mark.parametrize("apart", [10.0, 11.0, 12.0, 13.0, 14.0])
def test_auto_transpose_moves_a_cross_register_pair_one_octave(apart):
    female_song = song_f0(MALE[0] * 2 ** (apart / 12))  # female source, male singer
    assert choose_transpose(female_song, *MALE).semitones == -12.0
    male_song = song_f0(FEMALE[0] * 2 ** (-apart / 12))  # male source, female singer
    decision = choose_transpose(male_song, *FEMALE)
    assert decision.semitones == 12.0
    assert decision.in_range > decision.in_range_without  # the octave puts more of the song in her range
    assert decision.singer_median_hz == FEMALE[0]
    assert decision.source_median_hz == pytest.approx(FEMALE[0] * 2 ** (-apart / 12))
    assert f"{FEMALE[0]:.0f} Hz" in decision.reason


def test_auto_transpose_gives_songs_of_one_register_one_octave():
    """A batch of songs by one register whose medians straddle the old 6-semitone rounding boundary."""
    for singer_median, singer_range in (MALE, FEMALE):
        for sign in (1, -1):
            offsets = np.arange(3.0, 9.01, 0.25)  # semitones between each song's median and the singer's
            songs = [song_f0(singer_median * 2 ** (sign * offset / 12), seed=i) for i, offset in enumerate(offsets)]
            chosen = {choose_transpose(f0, singer_median, singer_range).semitones for f0 in songs}
            assert chosen == {0.0}
            nearest_octave = {12 * round(-sign * offset / 12) for offset in offsets}
            assert len(nearest_octave) == 2  # the old rule (nearest octave) split them


def test_auto_transpose_range_check_and_edge_cases():
    # Medians an octave apart, but most of the source would land outside the singer's range: keep it.
    f0 = np.concatenate([np.full(40, 60.0), np.full(20, 95.0), np.full(40, 180.0)])
    decision = choose_transpose(f0, 190.0, (150.0, 230.0))
    assert decision.semitones == 0.0 and decision.in_range == pytest.approx(0.4)
    assert decision.in_range_without == pytest.approx(0.4) and "kept" in decision.reason
    assert choose_transpose(f0, 190.0).semitones == 12.0  # without the range: the medians decide
    # Several octaves: only as far as needed; semitone steps: (nearly) the nearest semitone.
    assert choose_transpose(np.array([110.0]), 500.0).semitones == 24.0
    assert choose_transpose(np.array([220.0]), 330.0, step=1).semitones == 7.0
    assert choose_transpose(np.array([110.0]), 220.0, step=1).semitones == 12.0
    # Nothing to compare: 0, with the reason.
    assert choose_transpose(np.zeros(10), 200.0).semitones == 0.0
    assert "no voiced" in choose_transpose(np.zeros(10), 200.0).reason
    assert choose_transpose(np.array([200.0]), None).semitones == 0.0
