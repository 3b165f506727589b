"""``refine``: each piece's latent moved toward the source's words by a Whisper encoder (ai_singer/refine.py).

What a user relies on: it does what it says (the converted audio's Whisper states end closer to the source's
than the plain conversion's), the output keeps the source's rate and length, the same settings give the
same audio, the model is left as it was, ``steps: 0`` is the plain conversion, and bad settings are refused
with the key and the fix before any model loads.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import harmonic
from test_infer import conf_settings, make_adapter, make_base

from ai_singer.errors import UserError
from ai_singer.infer import Converter, InferError


@pytest.fixture(scope="module")
def refine_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    base_dir = make_base(root)
    make_adapter(root, base_dir, "alto", seed=1)
    return root


def vocal(sr: int = 44100) -> np.ndarray:
    """1.2 s: a gliding note with a vowel-like spectrum, then a short noise burst (a consonant)."""
    tone = harmonic(220.0, sr, 0.9, amplitude=0.3)
    burst = np.random.default_rng(0).normal(0, 0.05, int(0.3 * sr)).astype(np.float32)
    return np.concatenate([tone, burst]).astype(np.float32)


def converter(root, tiny_hubert_dir, tiny_whisper, *overrides):
    settings = conf_settings("f0.method=dio", "noise_scale=0.35", f"refine.encoder={tiny_whisper[0]}", *overrides)
    return Converter(root / "pretrain" / "tiny", {"name": "hubert", "path": str(tiny_hubert_dir), "layer": 2},
                     settings, root / "singers", device="cpu")


def test_refine_moves_the_converted_audio_toward_the_source_words(refine_artifacts, tiny_hubert_dir, tiny_whisper,
                                                                  one_torch_thread):
    sr = 44100
    mono = vocal(sr)
    plain = converter(refine_artifacts, tiny_hubert_dir, tiny_whisper, "refine.steps=0")
    assert plain.refiner is None
    before = {name: p.detach().clone() for name, p in plain.model.named_parameters()}
    plain_out = plain.convert_vocal(mono, sr, "alto")
    assert plain_out.refine is None

    refined = converter(refine_artifacts, tiny_hubert_dir, tiny_whisper, "refine.steps=8", "refine.learning_rate=0.2")
    first = refined.convert_vocal(mono, sr, "alto")
    again = refined.convert_vocal(mono, sr, "alto")
    assert first.audio.shape == mono.shape and first.sample_rate == sr
    np.testing.assert_array_equal(first.audio, again.audio)  # the same settings give the same audio
    stats = first.refine  # (a random tiny decoder barely listens to its latent: the toy below checks the effect)
    assert stats["pieces"] == first.pieces >= 1
    assert stats["content_l1_after"] <= stats["content_l1_before"] + 1e-6
    for name, parameter in refined.model.named_parameters():  # only the latent moved, never the base
        torch.testing.assert_close(parameter, before[name], rtol=0, atol=0)
        assert parameter.grad is None


class ToySinger(torch.nn.Module):
    """A model with the SingerVAE's conversion interface whose audio depends strongly on its latent: the prior
    mean is a projection of the content, the flow is the identity, the decoder sums 8 fixed sines at 16 kHz
    (hop 160) with the latent's channels as their (softplus) amplitudes."""

    sample_rate, hop = 16000, 160

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.projection = torch.nn.Conv1d(4, 8, 1)
        self.frequencies = torch.tensor([300.0, 500.0, 800.0, 1200.0, 1800.0, 2500.0, 3300.0, 4200.0])

    def model_f0(self, f0, voiced):
        return f0

    def prior_encoder(self, content, f0, voiced, volume, mask):
        mean = self.projection(content) * mask
        return mean, torch.zeros_like(mean)

    def flow(self, z, mask, g, reverse=False):
        return z

    def decoder(self, z, f0, voiced, g, generator=None):
        amplitudes = torch.nn.functional.softplus(z)  # [1, 8, T]
        per_sample = torch.repeat_interleave(amplitudes, self.hop, dim=-1)  # [1, 8, T * hop]
        t = torch.arange(per_sample.shape[-1]) / self.sample_rate
        sines = torch.sin(2 * torch.pi * self.frequencies[:, None] * t)  # [8, T * hop]
        return (0.05 * (per_sample * sines).sum(1, keepdim=True)).clamp(-1, 1)


