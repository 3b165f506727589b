"""ai_singer.metrics on known cases: the mel-cepstrum's definition, MCD (zero for identical signals, blind to
gain, growing with a formant shift, DTW undoing a time shift), F0 error in cents (a transposed tone reads
as the transposition), voicing agreement, and a speaker classifier that tells two synthetic singers apart."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import harmonic

from ai_singer import metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

SR = 16000


def vowel(f0_hz: float, formants_hz=(700.0, 1200.0, 2600.0), seconds: float = 1.0, sr: int = SR,
          formant_shift: float = 1.0, vibrato_cents: float = 20.0) -> np.ndarray:
    """A sung vowel: harmonics of a (slightly vibrating) F0 shaped by resonances at ``formants * shift``."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = f0_hz * 2 ** (vibrato_cents / 1200 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    for k in range(1, int(sr / 2 / f0_hz)):
        freq = k * f0
        gain = sum(1.0 / (1.0 + ((freq - f * formant_shift) / (80.0 + 0.05 * f)) ** 2) for f in formants_hz)
        out += (freq < sr / 2) * gain * np.sin(k * phase) / k ** 0.5
    return (0.3 * out / np.max(np.abs(out))).astype(np.float32)


def test_mel_cepstrum_definition_on_a_known_envelope():
    """ln|H(b)| = c0 + 2 c1 cos(b) on the warped axis gives exactly (c0, c1, 0, ...)."""
    n_bins, alpha = 513, metrics.mel_warping_alpha(SR)
    omega = np.linspace(0, np.pi, n_bins)
    warped = omega + 2 * np.arctan(alpha * np.sin(omega) / (1 - alpha * np.cos(omega)))
    log_amplitude = 0.7 + 2 * 0.25 * np.cos(warped)
    power = np.exp(2 * log_amplitude)[None, :]
    c = metrics.envelope_to_mel_cepstrum(power, SR, n_coeffs=6)
    np.testing.assert_allclose(c[0], [0.7, 0.25, 0, 0, 0, 0, 0], atol=2e-3)
    assert 0.44 < alpha < 0.48 and 0.56 < metrics.mel_warping_alpha(44100) < 0.61


def test_mcd_is_zero_for_itself_blind_to_gain_and_grows_with_formant_shift():
    x = vowel(220.0)
    same = metrics.mel_cepstral_distortion(x, x, SR)
    assert same.mcd_db == 0.0 and same.frames > 80  # 1 s at 10 ms frames, all voiced
    assert metrics.mel_cepstral_distortion(x, 0.25 * x, SR).mcd_db < 0.05  # c0 (level) is not compared
    shifts = [1.03, 1.10, 1.25]
    mcds = [metrics.mel_cepstral_distortion(x, vowel(220.0, formant_shift=s), SR).mcd_db for s in shifts]
    assert 0.3 < mcds[0] < mcds[1] < mcds[2], mcds
    # the pitch alone (same formants) moves the envelope far less than a 25% formant shift
    assert metrics.mel_cepstral_distortion(x, vowel(260.0), SR).mcd_db < mcds[2]


def test_dtw_alignment_undoes_a_time_shift():
    a = np.concatenate([vowel(220.0, (300.0, 2300.0, 3000.0), 0.6), vowel(220.0, (750.0, 1100.0, 2500.0), 0.6)])
    b = np.concatenate([vowel(220.0, (300.0, 2300.0, 3000.0), 0.9), vowel(220.0, (750.0, 1100.0, 2500.0), 0.3)])
    framewise = metrics.mel_cepstral_distortion(a, b, SR)
    aligned = metrics.mel_cepstral_distortion(a, b, SR, align="dtw")
    assert aligned.alignment == "dtw" and aligned.frames >= min(framewise.frames, 100)
    assert aligned.mcd_db < 0.5 * framewise.mcd_db, (aligned, framewise)
    with pytest.raises(ValueError, match="align must be one of"):
        metrics.mel_cepstral_distortion(a, b, SR, align="nearest")


