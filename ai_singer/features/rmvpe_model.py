"""RMVPE (Wei et al. 2023, "RMVPE: A Robust Model for Vocal Pitch Estimation in Polyphonic Music"), the F0
tracker of RVC, written here to read RVC's ``rmvpe.pt`` (a plain state dict, float16 as published) without
RVC's code. Only the file's tensor names and shapes are relied on.

Front end: 16 kHz audio, 1024-point STFT (Hann window of 1024) every 160 samples with the signal
reflect-padded by 512 each side, so frame ``i`` is centred at ``i * 10`` ms and a clip of ``N`` samples has
``N // 160 + 1`` frames; magnitude through 128 HTK-scale mel bands (30 Hz - 8 kHz, Slaney area
normalisation), ``log(max(mel, 1e-5))``.

Network, on the log-mel as an image [B, 1, frames, 128]: a batch norm, then a U-Net: ``levels`` (5) encoder
levels, each a stack of ``blocks`` residual blocks (two 3x3 convolutions with batch norm and ReLU, a 1x1
convolution on the skip path when the channels change) followed by 2x2 average pooling, channels doubling
from ``channels`` (16); ``intermediate`` (4) stacks at the bottom doubling the channels once more; ``levels``
decoder levels, each a stride-2 transposed 3x3 convolution (batch norm, ReLU) concatenated with the
encoder's output of the same size and a stack of residual blocks halving the channels. A 3x3 convolution to 3
channels, flattened per frame to 3 x 128 features, one bidirectional GRU (256 units per direction), a linear
layer to 360 bins and a sigmoid: the salience. The frame count is zero-padded (in the log-mel domain) to a
multiple of ``2 ** levels`` for the pooling and cropped after.

Bins are 20 cents apart from 1997.38 cents above 10 Hz (~31.7 Hz to ~2006 Hz). Decoding: the best bin over
all 360 and the salience-weighted mean (in cents) of the 9 bins around it (bins beyond the edges weigh 0); the
best bin's salience is the confidence (RVC calls a frame unvoiced when it is at most 0.03).

Tested against RVC's own implementation with random weights in the original layout: ``tests/test_f0_rmvpe.py``
with the fixture written by ``tools/make_rmvpe_fixture.py``.
"""
from __future__ import annotations

import pickle
from typing import Mapping

import torch
from torch import nn

SAMPLE_RATE = 16000
HOP = 160
N_FFT = 1024
N_MELS = 128
MEL_FMIN = 30.0
MEL_FMAX = 8000.0
LOG_FLOOR = 1e-5
BINS = 360
CENTS_PER_BIN = 20.0
#: Cents (re 10 Hz) of bin 0.
FIRST_BIN_CENTS = 1997.3794084376191
#: The decoder averages this many bins each side of the best one.
LOCAL_BINS = 4
#: Output channels of the final convolution, flattened with the mel axis into the GRU's input.
HEAD_CHANNELS = 3


