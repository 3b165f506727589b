"""Helpers for the importer tests (so-vits-svc, RVC): load an imported base as a model, and serve the random
draws an original implementation made to ours."""
from __future__ import annotations

from pathlib import Path

import torch

from ai_singer import checkpoint
from ai_singer.model import SingerVAE


def load_model(base_dir: Path) -> SingerVAE:
    """The generator of the base folder ``base_dir``, loaded strictly."""
    base = checkpoint.load_base(base_dir)
    model = SingerVAE(base.model_config)
    checkpoint.load_state_strict(model, base.generator_state, base_dir / checkpoint.BASE_GENERATOR_FILE)
    return model


class Replay:
    """Serves recorded random draws to our model: ``torch.randn``/``randn_like``/``rand`` return the tensor
    queued for the requested shape (and fail on any draw that was not planned)."""

    def __init__(self, monkeypatch, draws: dict[tuple, list[torch.Tensor]]):
        self.draws = {shape: list(values) for shape, values in draws.items()}
        monkeypatch.setattr(torch, "randn", self._serve)
        monkeypatch.setattr(torch, "rand", self._serve)
        monkeypatch.setattr(torch, "randn_like", lambda t, **kw: self._serve(t.shape, dtype=t.dtype))

    def _serve(self, *shape, dtype=None, **_):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        queue = self.draws.get(tuple(shape))
        assert queue, f"unplanned random draw of shape {tuple(shape)}"
        value = queue.pop(0)
        return value.to(dtype) if dtype is not None else value.clone()

    def all_used(self) -> bool:
        return not any(self.draws.values())


class FrameEncoder:
    """A stand-in for ContentVec (``dim`` wide, 50 frames a second): a fixed random projection of each
    320-sample frame."""

    name, sample_rate, hop, receptive_field = "hubert", 16000, 320, 400
    path = "pretrain/content/hubert"

    def __init__(self, dim: int, layer: int, final_proj: bool):
        self.dim, self.layer, self.final_proj = dim, layer, final_proj
        self.projection = torch.randn(400, dim, generator=torch.Generator().manual_seed(3)) * 0.05

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        frames = wav16k.unfold(-1, 400, 320)  # [B, frames, 400]
        return torch.tanh(frames @ self.projection)


def fine_tune_and_convert(base_dir: Path, tmp_path: Path, *, sample_rate: int, content_dim: int, layer: int,
                          final_proj: bool) -> None:
    """``train mode=finetune`` (LoRA, 2 steps) on the imported tiny base (hop 16, n_fft 32, rates [4, 4]),
    then convert a quarter second of a two-partial tone with the adapter: the base works like any base."""
    import numpy as np
    from hydra import compose, initialize_config_dir

    from ai_singer.conf_dir import conf_dir
    from ai_singer.config import load_settings
    from ai_singer.convert import Converter
    from ai_singer.train import run_training, typed_config
    from processed_fixture import write_processed_dataset

    processed = tmp_path / "processed"
    write_processed_dataset(processed, singers=("alto",), train_clips=2, val_clips=1, seconds=0.1,
                            sample_rate=sample_rate, hop_length=16, content_dim=content_dim, encoder_name="hubert",
                            encoder_path="pretrain/content/hubert", encoder_layer=layer, encoder_final_proj=final_proj)
    overrides = [f"paths.processed={processed}", f"paths.pretrain={tmp_path}/pretrain",
                 f"paths.singers={tmp_path}/singers", f"paths.runs={tmp_path}/runs", "trainer=tiny",
                 f"audio.sample_rate={sample_rate}", "audio.hop_length=16", "audio.n_fft=32", "audio.win_length=32",
                 "audio.n_mels=8", "mode=finetune", "singer=alto", f"base={base_dir}", "peft=lora",
                 "trainer.max_steps=2", "trainer.discriminator=off",
                 # conf/model is not used by a fine-tune (the base's own config is) but must fit the framing
                 "model=tiny", "model.upsample_rates=[4,4]", "model.upsample_kernel_sizes=[8,8]"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base=None):
            result = run_training(typed_config(compose("train", overrides=overrides)))
    finally:
        torch.set_num_threads(threads)
    adapter = checkpoint.load_adapter(result.artifact_dir)
    assert adapter.base_sha256 == checkpoint.load_base(base_dir).sha256

    settings = load_settings("infer", ["f0.method=dio", "noise_scale=0"])
    converter = Converter(base_dir, None, settings, tmp_path / "singers", device="cpu",
                          content_encoder=FrameEncoder(content_dim, layer, final_proj))
    t = np.arange(sample_rate // 4) / sample_rate
    vocal = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    converted = converter.convert_vocal(vocal, sample_rate, "alto")
    assert converted.audio.shape == vocal.shape and np.isfinite(converted.audio).all()
    assert np.abs(converted.audio).max() > 0
