"""The decoder's upsampling stages in channels-last layout give the decoder's own audio."""
from __future__ import annotations

import pytest
import torch

from ai_singer.bottleneck import Bottleneck
from ai_singer.model.channels_last import ChannelsLastUpsampling
from ai_singer.model.ddsp import DDSPDecoder
from ai_singer.model.decoder import NSFHiFiGAN
from ai_singer.model.layers import remove_all_weight_norm


def tiny_decoder(seed: int = 0) -> NSFHiFiGAN:
    torch.manual_seed(seed)
    decoder = NSFHiFiGAN(in_channels=8, upsample_initial_channel=32, upsample_rates=[4, 2, 2],
                         upsample_kernel_sizes=[8, 4, 4], resblock_kernel_sizes=[3, 7],
                         resblock_dilation_sizes=[[1, 3], [1, 3, 5]], gin_channels=4, sample_rate=16000,
                         harmonic_num=3, sine_amp=0.1, noise_std=0.003, source_style="ai_singer",
                         output_bias=True).eval()
    with torch.no_grad():  # louder than the quiet initialisation, so rounding differences show
        for parameter in decoder.parameters():
            parameter.mul_(3.0)
    return decoder


def stage_inputs(decoder: NSFHiFiGAN, frames: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 32, frames, generator=generator)
    source = 0.1 * torch.randn(1, 1, frames * decoder.hop_length, generator=generator)
    return x, source


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


@pytest.mark.parametrize("weight_norm", [True, False])
def test_channels_last_stages_give_the_decoders_audio_in_float32(weight_norm):
    decoder = tiny_decoder()
    if not weight_norm:
        remove_all_weight_norm(decoder)
    x, source = stage_inputs(decoder)
    stages = ChannelsLastUpsampling.prepare(decoder)
    assert stages is not None
    with torch.inference_mode():
        expected = decoder.upsample(x, source)
        got = stages(x, source)
    assert got.shape == expected.shape == (1, 1, 30 * decoder.hop_length) and got.dtype == torch.float32
    assert got.is_contiguous()
    assert relative_error(got, expected) < 1e-5


def test_channels_last_stages_in_bfloat16_follow_the_decoders_bfloat16_blocks():
    """With ``block_dtype=bfloat16`` the prepared stages round where ``decoder.upsample(..., bfloat16)`` does: the
    two agree far more closely than either does with float32."""
    decoder = tiny_decoder()
    remove_all_weight_norm(decoder)
    x, source = stage_inputs(decoder)
    stages = ChannelsLastUpsampling.prepare(decoder, torch.bfloat16)
    with torch.inference_mode():
        full = decoder.upsample(x, source)
        blocks = decoder.upsample(x, source, torch.bfloat16)
        got = stages(x, source)
    assert got.dtype == torch.float32
    bf16_error = relative_error(blocks, full)
    assert 0 < bf16_error < 0.02
    assert relative_error(got, blocks) < 0.1 * bf16_error


def test_the_whole_decoder_with_prepared_stages_and_windows_gives_the_same_audio():
    decoder = tiny_decoder()
    remove_all_weight_norm(decoder)
    frames = 40
    z, g = torch.randn(1, 8, frames), torch.randn(1, 4)
    f0, voiced = torch.full((1, frames), 200.0), torch.ones(1, frames)
    stages = ChannelsLastUpsampling.prepare(decoder)
    with torch.inference_mode():
        expected = decoder(z, f0, voiced, g, torch.Generator().manual_seed(3))
        for window in (0, 12):
            got = decoder(z, f0, voiced, g, torch.Generator().manual_seed(3), window_frames=window, stages=stages)
            assert got.shape == expected.shape and relative_error(got, expected) < 1e-5, window


def test_a_decoder_with_unmergeable_modules_or_hooks_is_not_prepared():
    """Where the prepared stages would miss part of the decoder's computation they are not made (None: the
    decoder's own stages run)."""
    decoder = tiny_decoder()
    decoder.resblocks[0] = Bottleneck(decoder.resblocks[0], 2)  # a bottleneck adapter after a resblock
    assert ChannelsLastUpsampling.prepare(decoder) is None

    hooked = tiny_decoder()
    hooked.resblocks[1].convs[0].register_forward_hook(lambda module, args, out: out * 2)
    assert ChannelsLastUpsampling.prepare(hooked) is None

    reflect = tiny_decoder()
    reflect.output_conv.padding_mode = "reflect"
    assert ChannelsLastUpsampling.prepare(reflect) is None

    ddsp = DDSPDecoder.__new__(DDSPDecoder)  # not an NSF-HiFiGAN decoder: nothing to prepare
    assert ChannelsLastUpsampling.prepare(ddsp) is None

