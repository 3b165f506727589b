"""FCPE (Fast Context-based Pitch Estimation, the ``torchfcpe`` package's bundled model), written here so
that it runs without the package's own code (which imports torchaudio, and torchaudio does not load beside
the CPU torch build). Only the weight file is read from the installed wheel.

The bundled model (``fcpe_c_v001.pt``) is convolution only: a log-mel spectrogram of 16 kHz audio (128
bands up to 8 kHz, 1024-sample Hann window, 10 ms hop) goes through two 3-tap convolutions, six residual
conformer convolution modules (no attention) and a sigmoid layer that scores 360 pitch bins spaced evenly
in cents from 32.7 Hz to 1975.5 Hz. The pitch is the score-weighted mean of the 9 bins around the best
one; the best score is the voicing confidence (the package marks a frame unvoiced below 0.006).

Tested against the package's own output: ``tests/test_fcpe.py`` with the fixture written by
``tools/make_fcpe_fixture.py``.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

SAMPLE_RATE = 16000
HOP = 160
N_FFT = 1024
N_MELS = 128
MEL_FMAX = 8000.0
LOG_FLOOR = 1e-5
#: The decoder averages this many bins each side of the best one.
LOCAL_BINS = 4


class LogMel(nn.Module):
    """Log-mel spectrogram as FCPE was trained on: [B, samples] at 16 kHz -> [B, samples // 160 + 1, 128].

    Frame ``i`` is centred at sample ``i * 160 + 80``: the signal is padded by ``(1024 - 160) // 2`` samples
    each side (reflected) and windowed without centring; the last frame is repeated once to give
    ``samples // 160 + 1`` frames."""

    def __init__(self) -> None:
        super().__init__()
        import librosa

        basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=MEL_FMAX)
        self.register_buffer("basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        n = wav.shape[-1]
        left = (N_FFT - HOP) // 2
        right = max((N_FFT - HOP + 1) // 2, N_FFT - n - left)
        padded = torch.nn.functional.pad(wav[:, None, :], (left, right), mode="reflect" if right < n else "constant")
        spectrum = torch.stft(padded[:, 0], N_FFT, hop_length=HOP, win_length=N_FFT, window=self.window,
                              center=False, return_complex=True)
        magnitude = torch.sqrt(spectrum.real ** 2 + spectrum.imag ** 2 + 1e-9)
        mel = torch.log(torch.clamp(self.basis @ magnitude, min=LOG_FLOOR)).transpose(1, 2)  # [B, T, 128]
        frames = n // HOP + 1
        if mel.shape[1] < frames:
            mel = torch.cat([mel, mel[:, -1:].expand(-1, frames - mel.shape[1], -1)], dim=1)
        return mel[:, :frames]


class ConvModule(nn.Module):
    """Conformer convolution module: LayerNorm, pointwise to 2x(2 dim) + GLU, depthwise k=31, SiLU,
    pointwise back. [B, T, dim] -> [B, T, dim]."""

    def __init__(self, dim: int, kernel: int = 31) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Conv1d(dim, 4 * dim, 1)
        self.depthwise = nn.Conv1d(2 * dim, 2 * dim, kernel, padding=kernel // 2, groups=2 * dim)
        self.project = nn.Conv1d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.glu(self.expand(self.norm(x).transpose(1, 2)), dim=1)
        return self.project(nn.functional.silu(self.depthwise(y))).transpose(1, 2)


class FCPE(nn.Module):
    """The network: log-mel [B, T, 128] -> bin scores in 0..1 [B, T, bins]."""

    def __init__(self, n_mels: int = N_MELS, dim: int = 512, layers: int = 6, bins: int = 360) -> None:
        super().__init__()
        self.mel = LogMel()
        self.conv_in = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.group_norm = nn.GroupNorm(4, dim)
        self.conv_mid = nn.Conv1d(dim, dim, 3, padding=1)
        self.blocks = nn.ModuleList(ConvModule(dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, bins)
        self.register_buffer("cents", torch.zeros(bins))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_mid(nn.functional.leaky_relu(self.group_norm(self.conv_in(mel.transpose(1, 2)))))
        x = x.transpose(1, 2)
        for block in self.blocks:
            x = x + block(x)
        return torch.sigmoid(self.out(self.norm(x)))

    @torch.no_grad()
    def track(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz audio [B, samples] -> (f0 Hz [B, T], confidence [B, T]), ``T = samples // 160 + 1``,
        frame ``i`` centred at ``(i + 0.5) * 10`` ms; a pitch for every frame, voiced or not."""
        scores = self(self.mel(wav))
        confidence, best = scores.max(dim=-1)
        bins = scores.shape[-1]
        around = (best[..., None] + torch.arange(-LOCAL_BINS, LOCAL_BINS + 1, device=best.device)).clamp(0, bins - 1)
        weights = scores.gather(-1, around)
        cents = (self.cents[around] * weights).sum(-1) / weights.sum(-1)
        return 10.0 * 2.0 ** (cents / 1200.0), confidence


def convert_state_dict(package_state: Mapping[str, torch.Tensor], layers: int = 6) -> dict[str, torch.Tensor]:
    """The package's state dict (``torchfcpe`` ``CFNaiveMelPE``) -> this module's names. Its weight-normed
    output layer is folded (``g * v / |v|`` per output row); each layer's attention LayerNorm, unused by the
    convolution-only model, is dropped. A missing key raises KeyError."""
    ours = {
        "conv_in.weight": package_state["input_stack.0.weight"], "conv_in.bias": package_state["input_stack.0.bias"],
        "group_norm.weight": package_state["input_stack.1.weight"],
        "group_norm.bias": package_state["input_stack.1.bias"],
        "conv_mid.weight": package_state["input_stack.3.weight"], "conv_mid.bias": package_state["input_stack.3.bias"],
        "norm.weight": package_state["norm.weight"], "norm.bias": package_state["norm.bias"],
        "out.bias": package_state["output_proj.bias"], "cents": package_state["cent_table"],
    }
    direction = package_state["output_proj.weight_v"]
    ours["out.weight"] = package_state["output_proj.weight_g"] * direction / direction.norm(dim=1, keepdim=True)
    parts = {"norm": "net.0", "expand": "net.2", "depthwise": "net.4.conv", "project": "net.6"}
    for layer in range(layers):
        for name, theirs in parts.items():
            for kind in ("weight", "bias"):
                ours[f"blocks.{layer}.{name}.{kind}"] = package_state[f"net.encoder_layers.{layer}.conformer.{theirs}.{kind}"]
    return ours


def load_fcpe(path: str) -> FCPE:
    """The FCPE model from the package's checkpoint file (read with ``weights_only=True``), in eval mode."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    config = checkpoint["config_dict"]
    model_config, mel_config = config["model"], config["mel"]
    expected = {"sr": SAMPLE_RATE, "hop_size": HOP, "n_fft": N_FFT, "win_size": N_FFT, "num_mels": N_MELS}
    if (any(mel_config.get(k) != v for k, v in expected.items()) or not model_config.get("conv_only")
                         or model_config.get("use_harmonic_emb")):
        raise ValueError(f"{path}: not the convolution-only FCPE this module implements "
                         f"(mel {mel_config}, model {model_config})")
    model = FCPE(int(mel_config["num_mels"]), int(model_config["hidden_dims"]), int(model_config["n_layers"]),
                 int(model_config["out_dims"]))
    model.load_state_dict(convert_state_dict(checkpoint["model"], int(model_config["n_layers"])), strict=True)
    return model.eval()

