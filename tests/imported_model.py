"""Helpers for the importer tests (so-vits-svc, RVC): load an imported base as a model, serve the random
draws an original implementation made to ours, compare our training forward and discriminator with the
original's recorded outputs, and check that refused input is reported in one line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ai_singer import checkpoint
from ai_singer.model import SingerVAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from tools.reference_fixtures import discriminator_state  # noqa: E402


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


def assert_training_forward_matches(model: SingerVAE, reference: dict[str, torch.Tensor], monkeypatch,
                                    content: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor,
                                    tolerance: float) -> None:
    """Our training forward of ``model`` (train mode) on the reference's batch (``content`` [B, D, T], ``f0``,
    ``voiced`` [B, T] in our layout; spectrogram, lengths and speakers from ``reference``), fed the original's
    recorded draws (harmonic phases [B, K], source noise [B, L, K], posterior noise, slice starts), gives its
    decoded segment, z, z_p and prior and posterior statistics within ``tolerance``."""
    phases = reference["train_phases"].unsqueeze(-1).double()  # theirs [B, K], ours [B, K, 1]
    source_noise = reference["train_source_noise"].transpose(1, 2)  # theirs [B, L, K], ours [B, K, L]
    posterior_noise = reference["train_posterior_noise"]
    replay = Replay(monkeypatch, {tuple(phases.shape): [phases], tuple(source_noise.shape): [source_noise],
                                  tuple(posterior_noise.shape): [posterior_noise]})
    monkeypatch.setattr("ai_singer.model.synthesizer.random_segment_starts",
                        lambda lengths, segment, generator=None: reference["train_slice_starts"].clone())
    with torch.no_grad():
        g = model.embed_speaker(reference["speakers"])
        out = model(content, f0, voiced, torch.ones_like(f0), reference["spec"], reference["lengths"], g)
    assert replay.all_used()
    for ours, theirs in ((out.wav, "train_wav"), (out.z, "train_z"), (out.z_p, "train_z_p"), (out.m_p, "train_m_p"),
                         (out.logs_p, "train_logs_p"), (out.m_q, "train_m_q"), (out.logs_q, "train_logs_q")):
        assert ours.shape == reference[theirs].shape, theirs
        assert (ours - reference[theirs]).abs().max() <= tolerance, theirs


def fixture_discriminator_state(fixtures: Path) -> dict[str, torch.Tensor]:
    """The discriminator weights the fixture writer drew for ``fixtures/D_layout.json`` (its keys, in order)."""
    return discriminator_state(json.loads((fixtures / "D_layout.json").read_text())["keys"])


def assert_discriminator_matches(base_dir: Path, reference: dict[str, torch.Tensor], tolerance: float) -> int:
    """The discriminator of the imported base ``base_dir`` gives the original's recorded logits (within
    ``tolerance``) and feature-map energies on ``disc_real``/``disc_fake``; returns how many sub-discriminators
    it has. Theirs are ordered [scale, periods...], ours [periods..., scale]."""
    from ai_singer.model.discriminator import Discriminator

    base = checkpoint.load_base(base_dir, with_discriminator=True)
    disc = Discriminator.from_config(SingerVAE(base.model_config).config)
    checkpoint.load_state_strict(disc, base.discriminator_state)
    with torch.no_grad():
        out = disc(reference["disc_real"], reference["disc_fake"])
    order = [len(out.real_logits) - 1] + list(range(len(out.real_logits) - 1))
    for theirs, ours in enumerate(order):
        for side, logits, maps in (("real", out.real_logits, out.real_features),
                                   ("fake", out.fake_logits, out.fake_features)):
            assert (logits[ours] - reference[f"disc_{theirs}_{side}_logits"]).abs().max() <= tolerance
            energy = torch.stack([m.pow(2).flatten(1).mean(1) for m in maps[ours]])
            torch.testing.assert_close(energy, reference[f"disc_{theirs}_{side}_energy"], rtol=1e-4, atol=1e-6)
    return len(order)


def one_line(err: str) -> str:
    """The only non-blank line of ``err`` (an entry point reports a user mistake in one line)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


class Payload:
    """A class no checkpoint loader may run: unpickling it would call ``print``."""

    def __reduce__(self):
        return (print, ("this would have run",))


def assert_payload_refused(rc: int, err: str, path: Path) -> None:
    """The importer refused ``path`` (a pickle holding a :class:`Payload`) in one line naming the file and the
    callable, exit code 2, without running it."""
    line = one_line(err)
    assert rc == 2 and str(path) in line and "print" in line and "refused" in line
    assert "this would have run" not in err


def truncated_copy(source: Path, path: Path) -> Path:
    """``path`` holding the first half of ``source``'s bytes (a download cut short)."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


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
    from ai_singer.train import run_training
    from ai_singer.train_settings import typed_config
    from processed_fixture import write_processed_dataset

    processed = tmp_path / "processed"
    write_processed_dataset(processed, singers=("alto",), train_clips=2, val_clips=1, seconds=0.1,
                            sample_rate=sample_rate, hop_length=16, content_dim=content_dim, encoder_name="hubert",
                            encoder_path="pretrain/content/hubert", encoder_layer=layer, encoder_final_proj=final_proj)
    overrides = [f"paths.processed={processed}", f"paths.pretrain={tmp_path}/pretrain",
                 f"paths.singers={tmp_path}/singers", f"paths.runs={tmp_path}/runs", "trainer=tiny",
                 f"audio.sample_rate={sample_rate}", "audio.hop_length=16", "audio.n_fft=32", "audio.win_length=32",
                 "audio.n_mels=8", "mode=finetune", "singer=alto", f"base={base_dir}", "peft=lora",
                 "trainer.max_steps=2", "trainer.discriminator=off", "loss.content=0",
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

    settings = load_settings("infer", ["f0.method=dio", "noise_scale=0", "refine.steps=0"])
    converter = Converter(base_dir, None, settings, tmp_path / "singers", device="cpu",
                          content_encoder=FrameEncoder(content_dim, layer, final_proj))
    t = np.arange(sample_rate // 4) / sample_rate
    vocal = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    converted = converter.convert_vocal(vocal, sample_rate, "alto")
    assert converted.audio.shape == vocal.shape and np.isfinite(converted.audio).all()
    assert np.abs(converted.audio).max() > 0
