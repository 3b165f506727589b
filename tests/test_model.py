"""Behaviour of the voice model: shapes and lengths, masks, flow inversion, weight-norm removal, the NSF
source, configs (YAML == dataclass, clear errors), parameter budgets, the discriminator, and that a tiny
model can fit one clip."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ai_singer.config import conf_file
from ai_singer.model import SingerVAE, SingerVAEConfig, SynthOutput
from ai_singer.model.attention import RelativeMultiHeadAttention
from ai_singer.model.decoder import decode_windows
from ai_singer.model.discriminator import Discriminator
from ai_singer.model.encoders import coarse_f0
from ai_singer.model.layers import sequence_mask

torch.set_num_threads(1)

#: the prior temperature of a conversion (conf/infer.yaml)
NOISE = conf_file("infer")["noise_scale"]


def compose_model(name: str):
    """conf/model/<name>.yaml composed with the audio group (it interpolates the framing)."""
    from hydra import compose, initialize_config_dir

    from ai_singer.conf_dir import conf_dir

    with initialize_config_dir(conf_dir(), version_base=None):
        cfg = compose(overrides=["+audio=44k", f"+model={name}"])
    return cfg


@pytest.fixture(scope="module")
def tiny_config() -> SingerVAEConfig:
    return dataclasses.replace(SingerVAEConfig.from_dict(compose_model("tiny").model), content_dim=24, n_speakers=3)


@pytest.fixture()
def tiny_model(tiny_config) -> SingerVAE:
    torch.manual_seed(0)
    return SingerVAE(tiny_config)


def make_inputs(config: SingerVAEConfig, batch: int, frames: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    content = torch.randn(batch, config.content_dim, frames, generator=generator)
    f0 = 180 + 100 * torch.rand(batch, frames, generator=generator)
    voiced = (torch.rand(batch, frames, generator=generator) > 0.2).float()
    volume = 0.1 * torch.rand(batch, frames, generator=generator)
    spec = torch.rand(batch, config.spec_channels, frames, generator=generator)
    return content, f0, voiced, volume, spec


# ------------------------------------------------------------------------------------------ configs

def base_config(**changes) -> SingerVAEConfig:
    """conf/model/base.yaml (composed with the audio group) with ``changes``."""
    return SingerVAEConfig.from_dict({**OmegaConf.to_container(compose_model("base").model, resolve=True), **changes})


def test_yaml_sizes_compose_and_the_config_has_no_defaults_of_its_own():
    configs = {name: SingerVAEConfig.from_dict(compose_model(name).model) for name in ("tiny", "small", "base")}
    assert configs["tiny"].hop_length == configs["base"].hop_length == 512  # from the audio group
    with pytest.raises(TypeError):
        SingerVAEConfig()  # conf/model/*.yaml or a base artifact give every value
    with pytest.raises(ValueError, match=r"keys \['f0_max'\] are missing"):
        SingerVAEConfig.from_dict({k: v for k, v in configs["base"].to_dict().items() if k != "f0_max"})
    # usable as a Hydra structured config too
    merged = OmegaConf.merge(OmegaConf.structured(SingerVAEConfig),
                             OmegaConf.to_container(compose_model("small").model, resolve=True))
    assert OmegaConf.to_object(merged) == configs["small"]


def test_config_dict_round_trip_and_unknown_keys():
    config = base_config(content_dim=256, n_speakers=7)
    assert SingerVAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown SingerVAEConfig keys \['hiden_channels'\]"):
        SingerVAEConfig.from_dict({**config.to_dict(), "hiden_channels": 3})


def test_hop_must_equal_product_of_upsample_rates():
    with pytest.raises(ValueError, match=r"hop_length \(500\) must equal the product of upsample_rates "
                                         r"\[8, 8, 2, 2, 2\] \(= 512\)"):
        base_config(hop_length=500)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        base_config(hidden_channels=191)


def test_parameter_budgets():
    tiny = SingerVAE(SingerVAEConfig.from_dict(compose_model("tiny").model))
    assert tiny.parameter_counts()["total"] < 1_000_000
    small = SingerVAE(SingerVAEConfig.from_dict(compose_model("small").model)).parameter_counts()
    assert 1_000_000 < small["total"] < 10_000_000
    base = SingerVAE(base_config()).parameter_counts()
    # so-vits-svc 4.1 layout with gin 256: ~30 M at inference (prior encoder + flow + decoder), ~39 M in all
    assert 25e6 < base["inference"] < 45e6
    assert 35e6 < base["total"] < 45e6
    assert base["inference"] == base["prior_encoder"] + base["flow"] + base["decoder"]


# ------------------------------------------------------------------------------------ forward/infer

def test_training_forward_shapes_segment_and_backward(tiny_model, tiny_config):
    batch, frames, hop, segment = 2, 32, tiny_config.hop_length, tiny_config.segment_frames
    content, f0, voiced, volume, spec = make_inputs(tiny_config, batch, frames)
    lengths = torch.tensor([32, 20])
    g = tiny_model.embed_speaker(torch.tensor([0, 2]))
    out = tiny_model(content, f0, voiced, volume, spec, lengths, g, generator=torch.Generator().manual_seed(3))
    assert isinstance(out, SynthOutput)
    assert out.wav.shape == (batch, 1, segment * hop)
    for name in ("z", "z_p", "m_p", "logs_p", "m_q", "logs_q"):
        assert getattr(out, name).shape == (batch, tiny_config.inter_channels, frames), name
    assert out.mask.shape == (batch, 1, frames)
    assert out.mask[1, 0, 20:].sum() == 0 and out.mask[1, 0, :20].all()
    assert ((out.start_frames >= 0) & (out.start_frames <= lengths - segment)).all()
    # slice_audio cuts the target region that matches the decoded segment
    target = torch.arange(batch * frames * hop, dtype=torch.float32).view(batch, 1, frames * hop)
    cut = out.slice_audio(target)
    for b in range(batch):
        start = int(out.start_frames[b]) * hop
        assert torch.equal(cut[b, 0], target[b, 0, start:start + segment * hop])
    loss = out.wav.abs().mean() + out.z_p.pow(2).mean() + out.m_p.mean()
    loss.backward()
    assert tiny_model.prior_encoder.content_proj.weight.grad is not None
    assert tiny_model.decoder.input_conv.parametrizations.weight.original1.grad is not None
    assert tiny_model.speaker_embedding.weight.grad is not None


def test_the_prior_path_decodes_the_same_segment_from_the_content_side_only(tiny_model, tiny_config):
    """prior_path=True (loss.prior_mel) decodes the training segment a second time from the prior mean through
    the inverted flow, as a conversion does: its gradient reaches the prior encoder, not the posterior encoder."""
    content, f0, voiced, volume, spec = make_inputs(tiny_config, 2, 32)
    lengths, g = torch.tensor([32, 24]), tiny_model.embed_speaker(torch.tensor([0, 2]))
    plain = tiny_model(content, f0, voiced, volume, spec, lengths, g)
    assert plain.wav_prior is None  # off unless asked: no second decoder pass
    out = tiny_model(content, f0, voiced, volume, spec, lengths, g, prior_path=True)
    assert out.wav_prior.shape == out.wav.shape and torch.isfinite(out.wav_prior).all()
    assert not torch.allclose(out.wav_prior, out.wav)
    out.wav_prior.abs().mean().backward()
    assert tiny_model.prior_encoder.content_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in tiny_model.posterior_encoder.parameters())


def test_clip_shorter_than_segment_is_padded(tiny_model, tiny_config):
    content, f0, voiced, volume, spec = make_inputs(tiny_config, 1, 5)
    g = tiny_model.embed_speaker(torch.tensor([1]))
    out = tiny_model(content, f0, voiced, volume, spec, torch.tensor([5]), g)
    assert out.wav.shape[-1] == tiny_config.segment_frames * tiny_config.hop_length
    assert int(out.start_frames[0]) == 0
    assert out.slice_audio(torch.ones(1, 1, 5 * tiny_config.hop_length)).shape == out.wav.shape


@pytest.mark.parametrize("frames", [1, 7, 33])
def test_infer_outputs_exactly_frames_times_hop(tiny_model, tiny_config, frames):
    tiny_model.eval()
    content, f0, voiced, volume, _ = make_inputs(tiny_config, 2, frames)
    with torch.inference_mode():
        wav = tiny_model.infer(content, f0, voiced, volume, tiny_model.embed_speaker(torch.tensor([0, 1])),
                               noise_scale=NOISE)
    assert wav.shape == (2, 1, frames * tiny_config.hop_length)
    assert torch.isfinite(wav).all() and wav.abs().max() <= 1.0


def test_input_shape_errors_are_clear(tiny_model, tiny_config):
    content, f0, voiced, volume, _ = make_inputs(tiny_config, 1, 10)
    g = tiny_model.embed_speaker(torch.tensor([0]))
    with pytest.raises(ValueError, match="content_dim=24"):
        tiny_model.infer(content[:, :10], f0, voiced, volume, g, noise_scale=NOISE)
    with pytest.raises(ValueError, match=r"f0 must have shape \[B, T\] = \[1, 10\]"):
        tiny_model.infer(content, f0[:, :9], voiced, volume, g, noise_scale=NOISE)
    with pytest.raises(ValueError, match="speaker ids must lie in"):
        tiny_model.embed_speaker(torch.tensor([3]))


def test_padding_does_not_change_valid_frames(tiny_model, tiny_config):
    """Prior, posterior and the inverse flow of a padded item equal those of the item alone."""
    tiny_model.eval()
    content, f0, voiced, volume, spec = make_inputs(tiny_config, 1, 12)
    padded = [torch.cat([x, 50 * torch.randn(*x.shape[:-1], 9).abs()], dim=-1)
              for x in (content, f0, voiced, volume, spec)]
    g = tiny_model.embed_speaker(torch.tensor([1]))
    with torch.no_grad():
        alone_mask = sequence_mask(torch.tensor([12]), 12).unsqueeze(1).float()
        padded_mask = sequence_mask(torch.tensor([12]), 21).unsqueeze(1).float()
        m_alone, logs_alone = tiny_model.prior_encoder(content, f0, voiced, volume, alone_mask)
        m_pad, logs_pad = tiny_model.prior_encoder(*padded[:4], padded_mask)
        torch.testing.assert_close(m_pad[..., :12], m_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logs_pad[..., :12], logs_alone, atol=1e-5, rtol=1e-4)
        assert m_pad[..., 12:].abs().max() == 0
        _, mq_alone, _ = tiny_model.posterior_encoder(spec, alone_mask, g)
        _, mq_pad, _ = tiny_model.posterior_encoder(padded[4], padded_mask, g)
        torch.testing.assert_close(mq_pad[..., :12], mq_alone, atol=1e-5, rtol=1e-4)
        perturb_flow(tiny_model)
        z_alone = tiny_model.flow(m_alone, alone_mask, g, reverse=True)
        z_pad = tiny_model.flow(m_pad, padded_mask, g, reverse=True)
        torch.testing.assert_close(z_pad[..., :12], z_alone, atol=1e-5, rtol=1e-4)


def perturb_flow(model: SingerVAE) -> None:
    """Fresh couplings are the identity (zero output conv); give them weights so tests mean something."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for coupling in model.flow.couplings:
            coupling.out_proj.weight.copy_(0.3 * torch.randn(coupling.out_proj.weight.shape, generator=generator))
            coupling.out_proj.bias.copy_(0.1 * torch.randn(coupling.out_proj.bias.shape, generator=generator))


