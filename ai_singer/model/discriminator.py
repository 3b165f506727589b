"""The adversary (training only; inference never imports this file).

:class:`Discriminator` = multi-period sub-discriminators (the waveform folded into ``[L / p, p]`` and
read with 2-D convs along time, HiFi-GAN's MPD) + multi-scale sub-discriminators (1-D grouped convs on
the waveform and on average-pooled copies of it, HiFi-GAN's MSD; so-vits-svc uses one scale).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ai_singer.model.layers import with_weight_norm

LEAKY_SLOPE = 0.1


def _width(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


def _conv_stack(x: torch.Tensor, convs: nn.ModuleList, output_conv: nn.Module
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A sub-discriminator's body on ``x`` (``[B, C, T]`` or folded ``[B, C, T / p, p]``): each conv then a leaky
    ReLU, then the output conv. Returns (logits flattened to ``[B, n]``, every layer's output as feature maps)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LEAKY_SLOPE)
        features.append(x)
    x = output_conv(x)
    features.append(x)
    return x.flatten(1), features


class DiscriminatorOutput(NamedTuple):
    """Per sub-discriminator: logits (``[B, n]`` each) and feature maps (a list of tensors each) for the
    real and the generated audio. ``len(real_logits) == len(periods) + n_scales``. A named tuple, so
    ``real_logits, fake_logits, real_features, fake_features = discriminator(real, fake)`` works."""

    real_logits: list[torch.Tensor]
    fake_logits: list[torch.Tensor]
    real_features: list[list[torch.Tensor]]
    fake_features: list[list[torch.Tensor]]


class PeriodDiscriminator(nn.Module):
    """``[B, 1, L] -> (logits [B, n], feature maps)``, reading every ``period``-th sample as one column."""

    def __init__(self, period: int, width: float = 1.0, kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        channels = [1] + [_width(c, width) for c in (32, 128, 512, 1024, 1024)]
        self.convs = nn.ModuleList()
        for i in range(5):
            self.convs.append(with_weight_norm(nn.Conv2d(
                channels[i], channels[i + 1], (kernel_size, 1), (stride if i < 4 else 1, 1),
                padding=((kernel_size - 1) // 2, 0))))
        self.output_conv = with_weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, channels, length = x.shape
        if length % self.period:
            pad = self.period - length % self.period
            x = F.pad(x, (0, pad), mode="reflect" if length > pad else "constant")
            length += pad
        x = x.view(batch, channels, length // self.period, self.period)
        return _conv_stack(x, self.convs, self.output_conv)


class ScaleDiscriminator(nn.Module):
    """``[B, 1, L] -> (logits [B, n], feature maps)`` with strided, grouped 1-D convs."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        # (out channels, kernel, stride, groups) as in HiFi-GAN's scale discriminator
        layout = [(16, 15, 1, 1), (64, 41, 4, 4), (256, 41, 4, 16), (1024, 41, 4, 64), (1024, 41, 4, 256),
                  (1024, 5, 1, 1)]
        self.convs = nn.ModuleList()
        in_channels = 1
        for out, kernel, stride, groups in layout:
            out = _width(out, width)
            groups = max(1, min(groups, in_channels, out))
            while in_channels % groups or out % groups:
                groups -= 1
            self.convs.append(with_weight_norm(nn.Conv1d(in_channels, out, kernel, stride, groups=groups,
                                                         padding=(kernel - 1) // 2)))
            in_channels = out
        self.output_conv = with_weight_norm(nn.Conv1d(in_channels, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _conv_stack(x, self.convs, self.output_conv)


class Discriminator(nn.Module):
    """Multi-period (``periods``) + multi-scale (``n_scales``; scale ``s`` reads the audio average-pooled
    ``s`` times by 2) discriminator. ``width`` scales every channel count (1.0 = HiFi-GAN size).

    ``forward(real [B, 1, L], fake [B, 1, L]) -> DiscriminatorOutput``.
    """

    def __init__(self, periods: list[int] | tuple[int, ...] = (2, 3, 5, 7, 11), n_scales: int = 1,
                 width: float = 1.0):
        super().__init__()
        self.n_scales = n_scales
        self.period_discriminators = nn.ModuleList(PeriodDiscriminator(int(p), width) for p in periods)
        self.scale_discriminators = nn.ModuleList(ScaleDiscriminator(width) for _ in range(n_scales))

    @classmethod
    def from_config(cls, config) -> "Discriminator":
        """Build the discriminator described by a :class:`~ai_singer.model.synthesizer.SingerVAEConfig`."""
        return cls(config.discriminator_periods, config.discriminator_scales, config.discriminator_width)

    def _run(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, features = [], []
        for disc in self.period_discriminators:
            out, feats = disc(x)
            logits.append(out)
            features.append(feats)
        pooled = x
        for i, disc in enumerate(self.scale_discriminators):
            if i > 0:
                pooled = F.avg_pool1d(pooled, 4, 2, padding=2)
            out, feats = disc(pooled)
            logits.append(out)
            features.append(feats)
        return logits, features

    @staticmethod
    def _check_pair(real: torch.Tensor, fake: torch.Tensor) -> None:
        if real.shape != fake.shape or real.dim() != 3 or real.shape[1] != 1:
            raise ValueError(f"real and fake audio must both be [B, 1, L]; got {tuple(real.shape)} and "
                             f"{tuple(fake.shape)}")

    def for_generator(self, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorOutput:
        """What the generator's losses read (``real``/``fake`` [B, 1, L]): the same values as ``forward``, but
        the discriminator's parameters get no gradient and the real audio (only a target) builds no graph, so
        the generator's backward pass skips the discriminator's weight gradients and the real half entirely.
        Gradients reaching ``fake`` are those of ``forward``."""
        self._check_pair(real, fake)
        with torch.no_grad():
            real_logits, real_features = self._run(real)
        with _parameters_frozen(self):
            fake_logits, fake_features = self._run(fake)
        return DiscriminatorOutput(real_logits=real_logits, fake_logits=fake_logits, real_features=real_features,
                                   fake_features=fake_features)

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorOutput:
        self._check_pair(real, fake)
        both = torch.cat([real, fake], dim=0)
        logits, features = self._run(both)
        batch = real.shape[0]
        return DiscriminatorOutput(
            real_logits=[l[:batch] for l in logits], fake_logits=[l[batch:] for l in logits],
            real_features=[[f[:batch] for f in feats] for feats in features],
            fake_features=[[f[batch:] for f in feats] for feats in features])


@contextlib.contextmanager
def _parameters_frozen(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s parameters do not require grad (ops recorded then never compute their
    gradients); each parameter's own flag comes back afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
