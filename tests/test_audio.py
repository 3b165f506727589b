"""ai_singer.audio: decoding every input format, mono, resampling, loudness, the silence slicer, errors."""
from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from ai_singer.audio import (AudioError, SliceConfig, audio_info, load_audio, normalize_loudness, resample,
                             slice_file, slice_on_silence, to_mono, write_audio)
from ai_singer.config import conf_group
from conftest import harmonic

#: conf/loudness, the one place the loudness targets are written.
LOUDNESS = conf_group("loudness")


def slicer(**changes) -> SliceConfig:
    """The slicer of conf/slicer with ``changes``."""
    return SliceConfig(**{**conf_group("slicer"), **changes})


SR = 16000  # slicer tests: a low rate keeps them fast; the slicer works in seconds


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


def stereo_test_signal(sr: int, seconds: float = 0.5) -> np.ndarray:
    """[2, samples]: a 220 Hz voice on the left, a quieter 330 Hz voice on the right."""
    return np.stack([harmonic(220.0, sr, seconds, amplitude=0.5), harmonic(330.0, sr, seconds, amplitude=0.25)])


def silence(seconds: float, sr: int = SR) -> np.ndarray:
    return np.zeros(int(round(seconds * sr)), dtype=np.float32)


def tone(seconds: float, f0: float = 220.0, sr: int = SR, amplitude: float = 0.3) -> np.ndarray:
    return harmonic(f0, sr, seconds, amplitude=amplitude)


# ---------------------------------------------------------------------------------------------- I/O

LOSSLESS = [  # (suffix, subtype, sample rate, channels, max abs error)
    ("wav", "PCM_16", 44100, 2, 2.0 ** -15),
    ("wav", "PCM_24", 22050, 1, 2.0 ** -23),
    ("wav", "PCM_32", 48000, 2, 1e-7),
    ("wav", "FLOAT", 16000, 1, 0.0),
    ("flac", "PCM_16", 32000, 2, 2.0 ** -15),
    ("flac", "PCM_24", 44100, 1, 2.0 ** -23),
]


@pytest.mark.parametrize("suffix,subtype,sr,channels,tolerance", LOSSLESS)
def test_load_lossless_formats_round_trip_values_and_rate(tmp_path, suffix, subtype, sr, channels, tolerance):
    signal = stereo_test_signal(sr)[:channels]
    path = tmp_path / f"in_{subtype}.{suffix}"
    sf.write(path, signal.T, sr, subtype=subtype)

    audio, rate = load_audio(path)
    assert rate == sr and audio.dtype == np.float32 and audio.shape == signal.shape
    assert np.max(np.abs(audio - signal)) <= tolerance + 1e-9
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames) == (sr, channels, signal.shape[1])
    assert info.seconds == pytest.approx(signal.shape[1] / sr)


@pytest.mark.parametrize("suffix,subtype", [("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")])
def test_load_lossy_formats_keep_rate_channels_and_pitch(tmp_path, suffix, subtype):
    sr = 44100
    signal = stereo_test_signal(sr, seconds=1.0)
    path = tmp_path / f"in.{suffix}"
    sf.write(path, signal.T, sr, subtype=subtype)

    audio, rate = load_audio(path)
    assert rate == sr and audio.shape[0] == 2 and audio.dtype == np.float32
    assert abs(audio.shape[1] - signal.shape[1]) < 0.05 * sr
    # channel order and content survive: left is the louder 220 Hz voice, right the 330 Hz one
    assert dominant_hz(audio[0], sr) == pytest.approx(220.0, abs=3.0)
    assert dominant_hz(audio[1], sr) == pytest.approx(330.0, abs=3.0)
    assert np.max(np.abs(audio[0])) == pytest.approx(0.5, abs=0.08)


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_load_audio_start_stop_reads_that_part(tmp_path, suffix):
    signal = stereo_test_signal(22050)
    path = tmp_path / f"in.{suffix}"
    sf.write(path, signal.T, 22050, subtype="PCM_16")
    full, _ = load_audio(path)

    part, rate = load_audio(path, start=1000, stop=3500)
    assert rate == 22050 and part.shape == (2, 2500)
    np.testing.assert_array_equal(part, full[:, 1000:3500])
    tail, _ = load_audio(path, start=5000)
    np.testing.assert_array_equal(tail, full[:, 5000:])
    clipped, _ = load_audio(path, start=10000, stop=10 ** 9)  # stop past the end reads to the end
    np.testing.assert_array_equal(clipped, full[:, 10000:])
    with pytest.raises(AudioError, match="empty"):
        load_audio(path, start=full.shape[1])