def test_flow_is_invertible_and_not_the_identity(tiny_model, tiny_config):
    perturb_flow(tiny_model)
    z = torch.randn(2, tiny_config.inter_channels, 15)
    mask = sequence_mask(torch.tensor([15, 9]), 15).unsqueeze(1).float()
    z = z * mask
    g = tiny_model.embed_speaker(torch.tensor([0, 2]))
    with torch.no_grad():
        z_p = tiny_model.flow(z, mask, g)
        back = tiny_model.flow(z_p, mask, g, reverse=True)
    assert (z_p - z).abs().max() > 0.1
    torch.testing.assert_close(back, z, atol=1e-5, rtol=1e-5)


def test_speaker_vector_conditions_posterior_flow_and_decoder(tiny_model, tiny_config):
    perturb_flow(tiny_model)
    tiny_model.eval()
    content, f0, voiced, volume, spec = make_inputs(tiny_config, 1, 6)
    mask = torch.ones(1, 1, 6)
    g1, g2 = tiny_model.embed_speaker(torch.tensor([0])).detach(), torch.randn(1, tiny_config.gin_channels)
    with torch.no_grad():
        m_q1, m_q2 = (tiny_model.posterior_encoder(spec, mask, g)[1] for g in (g1, g2))
        assert (m_q1 - m_q2).abs().max() > 1e-3
        z = torch.randn(1, tiny_config.inter_channels, 6)
        assert (tiny_model.flow(z, mask, g1, reverse=True) - tiny_model.flow(z, mask, g2, reverse=True)).abs().max() > 1e-3
    # the decoder's speaker projection reaches the waveform (at init HiFi-GAN's small weights make the
    # effect small, so check the gradient rather than the size)
    g = g1.clone().requires_grad_(True)
    wav = tiny_model.decoder(z, f0, voiced, g, generator=torch.Generator().manual_seed(0))
    wav.pow(2).sum().backward()
    assert g.grad is not None and g.grad.abs().max() > 0