class LogMel(nn.Module):
    """RMVPE's log-mel front end: 16 kHz audio [B, samples] -> [B, 128, samples // 160 + 1]."""

    def __init__(self) -> None:
        super().__init__()
        import librosa

        basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=MEL_FMIN, fmax=MEL_FMAX,
                                    htk=True)
        self.register_buffer("basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        half = N_FFT // 2
        # Reflection needs more samples than the padding; a shorter clip is padded with silence instead.
        mode = "reflect" if wav.shape[-1] > half else "constant"
        padded = nn.functional.pad(wav[:, None, :], (half, half), mode=mode)[:, 0]
        spectrum = torch.stft(padded, N_FFT, hop_length=HOP, win_length=N_FFT, window=self.window, center=False,
                              return_complex=True)
        magnitude = torch.sqrt(spectrum.real ** 2 + spectrum.imag ** 2)
        return torch.log(torch.clamp(self.basis @ magnitude, min=LOG_FLOOR))


class ResidualBlock(nn.Module):
    """Two (3x3 convolution, batch norm, ReLU) layers plus the input (through a 1x1 convolution when the
    channel count changes): [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width_in in (channels_in, channels_out):
            layers += [nn.Conv2d(width_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
                       nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.shortcut = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


def residual_blocks(channels_in: int, channels_out: int, count: int) -> nn.ModuleList:
    """``count`` residual blocks in a row, the first one changing ``channels_in`` to ``channels_out``."""
    return nn.ModuleList(ResidualBlock(channels_in if k == 0 else channels_out, channels_out) for k in range(count))


class Stack(nn.Module):
    """Residual blocks applied in turn ([B, C_in, H, W] -> [B, C_out, H, W]); an encoder level or an
    intermediate stack (the encoder pools after it)."""

    def __init__(self, channels_in: int, channels_out: int, blocks: int) -> None:
        super().__init__()
        self.conv = residual_blocks(channels_in, channels_out, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class UpLevel(nn.Module):
    """A decoder level: [B, C, H, W] and the encoder's [B, C/2, 2H, 2W] -> [B, C/2, 2H, 2W]."""

    def __init__(self, channels_in: int, blocks: int) -> None:
        super().__init__()
        channels_out = channels_in // 2
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(channels_in, channels_out, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(channels_out), nn.ReLU())
        self.conv2 = residual_blocks(2 * channels_out, channels_out, blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.conv1(x), skip], dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class Levels(nn.Module):
    """A named list of levels (``layers``), as the checkpoint's names have them; with ``bn`` for the encoder."""

    def __init__(self, layers: list[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        if norm is not None:
            self.bn = norm
        self.layers = nn.ModuleList(layers)


class UNet(nn.Module):
    """[B, 1, T, 128] -> [B, channels, T, 128] (``T`` a multiple of ``2 ** levels``)."""

    def __init__(self, channels: int, levels: int, blocks: int, intermediate: int) -> None:
        super().__init__()
        widths = [channels * 2 ** k for k in range(levels + 1)]
        self.encoder = Levels([Stack(1 if k == 0 else widths[k - 1], widths[k], blocks) for k in range(levels)],
                              nn.BatchNorm2d(1))
        self.intermediate = Levels([Stack(widths[levels - 1] if k == 0 else widths[levels], widths[levels], blocks)
                                    for k in range(intermediate)])
        self.decoder = Levels([UpLevel(widths[levels - k], blocks) for k in range(levels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        x = self.encoder.bn(x)
        for level in self.encoder.layers:
            x = level(x)
            skips.append(x)
            x = nn.functional.avg_pool2d(x, 2)
        for stack in self.intermediate.layers:
            x = stack(x)
        for level, skip in zip(self.decoder.layers, reversed(skips)):
            x = level(x, skip)
        return x


class BiGru(nn.Module):
    """Bidirectional GRU over frames: [B, T, F] -> [B, T, 2 * hidden]."""

    def __init__(self, features: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class Rmvpe(nn.Module):
    """Log-mel [B, 128, T] -> salience in 0..1 [B, T, 360]; :meth:`track` runs it on audio and decodes.

    The published model: ``channels=16, levels=5, blocks=4, intermediate=4, gru_hidden=256, gru_layers=1``
    (:func:`sizes_of` reads them from a state dict)."""

    def __init__(self, channels: int = 16, levels: int = 5, blocks: int = 4, intermediate: int = 4,
                 gru_hidden: int = 256, gru_layers: int = 1) -> None:
        super().__init__()
        self.levels = levels
        self.mel = LogMel()
        self.unet = UNet(channels, levels, blocks, intermediate)
        self.cnn = nn.Conv2d(channels, HEAD_CHANNELS, 3, padding=1)
        self.fc = nn.ModuleList([BiGru(HEAD_CHANNELS * N_MELS, gru_hidden, gru_layers),
                                 nn.Linear(2 * gru_hidden, BINS)])
        cents = CENTS_PER_BIN * torch.arange(BINS, dtype=torch.float64) + FIRST_BIN_CENTS
        self.register_buffer("cents", cents, persistent=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        frames = mel.shape[-1]
        multiple = 2 ** self.levels
        mel = nn.functional.pad(mel, (0, -frames % multiple))
        x = self.cnn(self.unet(mel.transpose(1, 2)[:, None]))  # [B, 3, T, 128]
        x = x.transpose(1, 2).flatten(2)  # [B, T, 3 * 128]
        gru, linear = self.fc
        return torch.sigmoid(linear(gru(x)))[:, :frames]

    def decode(self, salience: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Salience [..., 360] -> (f0 Hz [...], confidence [...]) in float64: the weighted mean of the 9 bins
        around the best bin, and the best bin's salience."""
        salience = salience.double()
        confidence, best = salience.max(dim=-1)
        around = best[..., None] + torch.arange(-LOCAL_BINS, LOCAL_BINS + 1, device=best.device)
        inside = (around >= 0) & (around < BINS)
        around = around.clamp(0, BINS - 1)
        weights = salience.gather(-1, around) * inside
        cents = (self.cents[around] * weights).sum(-1) / weights.sum(-1)
        return 10.0 * 2.0 ** (cents / 1200.0), confidence

    @torch.no_grad()
    def track(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz audio [samples] (on the model's device) -> (f0 Hz [T], confidence [T]), float64,
        ``T = samples // 160 + 1``, frame ``i`` centred at ``i * 10`` ms; a pitch for every frame."""
        f0, confidence = self.decode(self(self.mel(wav.float()[None]))[0])
        return f0, confidence


def sizes_of(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The :class:`Rmvpe` keyword arguments that fit a state dict in RVC's layout (a KeyError when a tensor
    that every RMVPE has is missing; the caller's strict load names any other mismatch)."""

    def count(prefix: str) -> int:
        return len({key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)})

    return {
        "channels": int(state["unet.encoder.layers.0.conv.0.conv.0.weight"].shape[0]),
        "levels": count("unet.encoder.layers."),
        "blocks": count("unet.encoder.layers.0.conv."),
        "intermediate": count("unet.intermediate.layers."),
        "gru_hidden": int(state["fc.0.gru.weight_hh_l0"].shape[1]),
        "gru_layers": sum(1 for key in state if key.startswith("fc.0.gru.weight_ih_l") and not key.endswith("reverse")),
    }


def load_rmvpe(path: str) -> Rmvpe:
    """RMVPE from RVC's ``rmvpe.pt`` (a state dict, read with ``weights_only=True``; float16 or float32),
    in float32 and eval mode. Raises ValueError (with the reason) when the file is not such a state dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):
        raise ValueError("torch.load(weights_only=True) cannot read it: not a torch file, or it holds objects "
                         "other than tensors") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("not a state dict of tensors")
    try:
        model = Rmvpe(**sizes_of(state))
    except KeyError as error:
        raise ValueError(f"not RMVPE's layout (no tensor {error})") from None
    try:
        found = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that do not fit: torch lists them one per line
        lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise ValueError(lines[0] if lines else str(error).splitlines()[0]) from None
    if found.missing_keys or found.unexpected_keys:
        missing, unexpected = found.missing_keys, found.unexpected_keys
        raise ValueError(f"not RMVPE's layout: {len(missing)} tensor(s) missing {missing[:2]}, "
                         f"{len(unexpected)} unexpected {unexpected[:2]}")
    return model.float().eval()
