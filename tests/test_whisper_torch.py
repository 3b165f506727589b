"""Whisper's encoder in torch (read from a CTranslate2 model.bin) and loss.content built on it.

The tiny random Whisper of conftest (converted to CTranslate2 format) is the stand-in: the torch encoder must
give what CTranslate2 gives for the same weights, gradients must reach the audio, and unusable files must
be refused with the file named.
"""
from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import torch

from conftest import TINY_WHISPER_D_MODEL, harmonic

pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (a dependency: pip install -e .)")

from ai_singer.content_loss import ContentLoss  # noqa: E402
from ai_singer.errors import UserError  # noqa: E402
from ai_singer.features.content import WhisperContentEncoder  # noqa: E402
from ai_singer.features.whisper_torch import (  # noqa: E402
    CT2FormatError, WhisperTorchEncoder, read_ct2_tensors, resample_fft, whisper_log_mel,
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here on one torch thread."""


def _voice(seconds: float = 2.0) -> torch.Tensor:
    rng = np.random.default_rng(0)
    wav = harmonic(180.0, 16000, seconds) + 0.02 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
    return torch.from_numpy(wav.astype(np.float32))


def test_torch_encoder_gives_what_ctranslate2_gives_for_the_same_weights(tiny_whisper):
    folder, _ = tiny_whisper
    reference = WhisperContentEncoder(folder)
    encoder = WhisperTorchEncoder.from_folder(folder).eval()
    assert (encoder.width, encoder.n_mels, len(encoder.layers)) == (TINY_WHISPER_D_MODEL, 80, 1)
    wav = _voice()[None]
    expected = reference.encode(wav)  # padded to 30 s, first frame dropped
    with torch.no_grad():
        mine = encoder(whisper_log_mel(wav, 80, pad_to=480000))
    assert mine.shape == (1, 1500, TINY_WHISPER_D_MODEL)
    torch.testing.assert_close(mine[:, 1:expected.shape[1] + 1], expected, rtol=1e-4, atol=1e-4)
    # The padded log-mel is the one the CTranslate2 backend feeds (one function for both).
    torch.testing.assert_close(whisper_log_mel(wav, 80, pad_to=480000), reference.log_mel(wav))


def test_unpadded_input_gives_half_as_many_frames_as_mel_frames():
    wav = _voice(1.0)[None]
    mel = whisper_log_mel(wav, 80)
    assert mel.shape == (1, 80, 16000 // 160)
    encoder = WhisperTorchEncoder(80, 16, 2, 1, 32, positions=100)
    assert encoder(mel).shape == (1, (mel.shape[-1] + 1) // 2, 16)
    with pytest.raises(ValueError, match="at most 200 mel frames"):
        encoder(whisper_log_mel(_voice(3.0)[None], 80))


def test_resample_fft_keeps_a_tone_and_its_length():
    sr_in, sr_out = 44100, 16000
    t = torch.arange(sr_in) / sr_in
    tone = torch.sin(2 * torch.pi * 440.0 * t)
    out = resample_fft(tone[None], sr_in, sr_out)
    assert out.shape == (1, sr_out)
    expected = torch.sin(2 * torch.pi * 440.0 * torch.arange(sr_out) / sr_out)
    torch.testing.assert_close(out[0], expected, atol=1e-3, rtol=0)
    assert resample_fft(tone, sr_in, sr_in) is tone


def test_content_loss_is_zero_for_the_recording_itself_and_its_gradient_reaches_the_audio(tiny_whisper):
    folder, _ = tiny_whisper
    loss = ContentLoss(str(folder), sample_rate=44100)
    assert not any(p.requires_grad for p in loss.parameters())
    real = resample_fft(_voice(1.0)[None, None], 16000, 44100)
    assert float(loss(real, real)) == 0.0
    fake = (0.5 * real + 0.01 * torch.randn_like(real)).requires_grad_(True)
    value = loss(fake, real)
    assert value > 0
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_unusable_model_files_are_refused_naming_the_file(tiny_whisper, tmp_path):
    folder, _ = tiny_whisper
    # a file cut short
    cut = tmp_path / "cut"
    shutil.copytree(folder, cut)
    data = (cut / "model.bin").read_bytes()
    (cut / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CT2FormatError, match=r"cut/model.bin: truncated"):
        WhisperTorchEncoder.from_folder(cut)
    # an unknown binary version
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    (old / "model.bin").write_bytes(struct.pack("<I", 2) + data[4:])
    with pytest.raises(CT2FormatError, match=r"old/model.bin: CTranslate2 binary version 2") as error:
        read_ct2_tensors(old / "model.bin")
    assert isinstance(error.value, UserError) and "convert the model again" in str(error.value)
    # no model.bin at all
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        WhisperTorchEncoder.from_folder(tmp_path / "empty")


def test_a_quantised_model_is_refused_with_what_to_convert_instead(tiny_whisper, tmp_path):
    import ctranslate2

    folder, model = tiny_whisper
    hf = folder.parent / "hf"
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(tmp_path / "int8"), quantization="int8")
    with pytest.raises(CT2FormatError, match=r"int8/model.bin: tensor 'encoder/.*' is stored as int8 .*float16 or "
                                             r"float32"):
        WhisperTorchEncoder.from_folder(tmp_path / "int8")
