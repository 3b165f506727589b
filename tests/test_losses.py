"""Losses on inputs whose values are known in closed form."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ai_singer.losses import (discriminator_adversarial_loss, feature_matching_loss, generator_adversarial_loss,
                              kl_loss, mel_l1_loss, multi_resolution_stft_loss)


def gaussian_kl(m_q, s_q, m_p, s_p):
    return math.log(s_p / s_q) + (s_q ** 2 + (m_q - m_p) ** 2) / (2 * s_p ** 2) - 0.5


def test_kl_of_identical_distributions_is_about_zero():
    torch.manual_seed(0)
    shape = (4, 8, 4000)
    m_p = torch.randn(shape)
    logs_p = 0.3 * torch.randn(shape)
    z_p = m_p + torch.randn(shape) * torch.exp(logs_p)  # a sample of q == p
    mask = torch.ones(4, 1, 4000)
    per_frame = kl_loss(z_p, logs_p, m_p, logs_p, mask)
    assert abs(float(per_frame)) < 0.1  # sum over 8 channels of ~N(0, 0.5^2 / ...) noise


def test_kl_estimate_matches_closed_form():
    torch.manual_seed(1)
    channels, frames = 3, 200_000
    m_q, s_q, m_p, s_p = 0.5, 0.7, -0.2, 1.3
    z_p = m_q + s_q * torch.randn(1, channels, frames)
    full = lambda v: torch.full((1, channels, frames), v)  # noqa: E731
    value = kl_loss(z_p, full(math.log(s_q)), full(m_p), full(math.log(s_p)), torch.ones(1, 1, frames))
    expected = channels * gaussian_kl(m_q, s_q, m_p, s_p)  # per frame = summed over channels
    assert float(value) == pytest.approx(expected, abs=0.01)


def test_kl_ignores_masked_frames_and_averages_over_valid_frames():
    torch.manual_seed(2)
    z_p, logs_q, m_p, logs_p = (torch.randn(2, 4, 10) for _ in range(4))
    mask = torch.ones(2, 1, 10)
    mask[1, :, 6:] = 0
    reference = kl_loss(z_p, logs_q, m_p, logs_p, mask)
    garbage = z_p.clone()
    garbage[1, :, 6:] = 1e3
    assert torch.allclose(kl_loss(garbage, logs_q, m_p, logs_p, mask), reference)
    elementwise = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2 * logs_p)
    assert float(reference) == pytest.approx(float((elementwise * mask).sum() / 16), rel=1e-6)
    # the SynthOutput form gives the same number
    out = SimpleNamespace(z_p=z_p, logs_q=logs_q, m_p=m_p, logs_p=logs_p, mask=mask)
    assert torch.equal(kl_loss(out), reference)


def test_lsgan_losses_known_values():
    ones, zeros, halves = torch.ones(2, 5), torch.zeros(2, 7), torch.full((2, 3), 0.5)
    total, parts = generator_adversarial_loss([ones, ones])
    assert float(total) == 0.0 and len(parts) == 2
    total, parts = generator_adversarial_loss([zeros, halves])
    assert float(total) == pytest.approx(1.0 + 0.25)
    assert [float(p) for p in parts] == pytest.approx([1.0, 0.25])

    total, real_terms, fake_terms = discriminator_adversarial_loss([ones, ones], [zeros[:, :5], zeros[:, :5]])
    assert float(total) == 0.0
    total, real_terms, fake_terms = discriminator_adversarial_loss([zeros], [ones])
    assert float(total) == pytest.approx(2.0)
    total, real_terms, fake_terms = discriminator_adversarial_loss([halves], [halves])
    assert float(total) == pytest.approx(0.5)
    assert float(real_terms[0]) == pytest.approx(0.25) and float(fake_terms[0]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same, non-zero number"):
        discriminator_adversarial_loss([ones], [])


def test_feature_matching_value_and_gradient_only_to_fake():
    real = [[torch.zeros(2, 3), torch.ones(1, 4)], [torch.zeros(5)]]
    fake = [[torch.full((2, 3), 2.0, requires_grad=True), torch.full((1, 4), 1.5, requires_grad=True)],
            [torch.full((5,), -1.0, requires_grad=True)]]
    real[0][0].requires_grad_(True)
    loss = feature_matching_loss(real, fake)
    assert float(loss.detach()) == pytest.approx(2.0 + 0.5 + 1.0)
    loss.backward()
    assert real[0][0].grad is None
    assert all(f.grad is not None for maps in fake for f in maps)


def test_mel_l1_value_and_shape_check():
    a, b = torch.zeros(1, 80, 10), torch.full((1, 80, 10), -3.0)
    assert float(mel_l1_loss(a, b)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="mel shapes differ"):
        mel_l1_loss(a, b[..., :9])


RESOLUTIONS = [[256, 64], [512, 128]]


def test_stft_loss_is_zero_for_identical_audio_and_the_log_ratio_for_a_scaled_copy():
    real = torch.randn(2, 1, 4000)
    assert float(multi_resolution_stft_loss(real, real, RESOLUTIONS)) == pytest.approx(0.0, abs=1e-6)
    # half the amplitude: spectral convergence 0.5 and |log 0.5| per bin (bins above the 1e-5 floor)
    assert float(multi_resolution_stft_loss(0.5 * real, real, RESOLUTIONS)) == pytest.approx(0.5 + math.log(2),
                                                                                             rel=1e-3)


def test_stft_loss_sees_a_click_that_the_frames_blur_and_pulls_toward_it():
    """A burst moved by 5 ms (within one 2048-sample mel frame) still costs at 256-sample windows, and the
    gradient flows to the generated audio only."""
    real = torch.zeros(1, 1, 8192)
    real[..., 4000:4040] = torch.randn(40)
    moved = torch.zeros(1, 1, 8192)
    moved[..., 4220:4260] = real[..., 4000:4040]
    moved.requires_grad_(True)
    loss = multi_resolution_stft_loss(moved, real, [[256, 64]])
    assert loss.item() > 1.0
    loss.backward()
    assert moved.grad is not None and float(moved.grad.abs().sum()) > 0


def test_stft_loss_checks_shapes_and_resolutions():
    with pytest.raises(ValueError, match="waveform shapes differ"):
        multi_resolution_stft_loss(torch.zeros(1, 100), torch.zeros(1, 99), RESOLUTIONS)
    with pytest.raises(ValueError, match="at least one"):
        multi_resolution_stft_loss(torch.zeros(1, 100), torch.zeros(1, 100), [])