def test_remove_weight_norm_keeps_outputs(tiny_model, tiny_config):
    perturb_flow(tiny_model)
    tiny_model.eval()
    content, f0, voiced, volume, _ = make_inputs(tiny_config, 2, 9)
    g = tiny_model.embed_speaker(torch.tensor([0, 1]))

    def run():
        with torch.no_grad():
            return tiny_model.infer(content, f0, voiced, volume, g, noise_scale=NOISE,
                                    generator=torch.Generator().manual_seed(7))

    before = run()
    assert torch.equal(before, run())  # a fixed generator makes inference reproducible
    changed = tiny_model.remove_weight_norm()
    assert changed > 10
    assert not any("parametrizations" in name for name in tiny_model.state_dict())
    torch.testing.assert_close(run(), before, atol=1e-5, rtol=1e-4)


def test_lora_target_names_are_plain_conv1d(tiny_model):
    """The names listed in SingerVAE's docstring exist and are nn.Conv1d modules peft can adapt."""
    names = dict(tiny_model.named_modules())
    for name in ("prior_encoder.encoder.layers.0.attention.query_proj",
                 "prior_encoder.encoder.layers.1.attention.out_proj",
                 "prior_encoder.encoder.layers.0.feed_forward.conv_in",
                 "flow.couplings.0.wavenet.dilated_convs.1", "flow.couplings.1.wavenet.res_skip_convs.0",
                 "decoder.input_conv", "decoder.source_convs.0", "decoder.resblocks.0.dilated_convs.0",
                 "decoder.resblocks.3.convs.1", "decoder.output_conv"):
        assert isinstance(names[name], torch.nn.Conv1d), name
    assert isinstance(names["decoder.upsamplers.0"], torch.nn.ConvTranspose1d)