def test_to_mono_averages_channels_and_passes_mono_through(tmp_path):
    stereo = np.array([[1.0, 0.5, -1.0], [0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(to_mono(stereo), [0.5, 0.5, 0.0])
    assert to_mono(stereo).dtype == np.float32
    mono = np.array([0.1, 0.2], dtype=np.float64)
    assert to_mono(mono).dtype == np.float32 and to_mono(mono).shape == (2,)
    assert to_mono(stereo[:1]).shape == (3,)

    path = tmp_path / "stereo.wav"
    signal = stereo_test_signal(16000)
    sf.write(path, signal.T, 16000, subtype="FLOAT")
    np.testing.assert_allclose(to_mono(load_audio(path)[0]), signal.mean(axis=0), atol=1e-7)


def test_resample_length_and_pitch_preserved():
    x = harmonic(220.0, 44100, 1.0)
    y = resample(x, 44100, 16000)
    assert y.dtype == np.float32 and y.shape == (16000,)
    assert dominant_hz(y, 16000) == pytest.approx(220.0, abs=1.5)
    # any leading shape, time on the last axis
    batch = np.stack([np.stack([x, 0.5 * x]), np.stack([x, x])])  # [2, 2, 44100]
    y_batch = resample(batch, 44100, 22050)
    assert y_batch.shape == (2, 2, 22050)
    np.testing.assert_allclose(y_batch[0, 1], 0.5 * y_batch[0, 0], atol=1e-6)
    assert resample(x[:1001], 44100, 48000).shape == (round(1001 * 48000 / 44100),)
    np.testing.assert_array_equal(resample(x, 44100, 44100), x)


# ---------------------------------------------------------------------------------------------- loudness

def test_normalize_loudness_reaches_target_and_respects_peak():
    sr = 44100
    quiet = harmonic(220.0, sr, 2.0, amplitude=0.02)
    out = normalize_loudness(quiet, sr, target_lufs=-18.0, peak_dbfs=-1.0)
    assert out.dtype == np.float32 and out.shape == quiet.shape
    assert pyloudnorm.Meter(sr).integrated_loudness(out.astype(np.float64)) == pytest.approx(-18.0, abs=0.5)
    assert 20 * np.log10(np.max(np.abs(out))) <= -1.0 + 1e-4

    stereo = np.stack([quiet, 0.5 * quiet])
    out_stereo = normalize_loudness(stereo, sr, target_lufs=-23.0, peak_dbfs=LOUDNESS["peak_dbfs"])
    assert out_stereo.shape == stereo.shape
    assert pyloudnorm.Meter(sr).integrated_loudness(out_stereo.T.astype(np.float64)) == pytest.approx(-23.0, abs=0.5)


def test_normalize_loudness_peak_protection_wins_over_target():
    sr = 44100
    spiky = harmonic(220.0, sr, 2.0, amplitude=0.01)
    spiky[sr // 2] = 0.9  # one click: reaching -10 LUFS would need a peak far above full scale
    out = normalize_loudness(spiky, sr, target_lufs=-10.0, peak_dbfs=-1.0)
    assert 20 * np.log10(np.max(np.abs(out))) == pytest.approx(-1.0, abs=1e-3)
    assert pyloudnorm.Meter(sr).integrated_loudness(out.astype(np.float64)) < -10.5


def test_normalize_loudness_short_clip_uses_rms_fallback():
    sr = 16000
    short = harmonic(300.0, sr, 0.2, amplitude=0.05)  # shorter than one 400 ms BS.1770 block
    out = normalize_loudness(short, sr, target_lufs=-20.0, peak_dbfs=0.0)
    rms_level = -0.691 + 10 * np.log10(np.mean(out.astype(np.float64) ** 2))
    assert rms_level == pytest.approx(-20.0, abs=0.5)


# ---------------------------------------------------------------------------------------------- slicer

def build(parts: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Concatenate parts; return the signal and the sample offset where each part starts (+ the end)."""
    offsets = np.cumsum([0] + [len(p) for p in parts]).tolist()
    return np.concatenate(parts).astype(np.float32), offsets


def test_slice_boundaries_on_tone_silence_tone():
    hop = int(0.01 * SR)
    parts = [silence(1.003), tone(4.0), silence(1.0), tone(3.5, 330.0), silence(0.8), tone(5.0, 262.0),
             silence(0.5)]
    signal, at = build(parts)
    cfg = slicer(max_silence_kept_s=0.0, min_length_s=1.0)
    clips = slice_on_silence(signal, SR, cfg)
    expected = [(at[1], at[2]), (at[3], at[4]), (at[5], at[6])]
    assert len(clips) == 3
    for (start, end), (true_start, true_end) in zip(clips, expected):
        assert abs(start - true_start) <= hop and abs(end - true_end) <= hop


def test_slice_keeps_at_most_max_silence_on_each_side():
    hop = int(0.01 * SR)
    keep = 0.2
    parts = [silence(1.0), tone(3.5), silence(0.3), tone(3.2, 330.0), silence(1.5), tone(3.0, 262.0), silence(0.05)]
    signal, at = build(parts)
    clips = slice_on_silence(signal, SR, slicer(max_silence_kept_s=keep, min_silence_s=0.25))
    assert len(clips) == 3
    for start, end in clips:
        sound = np.flatnonzero(np.abs(signal[start:end]) > 0)
        lead, trail = sound[0], (end - start) - 1 - sound[-1]
        assert lead <= keep * SR and trail <= keep * SR
    # enough silence around: exactly `keep` is kept (to the hop grid)
    assert abs(clips[0][0] - (at[1] - keep * SR)) <= hop
    assert abs(clips[2][0] - (at[5] - keep * SR)) <= hop and abs(clips[1][1] - (at[4] + keep * SR)) <= hop
    # a 0.3 s pause is shared between its two clips, which never overlap
    assert clips[0][1] <= clips[1][0] and abs(clips[0][1] - (at[2] + 0.15 * SR)) <= hop
    assert clips[2][1] == len(signal)  # only 50 ms of trailing silence: all of it kept


def test_long_phrase_is_split_at_its_quietest_frames():
    hop = int(0.01 * SR)
    phrase = tone(40.0)
    for dip_s in (12.0, 26.0):  # short dips (a breath between notes) at known places
        phrase[int(dip_s * SR): int((dip_s + 0.05) * SR)] *= 0.01
    signal, at = build([silence(0.5), phrase, silence(0.5)])
    clips = slice_on_silence(signal, SR, slicer(max_length_s=15.0, max_silence_kept_s=0.0))
    assert len(clips) == 3
    assert all(end - start <= 15.0 * SR for start, end in clips)
    assert clips[0][1] == clips[1][0] and clips[1][1] == clips[2][0]  # pieces touch: nothing lost
    assert abs(clips[0][0] - at[1]) <= hop and abs(clips[2][1] - at[2]) <= hop
    for cut, dip_s in zip((clips[0][1], clips[1][1]), (12.0, 26.0)):
        assert 0.5 * SR + dip_s * SR - hop <= cut <= 0.5 * SR + (dip_s + 0.05) * SR

    # with no quiet frame at all, every piece still fits
    flat, _ = build([tone(37.0)])
    flat_clips = slice_on_silence(flat, SR, slicer(max_length_s=10.0))
    assert all(end - start <= 10.0 * SR for start, end in flat_clips)
    assert flat_clips[0][0] == 0 and flat_clips[-1][1] == len(flat) and len(flat_clips) == 4


def test_breaths_at_phrase_edges_kept_with_low_threshold_and_cut_with_higher_one():
    hop = int(0.01 * SR)
    rng = np.random.default_rng(1)
    breath = (10 ** (-50 / 20) * rng.standard_normal(int(0.4 * SR))).astype(np.float32)  # -50 dBFS noise
    signal, at = build([silence(1.0), breath, tone(3.5), silence(1.0)])
    low = slice_on_silence(signal, SR, slicer(threshold_db=-60.0, max_silence_kept_s=0.1))
    high = slice_on_silence(signal, SR, slicer(threshold_db=-40.0, max_silence_kept_s=0.1))
    assert len(low) == len(high) == 1
    assert abs(low[0][0] - (at[1] - 0.1 * SR)) <= hop  # the whole breath, plus 0.1 s of silence before
    assert abs(high[0][0] - (at[2] - 0.1 * SR)) <= hop  # the breath counts as silence: only 0.1 s of it stays


def test_short_clips_merge_across_short_silence_and_are_dropped_when_isolated():
    hop = int(0.01 * SR)
    parts = [silence(1.0), tone(4.0), silence(0.4), tone(1.0, 330.0), silence(3.0), tone(1.0, 262.0),
             silence(3.0), tone(4.0, 294.0), silence(1.0)]
    signal, at = build(parts)
    clips = slice_on_silence(signal, SR, slicer(max_silence_kept_s=0.3, min_length_s=3.0))
    # the 1 s phrase 0.4 s after the first joins it (0.4 <= 2 * 0.3); the isolated 1 s phrase is dropped
    assert len(clips) == 2
    assert abs(clips[0][0] - (at[1] - 0.3 * SR)) <= hop and abs(clips[0][1] - (at[4] + 0.3 * SR)) <= hop
    assert abs(clips[1][0] - (at[7] - 0.3 * SR)) <= hop and abs(clips[1][1] - (at[8] + 0.3 * SR)) <= hop
    assert all(end - start >= 3.0 * SR for start, end in clips)
    assert slice_on_silence(silence(5.0), SR, slicer()) == []
    assert slice_on_silence(tone(1.0), SR, slicer()) == []  # the only phrase is too short and has no neighbour


@pytest.mark.parametrize("suffix,subtype", [("wav", "PCM_16"), ("flac", "PCM_24")])
def test_slice_file_streams_and_matches_in_memory_slicing(tmp_path, suffix, subtype):
    parts = [silence(0.7), tone(3.3), silence(0.45), tone(0.8, 330.0), silence(1.2), tone(16.0, 262.0),
             silence(0.2), tone(2.0, 196.0)]
    left, _ = build(parts)
    stereo = np.stack([left, 0.7 * np.roll(left, 37)])
    path = tmp_path / f"take.{suffix}"
    sf.write(path, stereo.T, SR, subtype=subtype)
    cfg = slicer(max_length_s=7.0)

    in_memory = slice_on_silence(to_mono(load_audio(path)[0]), SR, cfg)
    assert len(in_memory) >= 4
    for block_seconds in (0.37, 5.0, 60.0):  # block edges anywhere: identical ranges
        assert slice_file(path, cfg, block_seconds=block_seconds) == in_memory


def test_slice_file_memory_stays_far_below_the_decoded_size(tmp_path):
    pattern, _ = build([tone(6.0), silence(1.0), tone(4.5, 330.0), silence(0.5)])
    minutes = 3
    long_take = np.tile(pattern, int(minutes * 60 * SR // len(pattern)) + 1)[: minutes * 60 * SR]
    path = tmp_path / "long.wav"
    sf.write(path, long_take, SR, subtype="PCM_16")
    float64_bytes = long_take.shape[0] * 8
    del long_take

    tracemalloc.start()
    try:
        clips = slice_file(path, slicer(), block_seconds=5.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(clips) > 0.9 * minutes * 60 / 12
    assert peak < float64_bytes / 20, f"peak {peak / 1e6:.1f} MB vs {float64_bytes / 1e6:.1f} MB as float64"


# ---------------------------------------------------------------------------------------------- errors

def test_bad_inputs_raise_audio_error_naming_the_file(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("these are lyrics, not audio\n")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    nan = tmp_path / "nan.wav"
    broken = tone(1.0)
    broken[100] = np.nan
    sf.write(nan, broken, SR, subtype="FLOAT")
    missing = tmp_path / "missing.flac"

    cases = [(text, "not a readable audio file"), (empty, "no audio samples"), (nan, "NaN"),
             (missing, "does not exist")]
    for path, reason in cases:
        for reader in (load_audio, lambda source: slice_file(source, slicer())):
            with pytest.raises(AudioError, match=reason) as caught:
                reader(path)
            assert caught.value.path == str(path) and str(caught.value).startswith(f"{path}: ")
    for path in (text, empty, missing):
        with pytest.raises(AudioError) as caught:
            audio_info(path)
        assert caught.value.path == str(path)

    silent = tmp_path / "silent.wav"
    sf.write(silent, silence(1.0), SR, subtype="PCM_16")
    audio, rate = load_audio(silent)
    with pytest.raises(AudioError, match="digital silence") as caught:
        normalize_loudness(audio, rate, **LOUDNESS, source=silent)
    assert str(silent) in str(caught.value)

    error = pickle.loads(pickle.dumps(AudioError(text, "why")))  # survives worker processes
    assert (error.path, error.reason, str(error)) == (str(text), "why", f"{text}: why")


def test_write_audio_round_trip_atomic_and_clipped(tmp_path):
    signal = stereo_test_signal(22050)
    signal[0, 10] = 1.7  # would wrap around in a 16-bit file without clipping
    for suffix in ("wav", "flac"):
        path = tmp_path / "out" / f"clip.{suffix}"
        write_audio(path, signal, 22050)
        audio, rate = load_audio(path)
        assert rate == 22050 and audio.shape == signal.shape
        assert audio[0, 10] == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(audio[:, 20:], signal[:, 20:], atol=2.0 ** -15)
    write_audio(tmp_path / "out" / "mono.wav", signal[1], 22050, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "out" / "mono.wav")[0][0], signal[1])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.flac", "clip.wav", "mono.wav"]
    with pytest.raises(ValueError, match="suffix"):
        write_audio(tmp_path / "clip.mp4", signal, 22050)


def test_the_slicer_and_loudness_values_come_from_conf():
    """No defaults in code: the slicer and the loudness targets are conf/'s (tests/test_config.py)."""
    with pytest.raises(TypeError):
        SliceConfig()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        normalize_loudness(harmonic(220.0, SR, 0.5), SR)  # type: ignore[call-arg]
    assert slicer() == SliceConfig(**conf_group("slicer"))