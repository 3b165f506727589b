"""Remix, limiter and concatenation (ai_singer.mix) on synthetic audio."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ai_singer.audio import AudioError
from ai_singer.config import conf_file
from ai_singer.mix import (LimiterSettings, MixSettings, active_level_db, concat_tracks, conform_channels,
                           db_to_gain, highpass, limit_peaks, loudness_match_gain_db, match_loudness, mix_stems)
from conftest import harmonic

SR = 44100


def limiter(**changes) -> LimiterSettings:
    """``mix.limiter`` of conf/infer.yaml with ``changes``."""
    return LimiterSettings(**{**conf_file("infer")["mix"]["limiter"], **changes})


def mix_settings(**changes) -> MixSettings:
    """``mix`` of conf/infer.yaml with ``changes``."""
    values = conf_file("infer")["mix"]
    return MixSettings(**{**values, "limiter": limiter(), **changes})


def test_mix_equals_sum_of_parts_at_configured_gains():
    vocal = harmonic(220.0, SR, 1.0, amplitude=0.2)
    drums = np.stack([harmonic(110.0, SR, 1.0, amplitude=0.1), harmonic(82.0, SR, 1.0, amplitude=0.1)])
    bass = harmonic(55.0, SR, 1.0, amplitude=0.1)
    settings = mix_settings(vocal_gain_db=-3.0, stem_gains={"drums": 2.0, "bass": -6.0})
    result = mix_stems(vocal, SR, [("drums", drums, SR), ("bass", bass, SR)], settings)
    expected = (vocal[None] * db_to_gain(-3.0) + drums * db_to_gain(2.0) + bass[None] * db_to_gain(-6.0))
    assert result.audio.shape == (2, SR)  # mono parts are up-mixed to the stereo stem's layout
    assert result.limiter_reduction_db == 0.0  # peak ~0.5: the limiter does not engage
    np.testing.assert_allclose(result.audio, expected, atol=1e-6)
    assert result.stem_gains_db == {"drums": 2.0, "bass": -6.0}


def test_mix_conforms_stem_rate_and_length_and_warns_about_unknown_gain():
    vocal = harmonic(220.0, SR, 1.0, amplitude=0.2)
    stem_48k = harmonic(110.0, 48000, 1.2, amplitude=0.1)  # other rate, longer
    result = mix_stems(vocal, SR, [("keys", stem_48k, 48000)], mix_settings(stem_gains={"piano": 3.0}))
    assert result.audio.shape == (1, SR)
    assert any("piano" in warning for warning in result.warnings)
    # The resampled stem is still a 110 Hz tone: the residual after removing the vocal peaks there.
    residual = result.audio[0] - vocal
    spectrum = np.abs(np.fft.rfft(residual))
    assert abs(np.argmax(spectrum) * SR / len(residual) - 110.0) < 2.0


def test_limiter_holds_the_ceiling_and_preserves_waveform_shape():
    t = np.arange(3 * SR) / SR
    envelope = np.where((t > 1.0) & (t < 1.5), 2.5, 0.3)
    x = (np.sin(2 * np.pi * 220 * t) * envelope).astype(np.float32)
    settings = limiter(ceiling_db=-1.0, lookahead_s=0.005, release_s=0.1)
    y, reduction_db = limit_peaks(np.stack([x, 0.5 * x]), SR, settings)
    ceiling = db_to_gain(-1.0)
    assert np.max(np.abs(y)) <= ceiling + 1e-7
    assert reduction_db == pytest.approx(20 * np.log10(2.5 / ceiling), abs=0.05)
    # Linked stereo: the channel ratio is kept.
    loud = (t > 1.1) & (t < 1.4)
    np.testing.assert_allclose(y[1, loud], 0.5 * y[0, loud], atol=1e-6)
    # A gain, not clipping: inside the burst the output is the input scaled by a constant.
    ratio = y[0, loud][np.abs(x[loud]) > 0.5] / x[loud][np.abs(x[loud]) > 0.5]
    assert ratio.std() < 1e-3
    # Far from the burst the signal is untouched; shortly after it the gain is recovering.
    quiet = t < 0.9
    np.testing.assert_array_equal(y[0, quiet], x[quiet])
    assert np.max(np.abs(y[0, (t > 2.5)])) == pytest.approx(0.3, rel=1e-3)


def test_limiter_peak_at_the_very_first_sample():
    x = np.zeros(1000, dtype=np.float32)
    x[0], x[500] = 4.0, -3.0
    y, _ = limit_peaks(x, SR, limiter(ceiling_db=-1.0))
    assert np.max(np.abs(y)) <= db_to_gain(-1.0) + 1e-7


def test_limiter_not_engaged_or_disabled_is_identity():
    x = harmonic(220.0, SR, 0.5, amplitude=0.5)
    y, reduction = limit_peaks(x, SR, limiter(ceiling_db=-1.0))
    assert reduction == 0.0 and np.array_equal(y, x)
    loud = 3 * x
    y, reduction = limit_peaks(loud, SR, limiter(enabled=False))
    assert reduction == 0.0 and np.array_equal(y, loud)


def test_loudness_match_ignores_rests():
    reference = harmonic(220.0, SR, 1.0, amplitude=0.4)
    quiet = np.concatenate([np.zeros(SR, np.float32), harmonic(220.0, SR, 1.0, amplitude=0.1)])
    # Same tone, 12 dB lower, with a second of silence that must not count.
    assert loudness_match_gain_db(quiet, reference, SR) == pytest.approx(20 * np.log10(4.0), abs=0.1)
    assert loudness_match_gain_db(np.zeros(SR, np.float32), reference, SR) == 0.0
    assert active_level_db(np.zeros(SR, np.float32), SR) is None


def _spiky(amplitude: float = 0.05) -> np.ndarray:
    """A quiet tone with a click every 0.25 s: a crest factor of ~25 dB."""
    x = harmonic(220.0, SR, 2.0, amplitude=amplitude)
    x[:: SR // 4] += 0.9
    return x


def test_loudness_match_reaches_the_source_level_by_limiting_peaks_not_by_giving_up_gain():
    converted = _spiky()
    source = harmonic(220.0, SR, 2.0, amplitude=0.4)  # ~18 dB louder: the clicks would go far over 0 dBFS
    out, matched = match_loudness(converted, source, SR, limiter(ceiling_db=-1.0))
    assert np.abs(out).max() <= db_to_gain(-1.0) + 1e-6
    assert abs(active_level_db(out, SR) - active_level_db(source, SR)) < 1.0
    assert matched.level_difference_db == pytest.approx(active_level_db(out, SR) - active_level_db(source, SR))
    assert matched.limiter_reduction_db > 10.0 and matched.gain_db > 15.0
    # Nothing to limit: exactly the matching gain, no limiting.
    quiet = harmonic(220.0, SR, 2.0, amplitude=0.1)
    out, matched = match_loudness(quiet, source, SR, limiter())
    assert matched.limiter_reduction_db == 0.0 and matched.level_difference_db == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(out, quiet * db_to_gain(matched.gain_db), rtol=1e-5)


def test_loudness_match_without_limiter_stops_at_full_scale_and_says_how_far_short():
    source = harmonic(220.0, SR, 2.0, amplitude=0.4)
    out, matched = match_loudness(_spiky(), source, SR, limiter(enabled=False))
    assert np.abs(out).max() <= 1.0 + 1e-6
    assert matched.level_difference_db < -10.0 and matched.limiter_reduction_db == 0.0


def test_highpass_removes_dc_and_infrasound_and_keeps_the_voice():
    t = np.arange(2 * SR) / SR
    voice = harmonic(110.0, SR, 2.0, amplitude=0.2)
    rumble = 0.05 * np.sin(2 * np.pi * 15.0 * t).astype(np.float32)
    out = highpass(voice + rumble + 0.01, SR, 40.0)
    assert out.dtype == np.float32 and out.shape == voice.shape
    assert abs(float(out[SR // 10: -SR // 10].mean())) < 1e-6 and abs(float(out.mean())) < 1e-4  # DC 0.01 gone
    spectrum = np.abs(np.fft.rfft(out))
    reference = np.abs(np.fft.rfft(voice))
    bin_of = lambda hz: int(round(hz * len(out) / SR))  # noqa: E731
    assert spectrum[bin_of(15.0)] < 1e-2 * 0.05 * len(out) / 2  # 15 Hz: more than 40 dB down
    assert spectrum[bin_of(110.0)] == pytest.approx(reference[bin_of(110.0)], rel=0.01)  # F0: within 0.1 dB
    np.testing.assert_array_equal(highpass(voice, SR, 0.0), voice)  # 0 = off
    assert highpass(np.ones(5, np.float32), SR, 40.0).shape == (5,)  # shorter than the filter's padding


def test_conform_channels_up_and_down():
    stereo = np.stack([np.ones(4, np.float32), -np.ones(4, np.float32)])
    assert conform_channels(stereo, 1).tolist() == [[0, 0, 0, 0]]
    assert conform_channels(stereo[:1], 2).shape == (2, 4)


def _write(path, audio, sr):
    sf.write(str(path), audio.T if audio.ndim == 2 else audio, sr, subtype="FLOAT")
    return path


def test_concat_lengths_with_crossfades_and_mixed_formats(tmp_path):
    a = _write(tmp_path / "a.wav", harmonic(220.0, SR, 1.0), SR)  # mono 44.1k: sets the format
    stereo_48k = np.stack([harmonic(330.0, 48000, 2.0), harmonic(330.0, 48000, 2.0, seed=1)])
    b = _write(tmp_path / "b.wav", stereo_48k, 48000)
    c = _write(tmp_path / "c.wav", harmonic(262.0, SR, 0.5), SR)
    result = concat_tracks([a, b, c], tmp_path / "out.wav", crossfade_s=0.1)
    data, sr = sf.read(str(tmp_path / "out.wav"), always_2d=True)
    crossfade = round(0.1 * SR)
    assert sr == SR and data.shape[1] == 1 and result.channels == 1
    assert data.shape[0] == SR + 2 * SR + SR // 2 - 2 * crossfade == result.samples
    assert result.crossfade_samples == [crossfade, crossfade]
    # No crossfade: plain concatenation, sample for sample.
    plain = concat_tracks([a, c], tmp_path / "plain.flac", crossfade_s=0.0, subtype="PCM_24")
    data, _ = sf.read(str(tmp_path / "plain.flac"))
    assert plain.samples == data.shape[0] == SR + SR // 2
    np.testing.assert_allclose(data[:SR], sf.read(str(a))[0], atol=2e-7 * 64)


def test_concat_crossfade_is_equal_power(tmp_path):
    rng = np.random.default_rng(0)
    noise_a = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    noise_b = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    a, b = _write(tmp_path / "a.wav", noise_a, SR), _write(tmp_path / "b.wav", noise_b, SR)
    concat_tracks([a, b], tmp_path / "out.wav", crossfade_s=0.5, subtype="FLOAT")
    data, _ = sf.read(str(tmp_path / "out.wav"))
    middle = data[SR // 2: SR]  # the whole crossfade: uncorrelated noises keep their power
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.1, rel=0.05)


def test_concat_bad_input_names_the_file(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    good = _write(tmp_path / "a.wav", harmonic(220.0, SR, 0.2), SR)
    with pytest.raises(AudioError, match="notes.wav"):
        concat_tracks([good, bad], tmp_path / "out.wav")


def test_mix_from_files_block_by_block_equals_in_memory_mix(tmp_path):
    from ai_singer.mix import mix_stem_files

    vocal = harmonic(220.0, SR, 1.0, amplitude=0.2)
    drums = np.stack([harmonic(110.0, SR, 1.3, amplitude=0.3), harmonic(82.0, SR, 1.3, amplitude=0.3)])
    keys_48k = harmonic(330.0, 48000, 0.7, amplitude=0.3)  # other rate and shorter: resampled, zero-padded
    _write(tmp_path / "drums.wav", drums, SR)
    _write(tmp_path / "keys.wav", keys_48k, 48000)
    settings = mix_settings(vocal_gain_db=1.0, stem_gains={"drums": -2.0, "keys": 3.0},
                            limiter=limiter(ceiling_db=-6.0))
    from_files = mix_stem_files(vocal, SR, [tmp_path / "drums.wav", tmp_path / "keys.wav"], settings,
                                block_seconds=0.1)
    in_memory = mix_stems(vocal, SR, [("drums", drums, SR), ("keys", keys_48k, 48000)], settings)
    assert from_files.audio.shape == (2, SR) and from_files.limiter_reduction_db > 0
    np.testing.assert_array_equal(from_files.audio, in_memory.audio)


def test_a_crossfade_longer_than_a_track_is_shortened_with_a_warning(tmp_path):
    a = _write(tmp_path / "a.wav", harmonic(220.0, SR, 1.0), SR)
    b = _write(tmp_path / "b.wav", harmonic(330.0, SR, 2.0), SR)
    result = concat_tracks([a, b], tmp_path / "out.wav", crossfade_s=100.0)
    assert result.crossfade_samples == [SR] and result.samples == 2 * SR
    assert result.warnings == ["the crossfade into b.wav is 1.00 s instead of 100 s: a.wav is shorter than the crossfade"]
    assert concat_tracks([a, b], tmp_path / "ok.wav", crossfade_s=0.5).warnings == []
    with pytest.raises(ValueError, match="crossfade must be"):
        concat_tracks([a, b], tmp_path / "x.wav", crossfade_s=float("nan"))