# --------------------------------------------------------------------------------------- components

def test_nsf_sines_are_zero_where_unvoiced_and_at_f0_where_voiced(tiny_model, tiny_config):
    source = tiny_model.decoder.source.eval()
    hop, sr = tiny_config.hop_length, tiny_config.sample_rate
    frames = 40
    f0 = torch.full((1, frames), 220.0)
    voiced = torch.ones(1, frames)
    voiced[0, 10:20] = 0
    sines, voiced_samples = source.sine_waves(f0, voiced)
    assert sines.shape == (1, tiny_config.harmonic_num + 1, frames * hop)
    assert sines[..., 10 * hop:20 * hop].abs().max() == 0
    assert voiced_samples[..., 10 * hop:20 * hop].max() == 0 and voiced_samples[..., :10 * hop].min() == 1
    fundamental = sines[0, 0, 20 * hop:].numpy()
    spectrum = np.abs(np.fft.rfft(fundamental * np.hanning(fundamental.size)))
    peak_hz = np.argmax(spectrum) * sr / fundamental.size
    assert peak_hz == pytest.approx(220.0, abs=3.0)
    assert sines[0, 0].abs().max() == pytest.approx(tiny_config.sine_amp, rel=0.01)
    # the phase is continuous across frame boundaries: no jumps bigger than one sample's step
    step = 2 * math.pi * 220.0 / sr * tiny_config.sine_amp
    assert np.abs(np.diff(fundamental)).max() <= step * 1.01
    excitation = source(f0, voiced)
    assert excitation.shape == (1, 1, frames * hop) and excitation.abs().max() < 1


