"""NSF-HiFiGAN decoder: latent frames + F0 -> waveform.

A harmonic-plus-noise excitation is built from F0 at the sample rate (:class:`HarmonicNoiseSource`) and
injected at every scale of a HiFi-GAN generator (transposed-conv upsamplers + multi-receptive-field
residual blocks) through strided convolutions. Shapes: ``z`` [B, I, T], ``f0``/``voiced`` [B, T] (Hz,
0/1), ``g`` [B, gin]; output ``[B, 1, T * hop_length]`` with ``hop_length = prod(upsample_rates)``.

Module names that peft's LoRA can adapt (Conv1d): ``decoder.input_conv``, ``decoder.speaker_proj``,
``decoder.source_convs.N``, ``decoder.resblocks.N.dilated_convs.M``, ``decoder.resblocks.N.convs.M``,
``decoder.output_conv``. The upsamplers (``decoder.upsamplers.N``) are ConvTranspose1d, which peft does
not adapt.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ai_singer.model.layers import init_conv_weights, noise_rows, same_padding, voiced_frames, with_weight_norm

LEAKY_SLOPE = 0.1


#: Conventions of :class:`HarmonicNoiseSource` (``nsf_source`` of the model config).
SOURCE_STYLES = ("ai_singer", "sovits")


def harmonic_sines(f0: torch.Tensor, voiced: torch.Tensor, sample_rate: int, hop_length: int, n_harmonics: int,
                   random_phase: bool = False, generator: torch.Generator | None = None, first_harmonic: int = 1,
                   style: str = "ai_singer") -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-amplitude harmonics of a frame-rate F0: ``f0`` [B, T] Hz, ``voiced`` [B, T] 0/1 ->
    (sines [B, K, T*hop], row ``i`` the harmonic ``first_harmonic + i`` of F0, exactly 0 where unvoiced or
    at/above Nyquist; voiced mask per sample [B, 1, T*hop]).

    F0 is constant within a frame. The phase is accumulated per frame in float64 and inside a frame in
    float32, so long inputs keep an accurate, continuous phase. ``random_phase`` (training) gives every
    harmonic above the fundamental a random initial phase. ``style="sovits"`` (:data:`SOURCE_STYLES`) follows
    so-vits-svc's ``SineGen`` instead: voiced where F0 > 0 (``voiced`` not consulted), the phase of sample ``n``
    includes its own increment (``sum_{i<=n}``), and harmonics above Nyquist are kept (they alias).
    """
    if style not in SOURCE_STYLES:
        raise ValueError(f"nsf_source must be one of {SOURCE_STYLES}, got {style!r}")
    sovits = style == "sovits"
    batch, n_frames = f0.shape
    hop, sr = hop_length, sample_rate
    is_voiced = ((f0 > 0) if sovits else voiced_frames(f0, voiced)).to(f0.dtype)
    harmonics = torch.arange(first_harmonic, first_harmonic + n_harmonics, device=f0.device, dtype=torch.float64)
    step = (f0.to(torch.float64) * is_voiced.to(torch.float64)) / sr  # cycles per sample, [B, T]
    # phase (in cycles) at each frame's first sample: exclusive cumulative sum over frames
    frame_start = torch.cumsum(step * hop, dim=-1) - step * hop
    start_k = torch.remainder(frame_start.unsqueeze(1) * harmonics.view(1, -1, 1), 1.0)  # [B, K, T]
    if random_phase:
        initial = torch.rand(batch, n_harmonics, 1, generator=generator, dtype=torch.float64)
        if first_harmonic == 1:
            initial[:, 0] = 0.0
        start_k = start_k + initial.to(f0.device)
    step_k = (step.unsqueeze(1) * harmonics.view(1, -1, 1)).to(f0.dtype)  # [B, K, T]
    within = torch.arange(int(sovits), hop + int(sovits), device=f0.device, dtype=f0.dtype)
    phase = start_k.to(f0.dtype).unsqueeze(-1) + step_k.unsqueeze(-1) * within  # [B, K, T, hop]
    sines = torch.sin(2 * math.pi * phase) * is_voiced.view(batch, 1, n_frames, 1)
    if not sovits:
        sines = sines * (step_k < 0.5).to(f0.dtype).unsqueeze(-1)  # nothing at or above Nyquist
    voiced_samples = is_voiced.repeat_interleave(hop, dim=-1).unsqueeze(1)
    return sines.reshape(batch, n_harmonics, n_frames * hop), voiced_samples