def test_mcd_counts_only_frames_voiced_in_both_and_rejects_bad_audio():
    x = vowel(220.0, seconds=1.0)
    half_silent = x.copy()
    half_silent[SR // 2:] = 0.0
    result = metrics.mel_cepstral_distortion(x, half_silent, SR)
    assert 30 < result.frames < 60 and result.mcd_db < 0.5  # the voiced half is identical
    silent = metrics.mel_cepstral_distortion(x, np.zeros_like(x), SR)
    assert silent.frames == 0 and np.isnan(silent.mcd_db)
    with pytest.raises(ValueError, match=r"reference: expected mono"):
        metrics.mel_cepstral_distortion(np.stack([x, x]), x, SR)
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.mel_cepstral_distortion(x, np.full_like(x, np.nan), SR)


@pytest.mark.parametrize("cents", [100.0, -300.0])
def test_f0_error_of_a_transposed_tone_is_the_transposition(cents):
    sr, hop = 44100, 882
    intended_hz = 196.0
    tone = harmonic(intended_hz * 2 ** (cents / 1200), sr, 1.5)
    n_frames = tone.shape[0] // hop
    intended = np.full(n_frames, intended_hz, dtype=np.float32)
    result = metrics.f0_error_of_audio(tone, sr, intended, hop, method="harvest")
    assert result.median_abs_cents == pytest.approx(abs(cents), abs=5.0)
    assert result.mean_cents == pytest.approx(cents, abs=8.0)
    assert result.voicing_agreement > 0.9 and result.frames_compared > 0.9 * n_frames
    assert result.within_50_cents < 0.1


def test_f0_cents_error_and_voicing_agreement_on_arrays():
    intended = np.array([0, 0, 200, 200, 200, 200, 0, 0], dtype=np.float32)
    found = np.array([0, 100, 200, 0, 400, 200 * 2 ** (10 / 1200), 0, 0], dtype=np.float32)
    result = metrics.f0_cents_error(found, intended)
    assert result.frames_compared == 3 and result.frames == 8
    assert result.median_abs_cents == pytest.approx(10.0, abs=1e-3)  # errors 0, 1200 (octave), 10
    assert result.mean_cents == pytest.approx((0 + 1200 + 10) / 3, abs=1e-3)
    assert result.voicing_agreement == pytest.approx(6 / 8) and result.voiced_recall == pytest.approx(3 / 4)
    assert result.within_50_cents == pytest.approx(2 / 3)
    assert result.off_50_cents == pytest.approx(1 / 3) and result.octave_errors == pytest.approx(1 / 3)
    assert result.rmse_cents == pytest.approx(np.sqrt((1200 ** 2 + 10 ** 2) / 3), abs=1e-3)
    none = metrics.f0_cents_error(np.zeros(4), np.full(4, 100.0))
    assert none.frames_compared == 0 and np.isnan(none.median_abs_cents) and none.voicing_agreement == 0.0
    assert np.isnan(none.rmse_cents) and np.isnan(none.octave_errors)
    with pytest.raises(ValueError, match="equal lengths"):
        metrics.f0_cents_error(np.zeros(3), np.zeros(4))


def test_f0_cents_error_of_an_octave_shifted_contour():
    intended = np.concatenate([np.zeros(5), np.linspace(180.0, 260.0, 40), np.zeros(5)])
    for octaves in (1, -1):
        result = metrics.f0_cents_error(intended * 2.0 ** octaves, intended)
        assert result.median_abs_cents == pytest.approx(1200.0) and result.mean_cents == pytest.approx(1200.0 * octaves)
        assert result.rmse_cents == pytest.approx(1200.0)
        assert result.octave_errors == 1.0 and result.off_50_cents == 1.0 and result.within_50_cents == 0.0
    slightly = metrics.f0_cents_error(intended * 2.0 ** (30 / 1200), intended)
    assert slightly.octave_errors == 0.0 and slightly.off_50_cents == 0.0 and slightly.rmse_cents == pytest.approx(30.0)


@pytest.mark.parametrize("seed", [7, 8])
def test_speaker_classifier_separates_two_synthetic_singers(seed):
    from tools.synth.corpus import derive_rng
    from tools.synth.melody import make_phrase
    from tools.synth.singers import make_singer
    from tools.synth.voice import render_phrase

    singers = {i: make_singer(i, derive_rng(seed, 1, i)) for i in (0, 1)}  # a soprano and a bass
    features, labels = [], []
    for i, singer in singers.items():
        for k in range(6):  # 4 clips to learn from, 2 to test, each singer its own phrases
            phrase = make_phrase(derive_rng(seed, 2, k, i), f"p{k:03d}", 2.5)
            audio = render_phrase(phrase, singer, SR, derive_rng(seed, 5, k, i)).audio
            features.append(metrics.clip_timbre_features(audio, SR, what=f"{singer.name}/p{k:03d}"))
            labels.append(singer.name)
    features = np.stack(features)
    train = [i for i in range(12) if i % 6 < 4]
    test = [i for i in range(12) if i % 6 >= 4]
    classifier = metrics.SpeakerClassifier.fit(features[train], [labels[i] for i in train])
    assert classifier.singers == sorted(s.name for s in singers.values())
    assert classifier.accuracy(features[test], [labels[i] for i in test]) == 1.0
    for i in test:
        guess = classifier.identify(features[i])
        assert guess.predicted == labels[i] and guess.probability(labels[i]) > 0.5
        assert sum(guess.probabilities.values()) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="not one the classifier knows"):
        classifier.identify(features[0]).probability("s99_nobody")
    with pytest.raises(ValueError, match="at least two singers"):
        metrics.SpeakerClassifier.fit(features[:3], [labels[0]] * 3)
    with pytest.raises(ValueError, match="silent.wav: no voiced frame"):
        metrics.clip_timbre_features(np.zeros(SR, dtype=np.float32), SR, what="silent.wav")


