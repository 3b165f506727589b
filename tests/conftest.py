"""Shared test fixtures: synthetic harmonic audio and a tiny random HuBERT in Hugging Face format.

Everything here is built in code; nothing is downloaded. Keep it small: the default suite must stay
well under five minutes on two CPU cores.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def harmonic(f0_hz, sr: int, seconds: float | None = None, n_harmonics: int = 12, amplitude: float = 0.3,
             seed: int = 0) -> np.ndarray:
    """A voiced, singing-like tone: ``n_harmonics`` harmonics with a 1/k spectral tilt.

    ``f0_hz`` is a float (constant pitch, needs ``seconds``) or an array with one F0 value per sample
    (0 = silence). A pure sine is marked unvoiced by WORLD's harvest, hence the harmonics.
    Returns float32 [samples].
    """
    if np.isscalar(f0_hz):
        if seconds is None:
            raise ValueError("seconds is needed with a constant f0")
        f0 = np.full(int(round(seconds * sr)), float(f0_hz))
    else:
        f0 = np.asarray(f0_hz, dtype=np.float64)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros_like(f0)
    for k in range(1, n_harmonics + 1):
        below_nyquist = (k * f0) < (sr / 2)
        out += below_nyquist * np.sin(k * phase) / k
    out *= (f0 > 0)
    rng = np.random.default_rng(seed)
    out += 1e-4 * rng.standard_normal(out.shape) * (f0 > 0)
    peak = np.max(np.abs(out)) or 1.0
    return (amplitude * out / peak).astype(np.float32)


def phrase_with_silences(sr: int, notes=((220.0, 1.2), (0.0, 0.6), (330.0, 1.0), (0.0, 0.8), (262.0, 1.5)),
                         vibrato_hz: float = 5.5, vibrato_cents: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """A sung phrase: notes (Hz, seconds) with rests (0 Hz). Returns (audio float32 [samples],
    per-sample F0 ground truth float64 [samples], 0 in rests)."""
    parts = []
    for hz, dur in notes:
        n = int(round(dur * sr))
        if hz > 0:
            t = np.arange(n) / sr
            parts.append(hz * 2 ** (vibrato_cents / 1200 * np.sin(2 * np.pi * vibrato_hz * t)))
        else:
            parts.append(np.zeros(n))
    f0 = np.concatenate(parts)
    return harmonic(f0, sr), f0


@pytest.fixture(scope="session")
def tiny_hubert_dir(tmp_path_factory) -> Path:
    """A tiny random ``HubertModel`` saved with ``save_pretrained`` (config.json + model.safetensors),
    the same format as ContentVec/HuBERT checkpoints in Hugging Face format. Hidden size 32, 2 layers,
    no ``final_proj`` (tests/test_content.py builds ContentVec-style folders with one)."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32, 32, 32, 32, 32), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=16,
    )
    model = HubertModel(config).eval()
    out = tmp_path_factory.mktemp("tiny_hubert")
    model.save_pretrained(out)
    return out


@pytest.fixture
def one_torch_thread():
    """torch (and so CTranslate2) on one thread for the test: the test machine has two shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Width of the tiny random Whisper of :func:`tiny_whisper`.
TINY_WHISPER_D_MODEL = 32


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    """A tiny random Whisper (d_model 32, one layer each side) built with transformers and converted to
    CTranslate2 format (float32): (CTranslate2 folder, the transformers model it was converted from)."""
    ctranslate2 = pytest.importorskip("ctranslate2",
                                      reason="ctranslate2 is not installed (a dependency: pip install -e .)")
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    vocab = 64
    torch.manual_seed(0)
    config = WhisperConfig(d_model=TINY_WHISPER_D_MODEL, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           max_source_positions=1500, max_target_positions=32, vocab_size=vocab, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, suppress_tokens=[],
                           begin_suppress_tokens=[])
    model = WhisperForConditionalGeneration(config).eval()
    root = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(root / "hf")
    # The converter reads a tokenizer for the vocabulary: a word-level one with the model's vocab size.
    tokens = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=tokens).save_pretrained(root / "hf")
    transformers_logging.disable_progress_bar()
    ctranslate2.converters.TransformersConverter(str(root / "hf"), load_as_float16=False).convert(str(root / "ct2"))
    transformers_logging.enable_progress_bar()
    return root / "ct2", model


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A Hydra app run inside a test adds a file handler under that test's tmp folder to the root logger; once
    the folder is gone, any later log record (an HTTP client's, a server's) would fail to open it. Each test
    leaves the root logger's handlers and level as it found them."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