def test_the_refined_latent_brings_the_whisper_states_closer_to_the_source(tiny_whisper, one_torch_thread):
    from ai_singer.refine import LatentRefiner, RefineSettings

    toy = ToySinger().requires_grad_(False)
    frames = 50
    rng = np.random.default_rng(1)
    content = torch.from_numpy(rng.normal(size=(1, 4, frames)).astype(np.float32))
    f0 = torch.full((1, frames), 200.0)
    ones = torch.ones(1, frames)
    t = np.arange(frames * toy.hop) / toy.sample_rate
    source = (0.3 * np.sin(2 * np.pi * 800 * t) * (t < 0.25) + 0.3 * np.sin(2 * np.pi * 2500 * t) * (t >= 0.25))
    distances = []
    for steps in (1, 25):
        refiner = LatentRefiner(RefineSettings(steps=steps, learning_rate=0.2, prior_weight=0.0, timbre_weight=0.0,
                                               encoder=str(tiny_whisper[0])), toy.sample_rate)
        wav, stats = refiner.convert(toy, content, f0, ones, ones, torch.zeros(1, 2), source.astype(np.float32),
                                     torch.Generator().manual_seed(0), noise_scale=0.35)
        assert wav.shape == (1, 1, frames * toy.hop)
        distances.append(stats)
    assert distances[0]["content_l1_before"] == pytest.approx(distances[1]["content_l1_before"])  # same start
    assert distances[1]["content_l1_after"] < 0.8 * distances[1]["content_l1_before"]
    assert distances[1]["content_l1_after"] < distances[0]["content_l1_after"]


def test_centred_comparison_ignores_what_is_constant_over_the_piece(tiny_whisper):
    """refine.centre: a per-channel offset held over the whole piece (a speaker's constant trace) costs nothing,
    a change from frame to frame (the words) still does; without it both cost."""
    from ai_singer.refine import LatentRefiner, RefineSettings

    def refiner(centre: bool) -> LatentRefiner:
        return LatentRefiner(RefineSettings(steps=1, learning_rate=0.1, prior_weight=0.0, timbre_weight=0.0,
                                            encoder=str(tiny_whisper[0]), centre=centre), 16000)

    target = torch.randn(1, 20, 6, generator=torch.Generator().manual_seed(0))
    offset = target + torch.linspace(-1, 1, 6)  # the same shift on every frame
    reordered = target.flip(1)  # the same frames in another order
    assert float(refiner(True)._distance(offset, target)) < 1e-6
    assert float(refiner(False)._distance(offset, target)) > 0.4
    assert float(refiner(True)._distance(reordered, target)) > 0.4
    assert float(refiner(True)._distance(target[:, :15], target)) < 1e-6  # over the common frames


def test_refine_starts_from_the_plain_conversion(refine_artifacts, tiny_hubert_dir, tiny_whisper, one_torch_thread):
    """A step size so small that the latent cannot move reproduces the plain conversion: the refinement decodes
    with the plain path's noise, F0 and singer."""
    sr = 44100
    mono = vocal(sr)
    plain = converter(refine_artifacts, tiny_hubert_dir, tiny_whisper, "refine.steps=0").convert_vocal(mono, sr, "alto")
    still = converter(refine_artifacts, tiny_hubert_dir, tiny_whisper, "refine.steps=1",
                      "refine.learning_rate=1e-12").convert_vocal(mono, sr, "alto")
    np.testing.assert_allclose(still.audio, plain.audio, atol=1e-4)


@pytest.mark.parametrize("override, match", [
    ("refine.steps=-1", r"refine.steps=-1.*must be >= 0"),
    ("refine.learning_rate=0", r"refine.learning_rate=0.*must be > 0"),
    ("refine.prior_weight=-0.5", r"refine.prior_weight=-0.5.*must be >= 0"),
    ("refine.timbre_weight=-1", r"refine.timbre_weight=-1.*must be >= 0"),
])
def test_bad_refine_settings_name_the_key(override, match):
    with pytest.raises(UserError, match=match):
        conf_settings(override)