def test_an_oracle_conversion_scores_far_better_than_the_source():
    """The measures reward what a conversion should do: the source's melody (transposed) with the target's
    timbre. WORLD resynthesis of a parallel rendition (source F0 x 2^(d/12), target envelope) stands in for a
    perfect converter: MCD to the target's own rendition falls far below the source's, F0 is on the intended
    contour, and the target's rendition itself scores 0."""
    import pyworld

    from tools.synth.corpus import derive_rng
    from tools.synth.melody import make_phrase
    from tools.synth.singers import make_singer
    from tools.synth.voice import render_phrase

    source_voice, target_voice = make_singer(3, derive_rng(5, 1, 3)), make_singer(5, derive_rng(5, 1, 5))  # alto, mezzo
    phrase = make_phrase(derive_rng(5, 2, 0), "par000", 2.5)
    source = render_phrase(phrase, source_voice, SR, derive_rng(5, 6, 0, 3))
    target = render_phrase(phrase, target_voice, SR, derive_rng(5, 6, 0, 5))
    semitones = target_voice.tonic_midi - source_voice.tonic_midi
    s, t = source.audio.astype(np.float64), target.audio.astype(np.float64)
    f0_s, times = pyworld.harvest(s, SR, frame_period=5.0)
    f0_t, times_t = pyworld.harvest(t, SR, frame_period=5.0)
    n = min(len(f0_s), len(f0_t))
    envelope = pyworld.cheaptrick(t, f0_t, times_t, SR)[:n]
    aperiodicity = pyworld.d4c(s, f0_s, times, SR)[:n]
    oracle = pyworld.synthesize(f0_s[:n] * 2 ** (semitones / 12), envelope, aperiodicity, SR, 5.0)[: len(s)]

    reference = metrics.mel_cepstrum(t, SR)
    assert metrics.mcd_between(reference, reference).mcd_db == 0.0
    mcd_source = metrics.mcd_between(reference, metrics.mel_cepstrum(s, SR)).mcd_db
    mcd_oracle = metrics.mcd_between(reference, metrics.mel_cepstrum(oracle, SR)).mcd_db
    assert mcd_oracle < 0.5 * mcd_source, (mcd_oracle, mcd_source)
    intended = np.where(source.f0_hz > 0, source.f0_hz * 2 ** (semitones / 12), 0.0)
    pitch = metrics.f0_error_of_audio(oracle.astype(np.float32), SR, intended, source.label_hop)
    assert pitch.median_abs_cents < 20.0 and pitch.voicing_agreement > 0.85, pitch
    assert metrics.f0_error_of_audio(s.astype(np.float32), SR, intended, source.label_hop).median_abs_cents > 100
