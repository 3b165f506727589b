"""Spectrogram and volume framing: N // hop frames centred at (i + 0.5) * hop, tone peaks, RMS values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ai_singer.features.spectrogram import linear_spectrogram, mel_spectrogram
from ai_singer.features.volume import frame_rms


@pytest.mark.parametrize("n_fft,hop,win", [(2048, 512, 2048), (1024, 256, 1024), (512, 128, 400)])
@pytest.mark.parametrize("extra", [0, 1, 77])
def test_frame_count_is_samples_over_hop(n_fft, hop, win, extra):
    samples = hop * 23 + extra
    wav = torch.randn(2, samples)
    spec = linear_spectrogram(wav, n_fft, hop, win)
    assert spec.shape == (2, n_fft // 2 + 1, samples // hop)
    mel = mel_spectrogram(wav, 44100, n_fft, hop, win, n_mels=80)
    assert mel.shape == (2, 80, samples // hop)
    assert linear_spectrogram(wav[0], n_fft, hop, win).shape == (n_fft // 2 + 1, samples // hop)


def test_tone_peaks_at_its_bin_and_mel_band():
    sr, n_fft, hop = 44100, 2048, 512
    bin_index = 93  # a tone exactly on FFT bin 93 (~2002 Hz)
    t = torch.arange(hop * 40, dtype=torch.float64) / sr
    wav = (0.5 * torch.sin(2 * torch.pi * bin_index * sr / n_fft * t)).float()[None]
    spec = linear_spectrogram(wav, n_fft, hop, n_fft)
    assert (spec[0, :, 2:-2].argmax(dim=0) == bin_index).all()  # edge frames see the reflect padding

    import librosa

    mel = mel_spectrogram(wav, sr, n_fft, hop, n_fft, n_mels=80, fmin=0.0, fmax=None)
    centres = librosa.mel_frequencies(n_mels=82, fmin=0.0, fmax=sr / 2)[1:-1]
    expected_band = int(np.argmin(np.abs(centres - bin_index * sr / n_fft)))
    assert abs(int(mel[0, :, 20].argmax()) - expected_band) <= 1
    assert mel.min() >= np.log(1e-5) - 1e-6


def test_frames_are_centred_at_half_a_hop():
    # A click at the centre of frame k, (k + 0.5) * hop, is loudest in frame k.
    n_fft, hop = 2048, 512
    for k in (5, 12, 20):
        wav = torch.zeros(1, hop * 30)
        wav[0, int((k + 0.5) * hop)] = 1.0
        energy = linear_spectrogram(wav, n_fft, hop, n_fft)[0].pow(2).sum(dim=0)
        assert int(energy.argmax()) == k


def test_gradients_are_finite_and_half_precision_input_works():
    wav = torch.zeros(1, 512 * 8, requires_grad=True)  # silence: |X| = 0 everywhere
    mel_spectrogram(wav, 44100, 2048, 512, 2048, 80).sum().backward()
    assert torch.isfinite(wav.grad).all()
    out = mel_spectrogram(torch.randn(1, 512 * 8).half(), 44100, 2048, 512, 2048, 80)
    assert out.shape == (1, 80, 8) and torch.isfinite(out).all()


def test_too_short_audio_is_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        linear_spectrogram(torch.zeros(1, 500), 2048, 512, 2048)


def test_frame_rms_numpy_and_torch():
    hop = 512
    amplitude = 0.4
    t = np.arange(hop * 10 + 100) / 44100
    wav = (amplitude * np.sin(2 * np.pi * 441.0 * t)).astype(np.float32)  # 441 Hz: 100 samples a period
    wav[hop * 3: hop * 4] = 0.0
    rms = frame_rms(wav, hop)
    assert rms.shape == (10,) and rms.dtype == np.float32
    expected = np.full(10, amplitude / np.sqrt(2))
    expected[3] = 0.0
    np.testing.assert_allclose(rms, expected, atol=0.01)
    batch = np.stack([wav, 2 * wav])[None]  # [1, 2, samples]
    torch_rms = frame_rms(torch.from_numpy(batch), hop)
    assert isinstance(torch_rms, torch.Tensor) and torch_rms.shape == (1, 2, 10)
    np.testing.assert_allclose(torch_rms[0, 0].numpy(), rms, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(torch_rms[0, 1].numpy(), 2 * rms, rtol=1e-5, atol=1e-7)


def test_a_spectrogram_first_made_in_inference_mode_can_be_trained_through_later():
    """A conversion (inference mode) before a training step in one process: the cached window and mel filters
    must not be inference tensors."""
    settings = dict(sr=22050, n_fft=512, hop=128, win=512, n_mels=24, fmin=0.0, fmax=None)
    with torch.inference_mode():
        mel_spectrogram(torch.randn(1, 4096), **settings)
    wav = torch.randn(1, 4096, requires_grad=True)
    mel_spectrogram(wav, **settings).sum().backward()
    assert wav.grad is not None and wav.grad.abs().sum() > 0