class HarmonicNoiseSource(nn.Module):
    """Excitation from frame-rate F0: ``harmonic_num + 1`` sine harmonics (zero where unvoiced or above
    Nyquist) plus Gaussian noise (``noise_std`` where voiced, ``sine_amp / 3`` where unvoiced, for
    unvoiced consonants), merged to one channel by a ``Linear`` + ``tanh``.

    The phase is accumulated per frame in float64 and inside a frame in float32, so long inputs keep an
    accurate, continuous phase. During training every harmonic above the fundamental gets a random
    initial phase.

    ``style`` (:data:`SOURCE_STYLES`): ``ai_singer`` as above; ``sovits`` follows so-vits-svc's
    ``SineGen``: a sample is voiced where F0 > 0 (the ``voiced`` flag is not consulted: so-vits-svc feeds
    interpolated F0, so its source is harmonic through unvoiced frames too), the phase of sample ``n`` includes
    that sample's own increment (``sum_{i<=n}`` instead of ``sum_{i<n}``), and harmonics above Nyquist are
    kept (they alias, as in so-vits-svc; none exceed it at 44.1 kHz below 2450 Hz F0 with 9 harmonics).
    """

    def __init__(self, sample_rate: int, hop_length: int, harmonic_num: int, sine_amp: float,
                 noise_std: float, style: str):
        super().__init__()
        if style not in SOURCE_STYLES:
            raise ValueError(f"nsf_source must be one of {SOURCE_STYLES}, got {style!r}")
        self.style = style
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.n_harmonics = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.merge = nn.Linear(self.n_harmonics, 1)

    def sine_waves(self, f0: torch.Tensor, voiced: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``f0`` [B, T] Hz, ``voiced`` [B, T] -> (sines [B, K, T*hop] with amplitude ``sine_amp`` and exactly
        0 where unvoiced, voiced mask per sample [B, 1, T*hop])."""
        sines, voiced_samples = harmonic_sines(f0, voiced, self.sample_rate, self.hop_length, self.n_harmonics,
                                               random_phase=self.training, generator=generator, style=self.style)
        return self.sine_amp * sines, voiced_samples

    def forward(self, f0: torch.Tensor, voiced: torch.Tensor,
                generator: torch.Generator | Sequence[torch.Generator] | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``f0`` [B, T] Hz, ``voiced`` [B, T] -> excitation [B, 1, T*hop] in (-1, 1). ``generator``: one, or
        one per row with ``lengths`` [B] valid frames (see :func:`~ai_singer.model.layers.noise_rows`;
        inference only: training's random phases need a single generator)."""
        single = generator is None or isinstance(generator, torch.Generator)
        if self.training and not single:
            raise ValueError("training draws the source's phases from one generator, not one per row")
        sines, voiced_samples = self.sine_waves(f0, voiced, generator if single else None)
        noise = noise_rows(tuple(sines.shape), generator, None if lengths is None else lengths * self.hop_length,
                           sines.dtype, sines.device)
        return self.excite(sines, voiced_samples, noise)

    def excite(self, sines: torch.Tensor, voiced_samples: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The excitation from :meth:`sine_waves`' output and ``noise`` [B, K, T*hop] (standard normal, one row per
        harmonic) -> [B, 1, T*hop] in (-1, 1)."""
        noise_amp = voiced_samples * self.noise_std + (1 - voiced_samples) * (self.sine_amp / 3)
        excitation = sines + noise_amp * noise
        return torch.tanh(self.merge(excitation.transpose(1, 2))).transpose(1, 2)


#: Decoder windows are multiples of this many frames (see :func:`decode_windows`; a sequence decoded in one window:
#: its own length).
LAST_WINDOW_MULTIPLE = 32


def round_up_to_multiple(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` (> 0) that is >= ``value``: the frame counts the converter and
    :func:`decode_windows` give the decoder, so that a song is decoded over few distinct lengths."""
    return -(-value // multiple) * multiple


def decode_windows(n_frames: int, window_frames: int, context: int,
                   multiple: int = LAST_WINDOW_MULTIPLE) -> list[tuple[int, int, int, int]]:
    """How :meth:`NSFHiFiGAN.forward` cuts ``n_frames`` into windows of about ``window_frames`` (<= 0: one window),
    each decoded with at least ``context`` frames on both sides (or up to the sequence's edge): ``(low, high, keep,
    n)`` per window, frames ``[low, high)`` decoded, of whose output the ``n`` frames from ``keep`` on are kept (in
    order they tile ``[0, n_frames)``).

    Every window but the last decodes ``span`` frames: ``window_frames + 2 * context`` rounded down to a multiple of
    ``multiple`` (at least the first multiple above ``2 * context``). The first keeps its first ``span - context``
    frames, the middle ones ``span - 2 * context``; the last keeps the rest and reaches back (more context) to a
    multiple of ``multiple`` frames, at most ``span``, for at most ``multiple - 1`` frames decoded in vain. A
    sequence of at most ``span`` frames is one window. A caller whose sequences are multiples of ``multiple`` frames
    (the converter's pieces: ``chunk.piece_frames_multiple``) thus has windows of at most ``span / multiple``
    lengths over a whole song: a CPU's convolution library keeps the kernels it prepared for each length (and their
    memory, ~0.15 GB per length for ``model=base`` in bfloat16; see
    :data:`ai_singer.device.ONEDNN_PRIMITIVE_CACHE_CAPACITY`) instead of building new ones for every piece."""
    if window_frames <= 0:
        return [(0, n_frames, 0, n_frames)]
    span = max((window_frames + 2 * context) // multiple, 2 * context // multiple + 1) * multiple
    if n_frames <= span:
        return [(0, n_frames, 0, n_frames)]
    windows = []
    start = 0
    while start < n_frames:
        low = max(0, start - context)
        if low + span < n_frames:  # a whole window short of the end: keeps all but its last context frames
            high = low + span
            end = high - context
        else:  # the last window keeps the rest (at most span - context frames); its length is rounded up
            end = high = n_frames
            low = max(0, high - min(span, round_up_to_multiple(high - start + context, multiple)))
        windows.append((low, high, start - low, end - start))
        start = end
    return windows


class ResBlock(nn.Module):
    """HiFi-GAN's multi-receptive-field residual block ("type 1"): for each dilation a dilated conv and a
    plain conv, each after a leaky ReLU, with a residual connection. ``[B, C, L] -> [B, C, L]``."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int] | tuple[int, ...]):
        super().__init__()
        self.dilated_convs = nn.ModuleList()
        self.convs = nn.ModuleList()
        for dilation in dilations:
            dilated = nn.Conv1d(channels, channels, kernel_size, dilation=dilation,
                                padding=same_padding(kernel_size, dilation))
            plain = nn.Conv1d(channels, channels, kernel_size, padding=same_padding(kernel_size))
            init_conv_weights(dilated)
            init_conv_weights(plain)
            self.dilated_convs.append(with_weight_norm(dilated))
            self.convs.append(with_weight_norm(plain))

    def forward(self, x: torch.Tensor, conv_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``conv_dtype`` (e.g. ``torch.bfloat16``): the convolutions (and the leaky ReLU between them) run under
        autocast to it, while the residual sums stay in ``x``'s dtype, so the rounding does not pile up along the
        stream; None: all in ``x``'s dtype."""
        for dilated, plain in zip(self.dilated_convs, self.convs):
            with torch.autocast(x.device.type, dtype=conv_dtype) if conv_dtype is not None else nullcontext():
                y = dilated(F.leaky_relu(x, LEAKY_SLOPE))
                y = plain(F.leaky_relu(y, LEAKY_SLOPE))
            x = x + y.to(x.dtype)
        return x


class NSFHiFiGAN(nn.Module):
    """The waveform decoder. ``forward(z [B, I, T], f0 [B, T], voiced [B, T], g [B, gin]) -> [B, 1, T*hop]``.

    Channels halve at every upsampling stage, starting from ``upsample_initial_channel``. Stage ``i`` adds
    the excitation brought to its rate by ``source_convs.i`` (a conv with stride
    ``prod(upsample_rates[i+1:])``). ``source_style``: see :class:`HarmonicNoiseSource`;
    ``output_bias``: whether ``output_conv`` has a bias (so-vits-svc's ``conv_post`` has one).
    """

    OUTPUT_KERNEL = 7

    def __init__(self, in_channels: int, upsample_initial_channel: int, upsample_rates: list[int],
                 upsample_kernel_sizes: list[int], resblock_kernel_sizes: list[int],
                 resblock_dilation_sizes: list[list[int]], gin_channels: int, sample_rate: int,
                 harmonic_num: int, sine_amp: float, noise_std: float, source_style: str, output_bias: bool):
        super().__init__()
        self.hop_length = math.prod(upsample_rates)
        self.n_kernels = len(resblock_kernel_sizes)
        self.upsample_rates, self.upsample_kernel_sizes = list(upsample_rates), list(upsample_kernel_sizes)
        self.resblock_kernel_sizes, self.resblock_dilation_sizes = list(resblock_kernel_sizes), resblock_dilation_sizes
        self.source = HarmonicNoiseSource(sample_rate, self.hop_length, harmonic_num, sine_amp, noise_std,
                                          source_style)
        self.input_conv = with_weight_norm(nn.Conv1d(in_channels, upsample_initial_channel, 7, padding=3))
        self.speaker_proj = nn.Conv1d(gin_channels, upsample_initial_channel, 1)
        self.upsamplers = nn.ModuleList()
        self.source_convs = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            out_channels = channels // 2
            upsampler = nn.ConvTranspose1d(channels, out_channels, kernel, stride=rate, padding=(kernel - rate) // 2)
            init_conv_weights(upsampler)
            self.upsamplers.append(with_weight_norm(upsampler))
            stride = math.prod(upsample_rates[i + 1:])
            if stride > 1:
                self.source_convs.append(nn.Conv1d(1, out_channels, 2 * stride, stride=stride, padding=stride // 2))
            else:
                self.source_convs.append(nn.Conv1d(1, out_channels, 1))
            for block_kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(ResBlock(out_channels, block_kernel, dilations))
            channels = out_channels
        output_conv = nn.Conv1d(channels, 1, self.OUTPUT_KERNEL, padding=self.OUTPUT_KERNEL // 2, bias=output_bias)
        init_conv_weights(output_conv)
        self.output_conv = with_weight_norm(output_conv)

    def receptive_field_frames(self) -> int:
        """How many frames on either side of a frame can change its output samples through the upsampling
        stages (upsamplers, residual blocks, the output conv; everything after ``input_conv``), rounded up,
        plus one frame for the source convs' edges. An upper bound: windows decoded with this much context
        on each side give the whole sequence's output (see :meth:`forward`). From the architecture, so
        adapters wrapped around the convs do not matter."""
        reach = self.OUTPUT_KERNEL // 2  # samples at the current rate, walking back from the output
        block_reach = max(sum((kernel - 1) * dilation // 2 + (kernel - 1) // 2 for dilation in dilations)
                          for kernel, dilations in zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes))
        for rate, kernel in reversed(list(zip(self.upsample_rates, self.upsample_kernel_sizes))):
            reach = math.ceil((reach + block_reach) / rate) + math.ceil(kernel / rate)
        return reach + 1

    def resblocks_per_stage(self) -> list[nn.ModuleList]:
        """The residual blocks of each upsampling stage (``n_kernels`` per stage)."""
        return [self.resblocks[i * self.n_kernels:(i + 1) * self.n_kernels] for i in range(len(self.upsamplers))]

    def forward(self, z: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, g: torch.Tensor,
                generator: torch.Generator | Sequence[torch.Generator] | None = None,
                lengths: torch.Tensor | None = None, window_frames: int = 0,
                block_dtype: torch.dtype | None = None,
                stages: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``z`` [B, I, T], ``f0``/``voiced`` [B, T], ``g`` [B, gin] -> audio [B, 1, T*hop].

        ``generator`` / ``lengths`` [B]: the excitation's noise (see :class:`HarmonicNoiseSource`).
        ``window_frames`` > 0: the upsampling stages run over windows of that many frames, each with
        :meth:`receptive_field_frames` of context on both sides that is cut off afterwards: the same audio
        up to float rounding, with intermediate tensors small enough to stay in a CPU's caches (a long
        sequence at once is slower per frame there). 0: the whole sequence in one pass.
        ``block_dtype``: the residual blocks' convolutions run in this dtype (see :meth:`ResBlock.forward`; e.g.
        ``torch.bfloat16``, ~1.6x faster on a CPU with AVX512-BF16), everything else in ``z``'s; None: all in ``z``'s.
        ``stages``: what runs the upsampling stages instead of :meth:`upsample` (inference: a
        :class:`~ai_singer.model.channels_last.ChannelsLastUpsampling` of this decoder, which brings its own
        ``block_dtype``); None: :meth:`upsample` with ``block_dtype``.
        """
        source = self.source(f0, voiced, generator, lengths)  # [B, 1, T*hop]
        x = self.frame_input(z, g)
        hop = self.hop_length
        if stages is None:
            stages = partial(self.upsample, block_dtype=block_dtype)
        pieces = [stages(x[..., low:high], source[..., low * hop: high * hop])
                  [..., keep * hop: (keep + n) * hop]
                  for low, high, keep, n in decode_windows(z.shape[-1], window_frames, self.receptive_field_frames())]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    def frame_input(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """What the upsampling stages start from: ``input_conv(z)`` + the singer's projection, [B, C, T]."""
        return self.input_conv(z) + self.speaker_proj(g.unsqueeze(-1))

    def upsample(self, x: torch.Tensor, source: torch.Tensor, block_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The upsampling stages: ``x`` [B, C, T] (after ``input_conv``), ``source`` [B, 1, T*hop] -> [B, 1, T*hop];
        ``block_dtype``: see :meth:`forward`."""
        for upsampler, source_conv, blocks in zip(self.upsamplers, self.source_convs, self.resblocks_per_stage()):
            x = upsampler(F.leaky_relu(x, LEAKY_SLOPE))
            x = x + source_conv(source)
            x = sum(block(x, block_dtype) for block in blocks) / self.n_kernels
        x = self.output_conv(F.leaky_relu(x))
        return torch.tanh(x)