def test_coarse_f0_bins():
    f0 = torch.tensor([[0.0, 50.0, 20.0, 1100.0, 5000.0, 220.0, 440.0]])
    voiced = torch.tensor([[1, 1, 1, 1, 1, 0, 1]])
    bins = coarse_f0(f0, voiced, 256, 50.0, 1100.0)
    assert bins.tolist() == [[0, 1, 1, 255, 255, 0, bins[0, 6].item()]]
    octave = coarse_f0(torch.tensor([[220.0, 440.0]]), torch.ones(1, 2), 256, 50.0, 1100.0)
    assert octave[0, 1] - octave[0, 0] == round(254 * math.log(2) / math.log(1100 / 50))


def test_relative_attention_matches_a_direct_loop():
    torch.manual_seed(0)
    attention = RelativeMultiHeadAttention(channels=8, n_heads=2, window_size=2).eval()
    x = torch.randn(1, 8, 6)
    mask = torch.ones(1, 1, 6)
    mask[..., 5] = 0
    with torch.no_grad():
        fast = attention(x, mask)
        heads, d, w = 2, 4, 2
        q = attention.query_proj(x).view(heads, d, 6) / math.sqrt(d)
        k = attention.key_proj(x).view(heads, d, 6)
        v = attention.value_proj(x).view(heads, d, 6)
        out = torch.zeros(heads, d, 6)
        for h in range(heads):
            for i in range(6):
                scores = torch.full((6,), -1e4)
                for j in range(6):
                    if mask[0, 0, i] and mask[0, 0, j]:
                        scores[j] = q[h, :, i] @ k[h, :, j]
                        if abs(j - i) <= w:
                            scores[j] += q[h, :, i] @ attention.relative_key[j - i + w]
                weights = torch.softmax(scores, 0)
                for j in range(6):
                    value = v[h, :, j] + (attention.relative_value[j - i + w] if abs(j - i) <= w else 0)
                    out[h, :, i] += weights[j] * value
        slow = attention.out_proj(out.reshape(1, 8, 6))
    torch.testing.assert_close(fast[..., :5], slow[..., :5], atol=1e-5, rtol=1e-5)