def test_the_default_conversion_refines_with_an_encoder_the_install_brings():
    from ai_singer.config import load_settings
    from ai_singer.features.whisper_models import resolve_model_dir

    settings = load_settings("infer")  # conf/ as shipped: refining is on, holding the voice's average spectrum
    assert settings.refine.enabled and settings.refine.timbre_weight > 0
    assert settings.engine != "onnx"  # the default engine can refine (auto picks torch)
    assert (resolve_model_dir(settings.refine.encoder) / "model.bin").is_file()  # a dependency, not an extra


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU machine's check)")
def test_refine_runs_where_the_model_runs_on_a_gpu(refine_artifacts, tiny_hubert_dir, tiny_whisper):
    settings = conf_settings("f0.method=dio", f"refine.encoder={tiny_whisper[0]}", "refine.steps=2")
    gpu = Converter(refine_artifacts / "pretrain" / "tiny", {"name": "hubert", "path": str(tiny_hubert_dir),
                                                              "layer": 2}, settings, refine_artifacts / "singers",
                    device="cuda")
    mono = vocal()
    out = gpu.convert_vocal(mono, 44100, "alto")  # the Whisper encoder follows the model onto the device
    assert out.audio.shape == mono.shape and np.isfinite(out.audio).all() and out.refine["pieces"] >= 1


def test_refine_with_the_onnx_engine_is_refused_with_the_fix():
    with pytest.raises(InferError, match=r"refine.steps=4 with engine=onnx.*gradients.*engine=torch"):
        conf_settings("refine.steps=4", "engine=onnx")


def test_pieces_longer_than_whisper_hears_are_refused_when_refining():
    with pytest.raises(InferError, match=r"chunk.max_length_s=40 with refine.steps=4: .*30 s.*max_length_s<=28"):
        conf_settings("refine.steps=4", "chunk.max_length_s=40")
    assert conf_settings("refine.steps=0", "chunk.max_length_s=40").chunk.max_length_s == 40  # plain: no limit


def test_a_missing_refine_encoder_names_the_folder_before_any_song(refine_artifacts, tiny_hubert_dir, tmp_path):
    with pytest.raises(UserError, match=r"nowhere"):
        converter(refine_artifacts, tiny_hubert_dir, (tmp_path / "nowhere",), "refine.steps=2")


def toy_piece(frames: int = 50):
    """A :class:`ToySinger` and one piece for it: (toy, content [1, 4, T], f0 [1, T], ones [1, T], the piece's
    sample times in seconds [T * hop])."""
    toy = ToySinger().requires_grad_(False)
    content = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 4, frames)).astype(np.float32))
    return (toy, content, torch.full((1, frames), 200.0), torch.ones(1, frames),
            np.arange(frames * toy.hop) / toy.sample_rate)


def test_timbre_weight_keeps_the_average_spectrum_of_the_plain_conversion(tiny_whisper, one_torch_thread):
    from ai_singer.refine import LatentRefiner, RefineSettings

    toy, content, f0, ones, t = toy_piece()
    source = (0.3 * np.sin(2 * np.pi * 3300 * t)).astype(np.float32)

    def average_spectrum_change(steps: int, timbre_weight: float) -> float:
        refiner = LatentRefiner(RefineSettings(steps=steps, learning_rate=0.2, prior_weight=0.0,
                                               timbre_weight=timbre_weight, encoder=str(tiny_whisper[0])),
                                toy.sample_rate)
        wav, _ = refiner.convert(toy, content, f0, ones, ones, torch.zeros(1, 2), source,
                                 torch.Generator().manual_seed(0), noise_scale=0.0)
        return refiner.words.log_mel(wav.reshape(1, -1)).mean(-1)

    plain = average_spectrum_change(0, 0.0)
    free = (average_spectrum_change(20, 0.0) - plain).abs().mean()
    held = (average_spectrum_change(20, 10.0) - plain).abs().mean()
    assert held < 0.5 * free
