"""The DDSP decoder (``decoder: ddsp``): output length, the harmonic synthesiser against directly computed
sines, silence where unvoiced and above Nyquist, the noise part's spectral shaping, LoRA on a ddsp model
(fresh == base, merged == unmerged), and that older bases without the key still read as NSF-HiFiGAN."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ai_singer import adapters
from ai_singer.config import conf_group
from ai_singer.model import SingerVAE, SingerVAEConfig
from ai_singer.model.ddsp import DDSPDecoder
from ai_singer.model.decoder import harmonic_sines

from test_model import compose_model, make_inputs

torch.set_num_threads(1)
SR, HOP = 44100, 512


@pytest.fixture(scope="module")
def ddsp_config() -> SingerVAEConfig:
    config = SingerVAEConfig.from_dict(compose_model("tiny").model)
    return dataclasses.replace(config, content_dim=24, n_speakers=3, decoder="ddsp", ddsp_harmonics=40,
                               ddsp_noise_bands=17)


def small_decoder(harmonics: int = 40, bands: int = 17) -> DDSPDecoder:
    torch.manual_seed(0)
    return DDSPDecoder(8, 16, [3], [[1, 3]], 4, SR, HOP, harmonics, bands).eval()


def test_harmonic_synthesis_equals_directly_computed_sines():
    """The Chebyshev recurrence gives the same harmonics as sin(k * phase), with amplitudes held at each
    frame's first sample and moving linearly to the next frame's."""
    decoder = small_decoder()
    frames = 12
    f0 = torch.linspace(90.0, 160.0, frames).unsqueeze(0)  # 40 harmonics stay below Nyquist
    voiced = torch.ones(1, frames)
    amplitudes = torch.rand(1, 40, frames, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = decoder.harmonic_part(amplitudes, f0, voiced)
    sines, _ = harmonic_sines(f0, voiced, SR, HOP, 40)
    following = torch.cat([amplitudes[..., 1:], amplitudes[..., -1:]], dim=-1)
    ramp = torch.arange(HOP) / HOP
    per_sample = (amplitudes.unsqueeze(-1) * (1 - ramp) + following.unsqueeze(-1) * ramp).reshape(1, 40, -1)
    expected = (per_sample * sines).sum(dim=1, keepdim=True)
    assert out.shape == (1, 1, frames * HOP)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


def test_unvoiced_frames_and_harmonics_above_nyquist_are_silent():
    decoder = small_decoder(harmonics=200)
    frames = 10
    f0 = torch.full((2, frames), 300.0)  # harmonics 74..200 lie above 22.05 kHz
    voiced = torch.ones(2, frames)
    voiced[:, 4:7] = 0
    z = torch.randn(2, 8, frames)
    g = torch.randn(2, 4)
    with torch.no_grad():
        amplitudes, noise = decoder.synth_params(z, f0, voiced, g)
    assert amplitudes.shape == (2, 200, frames) and noise.shape == (2, 17, frames)
    assert amplitudes[:, :, 4:7].abs().max() == 0
    assert amplitudes[:, 73:].abs().max() == 0 and amplitudes[:, :73].min() >= 0
    assert noise.min() > 0


def test_noise_part_follows_the_band_magnitudes():
    """Noise shaped with energy only in the upper bands has its energy there."""
    decoder = small_decoder()
    frames = 40
    bands = torch.zeros(1, 17, frames)
    bands[:, 12:] = 1.0  # the top quarter of the spectrum
    noise = decoder.noise_part(bands, torch.Generator().manual_seed(0))[0, 0].numpy()
    assert noise.shape == (frames * HOP,)
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(noise.size, 1 / SR)
    low = spectrum[freqs < 8000].sum()
    high = spectrum[freqs > 15000].sum()
    assert high > 50 * low


def test_ddsp_model_converts_to_frames_times_hop_and_trains(ddsp_config):
    torch.manual_seed(0)
    model = SingerVAE(ddsp_config)
    content, f0, voiced, volume, spec = make_inputs(ddsp_config, 2, 30)
    g = model.embed_speaker(torch.tensor([0, 2]))
    out = model(content, f0, voiced, volume, spec, torch.tensor([30, 25]), g)
    assert out.wav.shape == (2, 1, ddsp_config.segment_frames * ddsp_config.hop_length)
    out.wav.abs().mean().backward()
    assert model.decoder.output_conv.parametrizations.weight.original1.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        wav = model.infer(content, f0, voiced, volume, g, noise_scale=0.3)
    assert wav.shape == (2, 1, 30 * ddsp_config.hop_length) and wav.abs().max() <= 1


def test_lora_on_a_ddsp_model_fresh_equals_base_and_merged_equals_unmerged(ddsp_config):
    torch.manual_seed(0)
    model = SingerVAE(ddsp_config).eval()
    model.remove_weight_norm()
    content, f0, voiced, volume, _ = make_inputs(ddsp_config, 1, 20)
    g = model.embed_speaker(torch.tensor([1]))

    def run(m):
        with torch.no_grad():
            return m.infer(content, f0, voiced, volume, g, noise_scale=0.0,
                           generator=torch.Generator().manual_seed(3))

    before = run(model)
    trainable = adapters.prepare_for_finetune(model, conf_group("peft", "lora"))
    assert any(name.startswith("decoder.resblocks") for name in trainable)  # the default targets reach it
    torch.testing.assert_close(run(model), before, atol=1e-5, rtol=0)  # B starts at zero
    with torch.no_grad():
        for name in trainable:
            parameter = model.get_parameter(name)
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)))
    unmerged = run(model)
    assert (unmerged - before).abs().max() > 1e-3
    adapters.merge_adapters(model)
    torch.testing.assert_close(run(model), unmerged, atol=1e-4, rtol=1e-3)


def test_a_base_saved_before_the_decoder_key_reads_as_nsf_hifigan():
    values = SingerVAEConfig.from_dict(compose_model("tiny").model).to_dict()
    for key in ("decoder", "ddsp_harmonics", "ddsp_noise_bands"):
        values.pop(key)
    config = SingerVAEConfig.from_dict(values)
    assert config.decoder == "nsf_hifigan"
    assert type(SingerVAE(config).decoder).__name__ == "NSFHiFiGAN"


def test_an_unknown_decoder_is_a_clear_error():
    values = SingerVAEConfig.from_dict(compose_model("tiny").model).to_dict()
    with pytest.raises(ValueError, match="decoder must be one of"):
        SingerVAEConfig.from_dict({**values, "decoder": "wavenet"})
    with pytest.raises(ValueError, match="ddsp_harmonics"):
        SingerVAEConfig.from_dict({**values, "decoder": "ddsp", "ddsp_harmonics": 0})