def test_discriminator_shapes(tiny_config):
    discriminator = Discriminator.from_config(tiny_config)
    real, fake = torch.randn(2, 1, 4096), torch.randn(2, 1, 4096, requires_grad=True)
    real_logits, fake_logits, real_features, fake_features = discriminator(real, fake)
    n = len(tiny_config.discriminator_periods) + tiny_config.discriminator_scales
    assert len(real_logits) == len(fake_logits) == len(real_features) == len(fake_features) == n
    for r, f in zip(real_logits, fake_logits):
        assert r.shape == f.shape and r.dim() == 2 and r.shape[0] == 2
    for r_maps, f_maps in zip(real_features, fake_features):
        assert len(r_maps) == 6 or len(r_maps) == 7
        assert [m.shape for m in r_maps] == [m.shape for m in f_maps]
    sum(l.mean() for l in fake_logits).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[B, 1, L\]"):
        discriminator(real, fake[:, :, :100])
    # an odd length is padded to a multiple of each period
    out = discriminator(torch.randn(1, 1, 1001), torch.randn(1, 1, 1001))
    assert len(out.real_logits) == n


def test_windowed_decoding_gives_the_whole_sequence_output(tiny_config):
    """The decoder over windows (with its receptive field of context on each side) writes the audio of one
    pass over the whole sequence, for any window length; the receptive field bounds how far a change in
    the decoder's input reaches."""
    torch.manual_seed(0)
    decoder = SingerVAE(tiny_config).decoder.eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.mul_(3.0)  # louder than the initialisation, so differences would show
    frames, hop = 90, decoder.hop_length
    z = torch.randn(2, tiny_config.inter_channels, frames)
    f0, voiced = torch.full((2, frames), 220.0), (torch.rand(2, frames) > 0.2).float()
    g = torch.randn(2, tiny_config.gin_channels)
    with torch.inference_mode():
        whole = decoder(z, f0, voiced, g, torch.Generator().manual_seed(1))
        assert whole.abs().max() > 0.05
        for window in (7, 32, 89):
            windowed = decoder(z, f0, voiced, g, torch.Generator().manual_seed(1), window_frames=window)
            assert windowed.shape == whole.shape
            assert torch.allclose(windowed, whole, atol=1e-5), window
        reach = decoder.receptive_field_frames()
        x = decoder.input_conv(z) + decoder.speaker_proj(g.unsqueeze(-1))
        source = decoder.source(f0, voiced, torch.Generator().manual_seed(1))
        nudged = x.clone()
        nudged[..., 45] += 1.0
        change = (decoder.upsample(nudged, source) - decoder.upsample(x, source)).abs()[0, 0].reshape(frames, hop)
        changed = torch.nonzero(change.amax(dim=1) > 0).flatten()
        assert 0 < changed.max() - 45 <= reach and 0 < 45 - changed.min() <= reach


@pytest.mark.parametrize("window, context, multiple", [(7, 3, 4), (32, 10, 8), (200, 25, 32), (172, 13, 32)])
def test_decoder_windows_take_few_lengths_and_tile_the_sequence(window, context, multiple):
    """The windows hold at least ``context`` frames on each side of what they keep (unless they meet the
    sequence's edge), the kept frames tile the sequence in order, about ``window`` frames each, and for sequences
    that are multiples of ``multiple`` frames (the converter's pieces) every window is a multiple of ``multiple``
    frames, at most ``span``: a few lengths over a whole song, so a CPU's conv library reuses its prepared kernels
    across pieces. Only the last window decodes more than it needs, by less than ``multiple`` frames."""
    span = None
    lengths = set()
    for n_frames in range(1, 5 * (window + 2 * context)):
        windows = decode_windows(n_frames, window, context, multiple)
        position = 0
        for low, high, keep, n in windows:
            assert 0 <= low and high <= n_frames and low + keep == position and n > 0
            first, last = low + keep, low + keep + n
            assert first - low >= context or low == 0
            assert high - last >= context or high == n_frames
            position = last
        assert position == n_frames
        if len(windows) > 1:
            span = windows[0][1] - windows[0][0]
            assert span % multiple == 0 and window + 2 * context - multiple < span <= window + 2 * context
            assert all(high - low == span for low, high, _, _ in windows[:-1])
            low, high, keep, n = windows[-1]
            assert high - low < n + context + multiple  # the last window's extra context: under a multiple
            if n_frames % multiple == 0:
                lengths |= {high - low for low, high, _, _ in windows}
        elif n_frames % multiple == 0:
            lengths.add(n_frames)
    assert span is not None and lengths <= set(range(multiple, span + 1, multiple))


