"""The DDSP decoder (``decoder: ddsp``): output length, the harmonic synthesiser against directly computed
sines, silence where unvoiced and above Nyquist, the noise part's spectral shaping, the spectral-envelope form
of the harmonic amplitudes (a formant stays at its frequency whatever the pitch), LoRA on a ddsp model
(fresh == base, merged == unmerged), and that older bases without the keys still read as before."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ai_singer import adapters
from ai_singer.config import conf_group
from ai_singer.model import SingerVAE, SingerVAEConfig
from ai_singer.model.ddsp import DDSPDecoder, hz_to_mel, read_envelope
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


@pytest.mark.parametrize("envelope_bins, voicing", [(0, "gate"), (32, "learned")])
def test_ddsp_model_converts_to_frames_times_hop_and_trains(ddsp_config, envelope_bins, voicing):
    config = dataclasses.replace(ddsp_config, ddsp_envelope_bins=envelope_bins, ddsp_voicing=voicing)
    torch.manual_seed(0)
    model = SingerVAE(config)
    harmonic_outputs = envelope_bins or 1 + config.ddsp_harmonics
    assert model.decoder.output_conv.parametrizations.weight.original1.shape[0] == harmonic_outputs + 17
    content, f0, voiced, volume, spec = make_inputs(config, 2, 30)
    g = model.embed_speaker(torch.tensor([0, 2]))
    out = model(content, f0, voiced, volume, spec, torch.tensor([30, 25]), g)
    assert out.wav.shape == (2, 1, config.segment_frames * config.hop_length)
    out.wav.abs().mean().backward()
    assert model.decoder.output_conv.parametrizations.weight.original1.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        wav = model.infer(content, f0, voiced, volume, g, noise_scale=0.3)
    assert wav.shape == (2, 1, 30 * config.hop_length) and wav.abs().max() <= 1


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


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """The inverse of ``hz_to_mel`` (HTK)."""
    return 700.0 * (10 ** (mel / 2595.0) - 1)


def test_envelope_is_read_at_its_points_and_interpolated_on_the_mel_scale():
    nyquist = SR / 2
    points = 9
    knots = torch.linspace(0, float(hz_to_mel(torch.tensor(nyquist))), points)
    knot_hz = mel_to_hz(knots)
    envelope = torch.arange(points, dtype=torch.float32).view(1, points, 1).repeat(2, 1, 3)  # value = point index
    at_knots = read_envelope(envelope, knot_hz.view(1, -1, 1).repeat(2, 1, 3), nyquist)
    torch.testing.assert_close(at_knots, envelope, atol=1e-3, rtol=0)
    halfway_mel = (knots[2] + knots[3]) / 2
    halfway_hz = mel_to_hz(halfway_mel)
    value = read_envelope(envelope, halfway_hz.view(1, 1, 1).repeat(2, 1, 3), nyquist)
    torch.testing.assert_close(value, torch.full((2, 1, 3), 2.5), atol=1e-3, rtol=0)
    above = read_envelope(envelope, torch.full((2, 1, 3), 30000.0), nyquist)  # past Nyquist: the last point
    torch.testing.assert_close(above, torch.full((2, 1, 3), float(points - 1)))


def test_envelope_decoder_keeps_a_formant_at_its_frequency_at_any_pitch():
    """With ``envelope_bins`` the network predicts magnitudes over frequency: the same outputs put the loudest
    harmonic where the envelope peaks (near 1 kHz) at 100 Hz (harmonic 10) and at 250 Hz (harmonic 4), are silent
    where unvoiced and above Nyquist, and scale with sqrt(F0) (the same loudness per Hz)."""
    decoder = DDSPDecoder(8, 16, [3], [[1]], 4, SR, HOP, 60, 17, envelope_bins=64).eval()
    with torch.no_grad():
        decoder.output_conv.parametrizations.weight.original0.zero_()  # the output is its bias alone
        mel_points = torch.linspace(0, float(hz_to_mel(torch.tensor(SR / 2))), 64)
        peak = int(torch.argmin((mel_points - hz_to_mel(torch.tensor(1000.0))).abs()))
        bias = torch.full((64 + 17,), -6.0)
        bias[peak] = 2.0
        decoder.output_conv.bias.copy_(bias)
    frames = 6
    f0 = torch.tensor([[100.0] * frames, [250.0] * frames])
    voiced = torch.ones(2, frames)
    voiced[1, 4:] = 0
    with torch.no_grad():
        amplitudes, noise = decoder.synth_params(torch.zeros(2, 8, frames), f0, voiced, torch.zeros(2, 4))
    assert amplitudes.shape == (2, 60, frames) and noise.shape == (2, 17, frames)
    peak_hz = mel_to_hz(mel_points[peak])
    assert int(amplitudes[0, :, 0].argmax()) + 1 == round(float(peak_hz) / 100.0)
    assert int(amplitudes[1, :, 0].argmax()) + 1 == round(float(peak_hz) / 250.0)
    assert amplitudes[1, :, 4:].abs().max() == 0  # unvoiced
    f0_high = torch.full((1, frames), 1000.0)  # harmonics 23..60 above 22.05 kHz
    with torch.no_grad():
        high, _ = decoder.synth_params(torch.zeros(1, 8, frames), f0_high, torch.ones(1, frames), torch.zeros(1, 4))
    assert high[:, 22:].abs().max() == 0 and high[:, :22].min() > 0
    # a flat envelope: each harmonic's amplitude grows as sqrt(F0)
    with torch.no_grad():
        decoder.output_conv.bias[:64].fill_(0.0)
        flat, _ = decoder.synth_params(torch.zeros(2, 8, frames), f0, torch.ones(2, frames), torch.zeros(2, 4))
    torch.testing.assert_close(flat[1, 0] / flat[0, 0], torch.full((frames,), 2.5 ** 0.5), atol=1e-4, rtol=0)


def test_a_ddsp_base_saved_before_the_envelope_key_reads_as_a_harmonic_distribution(ddsp_config):
    values = ddsp_config.to_dict()
    values.pop("ddsp_envelope_bins")
    config = SingerVAEConfig.from_dict(values)
    assert config.ddsp_envelope_bins == 0
    assert SingerVAE(config).decoder.output_conv.parametrizations.weight.original1.shape[0] == 1 + 40 + 17


def test_a_single_envelope_point_is_a_clear_error(ddsp_config):
    with pytest.raises(ValueError, match="ddsp_envelope_bins must be 0"):
        SingerVAEConfig.from_dict({**ddsp_config.to_dict(), "ddsp_envelope_bins": 1})


def test_learned_voicing_sounds_harmonics_where_the_tracker_says_unvoiced():
    """``voicing: learned``: frames flagged unvoiced (F0 interpolated through them) keep their harmonics, at the
    level the network gives them; ``gate`` silences them. Frames with no F0 at all stay silent in both."""
    frames = 12
    f0 = torch.full((1, frames), 150.0)
    f0[:, 10:] = 0.0
    voiced = torch.ones(1, frames)
    voiced[:, 4:8] = 0
    z, g = torch.randn(1, 8, frames), torch.randn(1, 4)
    outputs = {}
    for voicing in ("gate", "learned"):
        torch.manual_seed(0)
        decoder = DDSPDecoder(8, 16, [3], [[1, 3]], 4, SR, HOP, 40, 17, voicing=voicing).eval()
        with torch.no_grad():
            amplitudes, _ = decoder.synth_params(z, f0, voiced, g)
            wav = decoder.harmonic_part(amplitudes, f0, voiced)[0, 0]
        outputs[voicing] = (amplitudes, wav)
    gate_amplitudes, gate_wav = outputs["gate"]
    learned_amplitudes, learned_wav = outputs["learned"]
    assert gate_amplitudes[..., 4:8].abs().max() == 0 and gate_wav[5 * HOP:7 * HOP].abs().max() < 1e-6
    assert learned_amplitudes[..., 4:8].min() > 0 and learned_wav[5 * HOP:7 * HOP].abs().max() > 1e-4
    assert learned_amplitudes[..., 10:].abs().max() == 0  # no F0: nothing to sound
    torch.testing.assert_close(learned_amplitudes[..., :4], gate_amplitudes[..., :4])  # voiced frames: the same
    with pytest.raises(ValueError, match="voicing must be one of"):
        DDSPDecoder(8, 16, [3], [[1]], 4, SR, HOP, 40, 17, voicing="soft")


def test_a_ddsp_base_saved_before_the_voicing_key_gates_its_harmonics(ddsp_config):
    values = ddsp_config.to_dict()
    values.pop("ddsp_voicing")
    config = SingerVAEConfig.from_dict(values)
    assert config.ddsp_voicing == "gate" and SingerVAE(config).decoder.voicing == "gate"
    with pytest.raises(ValueError, match="ddsp_voicing must be one of"):
        SingerVAEConfig.from_dict({**values, "ddsp_voicing": "soft"})
