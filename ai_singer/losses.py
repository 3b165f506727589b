"""Training losses of the VAE-GAN (VITS / so-vits-svc form). Plain functions; the weights that combine
them come from the ``loss`` config group, never from here. Training only: inference never imports this.

Typical use in a training step (``out`` is a :class:`~ai_singer.model.synthesizer.SynthOutput`, ``d`` a
:class:`~ai_singer.model.discriminator.Discriminator`)::

    real_logits, fake_logits, _, _ = d(real, out.wav.detach())
    loss_d, _, _ = discriminator_adversarial_loss(real_logits, fake_logits)
    _, fake_logits, real_features, fake_features = d(real, out.wav)
    loss_g = (w.mel * mel_l1_loss(mel(out.wav), mel(real)) + w.kl * kl_loss(out)
              + w.feature_matching * feature_matching_loss(real_features, fake_features)
              + w.adversarial * generator_adversarial_loss(fake_logits)[0])
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.nn import functional as F


def mel_l1_loss(mel_fake: torch.Tensor, mel_real: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of log-mel spectrograms ``[B, n_mels, frames]`` (the caller computes
    both with the same settings). Returns a scalar."""
    if mel_fake.shape != mel_real.shape:
        raise ValueError(f"mel shapes differ: generated {tuple(mel_fake.shape)} vs target {tuple(mel_real.shape)}")
    return F.l1_loss(mel_fake, mel_real)


def multi_resolution_stft_loss(fake: torch.Tensor, real: torch.Tensor,
                               resolutions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1 between ``fake`` and ``real`` waveforms ``[B, 1, S]`` or
    ``[B, S]``, averaged over ``resolutions`` (``(n_fft, hop)`` pairs, Hann windows of ``n_fft``), as in
    Parallel WaveGAN / DDSP's multi-scale spectral loss. Short windows see what a 2048-sample mel cannot: the
    onsets and bursts of consonants within a frame. Computed in fp32. Returns a scalar."""
    if fake.shape != real.shape:
        raise ValueError(f"waveform shapes differ: generated {tuple(fake.shape)} vs target {tuple(real.shape)}")
    if not resolutions:
        raise ValueError("multi_resolution_stft_loss needs at least one (n_fft, hop) resolution")
    fake = fake.reshape(fake.shape[0], -1).float()
    real = real.reshape(real.shape[0], -1).float()
    total = fake.new_zeros(())
    for n_fft, hop in resolutions:
        window = torch.hann_window(int(n_fft), device=fake.device)
        mags = [torch.stft(x, int(n_fft), hop_length=int(hop), win_length=int(n_fft), window=window, center=True,
                           return_complex=True).abs().clamp_min(1e-5) for x in (fake, real)]
        convergence = torch.linalg.norm(mags[1] - mags[0]) / torch.linalg.norm(mags[1]).clamp_min(1e-5)
        total = total + convergence + F.l1_loss(torch.log(mags[0]), torch.log(mags[1]))
    return total / len(resolutions)


def kl_loss(z_p: torch.Tensor | Any, logs_q: torch.Tensor | None = None, m_p: torch.Tensor | None = None,
            logs_p: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q || p) between the posterior (mapped through the flow) and the prior, as VITS estimates it.

    Call as ``kl_loss(z_p, logs_q, m_p, logs_p, mask)`` or ``kl_loss(out)`` with an object carrying those
    attributes (a ``SynthOutput``). With ``z_p = flow(z)``, ``z ~ q = N(m_q, exp(logs_q))`` and the flow
    volume preserving, ``log q(z) - log p(z_p)`` is estimated per element as
    ``logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p)^2 * exp(-2 logs_p)`` (the ``-0.5`` is the expected
    ``-0.5 ((z - m_q) / s_q)^2`` under the posterior). Tensors [B, I, T]; ``mask`` [B, 1, T] float.
    Returns the masked sum divided by the number of valid frames (a scalar), as in VITS.
    """
    if logs_q is None:
        out = z_p
        z_p, logs_q, m_p, logs_p, mask = out.z_p, out.logs_q, out.m_p, out.logs_p, out.mask
    if m_p is None or logs_p is None or mask is None:
        raise TypeError("kl_loss needs (z_p, logs_q, m_p, logs_p, mask) or one SynthOutput")
    z_p, logs_q, m_p, logs_p = z_p.float(), logs_q.float(), m_p.float(), logs_p.float()
    mask = mask.float()
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * mask) / torch.sum(mask).clamp_min(1.0)


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          fake_features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Sum over sub-discriminators and layers of the mean absolute difference between the feature maps of
    real audio (no gradient) and generated audio (lists of lists of same-shaped tensors). VITS multiplies
    this sum by 2; here that factor belongs in the config weight. Returns a scalar."""
    if len(real_features) != len(fake_features):
        raise ValueError(f"{len(real_features)} real vs {len(fake_features)} fake feature lists")
    total = None
    for real_maps, fake_maps in zip(real_features, fake_features):
        if len(real_maps) != len(fake_maps):
            raise ValueError(f"{len(real_maps)} real vs {len(fake_maps)} fake feature maps in one discriminator")
        for real, fake in zip(real_maps, fake_maps):
            term = torch.mean(torch.abs(real.detach().float() - fake.float()))
            total = term if total is None else total + term
    if total is None:
        raise ValueError("feature_matching_loss needs at least one feature map")
    return total


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LSGAN generator loss over the sub-discriminators' logits on generated audio (each [B, n]).

    Returns ``(total, per_discriminator)`` with ``total = sum_k mean((1 - D_k(fake))^2)``.
    """
    if not fake_logits:
        raise ValueError("generator_adversarial_loss needs at least one logit tensor")
    losses = [torch.mean((1.0 - logits.float()) ** 2) for logits in fake_logits]
    return sum(losses), losses


def discriminator_adversarial_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]
                                   ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """LSGAN discriminator loss (call with the generated audio detached). Each logit tensor [B, n].

    Returns ``(total, real_terms, fake_terms)`` with ``real_terms[k] = mean((1 - D_k(real))^2)``,
    ``fake_terms[k] = mean(D_k(fake)^2)`` and ``total`` the sum of both lists.
    """
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ValueError(f"need the same, non-zero number of real ({len(real_logits)}) and fake "
                         f"({len(fake_logits)}) logit tensors")
    real_terms = [torch.mean((1.0 - real.float()) ** 2) for real in real_logits]
    fake_terms = [torch.mean(fake.float() ** 2) for fake in fake_logits]
    return sum(real_terms) + sum(fake_terms), real_terms, fake_terms