def test_decoder_blocks_in_bfloat16_stay_close_to_float32(tiny_config):
    """``block_dtype=torch.bfloat16`` runs the residual blocks' convolutions in bfloat16 (the audio changes by
    rounding only) and returns float32 audio of the same shape, with or without decoder windows."""
    torch.manual_seed(0)
    decoder = SingerVAE(tiny_config).decoder.eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.mul_(3.0)
    frames = 40
    z = torch.randn(1, tiny_config.inter_channels, frames)
    f0, voiced, g = torch.full((1, frames), 220.0), torch.ones(1, frames), torch.randn(1, tiny_config.gin_channels)
    with torch.inference_mode():
        plain = decoder(z, f0, voiced, g, torch.Generator().manual_seed(1))
        for window in (0, 16):
            half = decoder(z, f0, voiced, g, torch.Generator().manual_seed(1), window_frames=window,
                           block_dtype=torch.bfloat16)
            assert half.dtype == torch.float32 and half.shape == plain.shape
            error = (half - plain).pow(2).mean().sqrt() / plain.pow(2).mean().sqrt()
            assert 0 < error < 0.02, (window, error)


def test_a_batch_row_converts_as_it_would_alone(tiny_model, tiny_config):
    """With one generator per row, each row of a padded batch gets the audio of a call with that row alone,
    except within the decoder's receptive field of a padded row's end (the padding is not silence to it)."""
    tiny_model.eval()
    content, f0, voiced, volume, _ = make_inputs(tiny_config, 3, 70)
    g = torch.randn(3, tiny_config.gin_channels)
    lengths = torch.tensor([70, 40, 55])
    hop, reach = tiny_config.hop_length, tiny_model.decoder.receptive_field_frames()
    with torch.inference_mode():
        batched = tiny_model.infer(content, f0, voiced, volume, g, lengths, noise_scale=NOISE,
                                   generator=[torch.Generator().manual_seed(10 + row) for row in range(3)])
        for row, n in enumerate(lengths.tolist()):
            alone = tiny_model.infer(content[row:row + 1, :, :n], f0[row:row + 1, :n], voiced[row:row + 1, :n],
                                     volume[row:row + 1, :n], g[row:row + 1], noise_scale=NOISE,
                                     generator=[torch.Generator().manual_seed(10 + row)])
            exact = n if n == 70 else n - reach  # the longest row has no padding
            assert torch.allclose(batched[row, :, : exact * hop], alone[0, :, : exact * hop], atol=1e-5), row
    with pytest.raises(ValueError, match="one generator per row"):
        tiny_model.infer(content, f0, voiced, volume, g, lengths, noise_scale=NOISE,
                         generator=[torch.Generator()])


@pytest.mark.parametrize("per_row", [False, True])
def test_prior_padded_to_a_frame_multiple_converts_the_same(tiny_model, tiny_config, per_row):
    """``prior_frames_multiple`` pads the frames the prior encoder and flow see (masked) without changing the
    audio or its length, with one generator or one per row, with or without ``lengths``."""
    tiny_model.eval()
    content, f0, voiced, volume, _ = make_inputs(tiny_config, 2, 45)
    g = torch.randn(2, tiny_config.gin_channels)
    for lengths in (None, torch.tensor([45, 31])):
        def generator():
            return ([torch.Generator().manual_seed(3 + row) for row in range(2)] if per_row
                    else torch.Generator().manual_seed(3))
        with torch.inference_mode():
            plain = tiny_model.infer(content, f0, voiced, volume, g, lengths, noise_scale=NOISE, generator=generator())
            for multiple in (16, 64):
                padded = tiny_model.infer(content, f0, voiced, volume, g, lengths, noise_scale=NOISE,
                                          generator=generator(), prior_frames_multiple=multiple)
                assert padded.shape == plain.shape == (2, 1, 45 * tiny_config.hop_length)
                assert torch.allclose(padded, plain, atol=1e-5), (lengths, multiple)


def test_discriminator_for_generator_gives_the_same_losses_and_generator_gradients(tiny_config):
    """The generator step's view of the discriminator: the same feature-matching and adversarial losses and the
    same gradient reaching the generated audio as ``forward``, no gradient for the discriminator's parameters
    (their requires_grad comes back afterwards, also for a frozen one)."""
    from ai_singer.losses import feature_matching_loss, generator_adversarial_loss

    torch.manual_seed(0)
    discriminator = Discriminator.from_config(tiny_config)
    real, source = torch.randn(2, 1, 4096), torch.randn(2, 1, 4096)
    results = []
    for view in (discriminator.forward, discriminator.for_generator):
        discriminator.zero_grad(set_to_none=True)
        gain = torch.tensor(0.7, requires_grad=True)  # a one-parameter "generator"
        _, fake_logits, real_maps, fake_maps = view(real, gain * source)
        loss = feature_matching_loss(real_maps, fake_maps) + generator_adversarial_loss(fake_logits)[0]
        loss.backward()
        d_grads = [p.grad for p in discriminator.parameters()]
        results.append((loss.item(), gain.grad.item(), d_grads))
    (loss_full, grad_full, d_full), (loss_gen, grad_gen, d_gen) = results
    assert loss_gen == pytest.approx(loss_full, rel=1e-5)
    assert grad_gen == pytest.approx(grad_full, rel=1e-4)
    assert any(g is not None for g in d_full)  # forward: the discriminator's weights got gradients (wasted)
    assert all(g is None for g in d_gen)
    assert all(p.requires_grad for p in discriminator.parameters())
    discriminator.requires_grad_(False)  # a frozen discriminator stays frozen
    discriminator.for_generator(real, source)
    assert not any(p.requires_grad for p in discriminator.parameters())


# ------------------------------------------------------------------------------------- learning

def test_tiny_model_fits_one_clip(tiny_config):
    """Thirty optimiser steps on one harmonic clip bring the mel L1 of the decoded segment down."""
    from ai_singer.features.spectrogram import linear_spectrogram, mel_spectrogram
    from ai_singer.losses import kl_loss, mel_l1_loss
    from tests.conftest import harmonic

    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config, segment_frames=16)
    model = SingerVAE(config)
    hop, sr, frames = config.hop_length, config.sample_rate, 24
    wav = torch.from_numpy(harmonic(220.0, sr, frames * hop / sr))[: frames * hop].view(1, 1, -1)
    spec = linear_spectrogram(wav[:, 0], config.n_fft, hop, config.win_length)
    content = torch.randn(1, config.content_dim, frames)
    f0, voiced = torch.full((1, frames), 220.0), torch.ones(1, frames)
    volume = torch.full((1, frames), float(wav.pow(2).mean().sqrt()))

    def mel(x):
        return mel_spectrogram(x[:, 0], sr=sr, n_fft=config.n_fft, hop=hop, win=config.win_length, n_mels=40,
                               fmin=0.0, fmax=None)

    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        g = model.embed_speaker(torch.tensor([0]))
        out = model(content, f0, voiced, volume, spec, torch.tensor([frames]), g)
        loss_mel = mel_l1_loss(mel(out.wav), mel(out.slice_audio(wav)))
        loss = 45 * loss_mel + kl_loss(out)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss_mel.detach()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


def test_inference_side_does_not_import_training_code():
    """``import ai_singer.model`` (what inference uses) pulls in neither the discriminator nor the losses."""
    import subprocess
    import sys

    code = ("import sys, ai_singer.model; "
            "print(sorted(m for m in sys.modules if m.endswith(('discriminator', 'losses'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
