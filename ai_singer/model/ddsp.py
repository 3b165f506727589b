"""DDSP decoder: latent frames + F0 -> waveform through a harmonic-plus-noise synthesiser.

A small frame-rate network (the same residual blocks as the NSF-HiFiGAN decoder, but no upsampling) reads the
latent ``z``, the singer vector and log-F0, and predicts per frame the harmonic part's amplitudes and the
magnitudes of ``n_noise_bands`` linearly spaced noise bands. The harmonic amplitudes come in one of two forms:

* ``envelope_bins == 0`` (the first DDSP bases): a loudness and a distribution of it over the ``n_harmonics``
  harmonics of F0 (a softmax over harmonic numbers). A formant then sits at a harmonic number that changes with
  F0, so the network has to learn where each formant falls for every pitch;
* ``envelope_bins > 0``: a spectral envelope, ``envelope_bins`` magnitudes at mel-spaced frequencies from 0 Hz to
  Nyquist, read at each harmonic's frequency (linear interpolation on the mel scale) and scaled by
  ``sqrt(F0 / 200 Hz)`` (the same envelope gives the same loudness at any pitch: harmonics lie F0 apart). The
  envelope is what carries the words and the timbre, and it no longer depends on F0 (as in DDSP-SVC's
  subtractive decoders and in WORLD).

Where the harmonics sound (``voicing``): ``gate`` (the first DDSP bases) silences them wherever the F0 tracker
calls a frame unvoiced; ``learned`` runs them through the interpolated F0 everywhere and leaves their level to
the network, which still reads the voicing flag. With ``gate``, a frame that the conversion's tracker calls
voiced where the training data's tracker did not (the edges of consonants: 1-11 % of the frames of sung phrases
between swift and parselmouth) sounds harmonics the network never learned to shape, and an unvoiced consonant
comes out voiced.

The synthesiser is fixed signal processing (differentiable, no weights):

* harmonic part: sum over harmonics ``k`` of ``a_k(t) * sin(k * phase(t))`` with the amplitudes interpolated
  linearly from frames to samples; harmonics at or above Nyquist, and frames where they do not sound
  (``voicing``), are silent;
* noise part: white noise shaped frame by frame in the STFT domain (``n_fft = 2 * hop``, Hann window,
  overlap-add), for breath and unvoiced consonants.

Why: the spectral envelope (what carries the words and the timbre) is what the network predicts, and the
waveform follows from F0 exactly, so it learns to speak intelligibly in a few thousand CPU steps, where a
HiFi-GAN generator needs hundreds of thousands (the approach of DDSP and DDSP-SVC). The price is a buzzier,
more "vocoded" sound than a well-trained HiFi-GAN.

Shapes: ``z`` [B, I, T], ``f0``/``voiced`` [B, T] (Hz, 0/1), ``g`` [B, gin]; output ``[B, 1, T * hop]``.
LoRA can adapt (Conv1d): ``decoder.input_conv``, ``decoder.speaker_proj``, ``decoder.pitch_proj``,
``decoder.resblocks.N.dilated_convs.M``, ``decoder.resblocks.N.convs.M``, ``decoder.output_conv`` (the same
names as the NSF-HiFiGAN decoder's, so the same adapter target patterns apply).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ai_singer.model.decoder import LEAKY_SLOPE, ResBlock
from ai_singer.model.layers import init_conv_weights, noise_rows, voiced_frames, with_weight_norm

#: harmonics synthesised per pass (bounds the memory of long pieces: [B, group, T*hop] at a time)
HARMONIC_GROUP = 32
#: log-F0 normalisation of the pitch input (Hz): log(f0 / PITCH_REFERENCE_HZ); also the pitch at which a spectral
#: envelope's value is a harmonic's amplitude as it is (``envelope_bins > 0``)
PITCH_REFERENCE_HZ = 200.0
#: where the harmonics sound: ``gate`` (only in frames the tracker calls voiced) or ``learned`` (wherever F0 > 0)
VOICINGS = ("gate", "learned")
#: starting bias of the envelope outputs (``envelope_bins > 0``): a quiet start, ~2e-3 per harmonic
ENVELOPE_START_BIAS = -3.0


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale: ``2595 * log10(1 + hz / 700)``."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def read_envelope(envelope: torch.Tensor, frequencies: torch.Tensor, nyquist: float) -> torch.Tensor:
    """A spectral envelope ``[B, E, T]`` (magnitudes at ``E`` mel-spaced frequencies, 0 Hz to ``nyquist``) read at
    ``frequencies`` ``[B, K, T]`` (Hz; clamped to [0, nyquist]) by linear interpolation between the two nearest
    points on the mel scale -> ``[B, K, T]``."""
    points = envelope.shape[1]
    position = hz_to_mel(frequencies.clamp(0.0, nyquist)) / float(hz_to_mel(torch.tensor(nyquist))) * (points - 1)
    lower = position.floor().clamp(0, points - 2)
    weight = (position - lower).to(envelope.dtype)
    lower = lower.long()
    below = torch.gather(envelope, 1, lower)
    above = torch.gather(envelope, 1, lower + 1)
    return below * (1 - weight) + above * weight


def scaled_sigmoid(x: torch.Tensor, max_value: float = 2.0, exponent: float = math.log(10.0),
                   floor: float = 1e-7) -> torch.Tensor:
    """Positive amplitudes with a wide dynamic range: ``max_value * sigmoid(x) ** exponent + floor``."""
    return max_value * torch.sigmoid(x) ** exponent + floor


class DDSPDecoder(nn.Module):
    """The waveform decoder of ``decoder: ddsp``.

    ``forward(z [B, I, T], f0 [B, T], voiced [B, T], g [B, gin]) -> [B, 1, T*hop]``. ``channels`` is the width
    of the frame-rate network; its residual blocks are applied in order, one per
    ``(kernel, dilations)`` pair.
    """

    def __init__(self, in_channels: int, channels: int, resblock_kernel_sizes: list[int],
                 resblock_dilation_sizes: list[list[int]], gin_channels: int, sample_rate: int, hop_length: int,
                 n_harmonics: int, n_noise_bands: int, envelope_bins: int = 0, voicing: str = "gate"):
        super().__init__()
        if n_harmonics < 1 or n_noise_bands < 2:
            raise ValueError(f"a DDSP decoder needs n_harmonics >= 1 and n_noise_bands >= 2, got "
                             f"{n_harmonics} and {n_noise_bands}")
        if envelope_bins == 1 or envelope_bins < 0:
            raise ValueError(f"envelope_bins must be 0 (a distribution over harmonics) or at least 2, got "
                             f"{envelope_bins}")
        self.sample_rate, self.hop_length = int(sample_rate), int(hop_length)
        self.n_harmonics, self.n_noise_bands = int(n_harmonics), int(n_noise_bands)
        self.envelope_bins = int(envelope_bins)
        if voicing not in VOICINGS:
            raise ValueError(f"voicing must be one of {VOICINGS}, got {voicing!r}")
        self.voicing = voicing
        self.input_conv = with_weight_norm(nn.Conv1d(in_channels, channels, 7, padding=3))
        self.speaker_proj = nn.Conv1d(gin_channels, channels, 1)
        self.pitch_proj = nn.Conv1d(2, channels, 1)  # (log-F0, voiced)
        self.resblocks = nn.ModuleList(ResBlock(channels, kernel, dilations)
                                       for kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes))
        harmonic_outputs = self.envelope_bins if self.envelope_bins else 1 + self.n_harmonics
        output_conv = nn.Conv1d(channels, harmonic_outputs + self.n_noise_bands, 3, padding=1)
        init_conv_weights(output_conv)
        if self.envelope_bins:
            with torch.no_grad():
                output_conv.bias[:self.envelope_bins].fill_(ENVELOPE_START_BIAS)
        self.harmonic_outputs = harmonic_outputs
        self.output_conv = with_weight_norm(output_conv)
        self.register_buffer("noise_window", torch.hann_window(2 * self.hop_length), persistent=False)

    # ------------------------------------------------------------------------------------------ params
    def synth_params(self, z: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, g: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(harmonic amplitudes [B, K, T], 0 above Nyquist and where unvoiced; noise band magnitudes [B, N, T])."""
        is_voiced = voiced_frames(f0, voiced).to(z.dtype)
        log_f0 = torch.log(f0.clamp_min(1.0) / PITCH_REFERENCE_HZ) * is_voiced
        x = self.input_conv(z) + self.speaker_proj(g.unsqueeze(-1)) \
            + self.pitch_proj(torch.stack([log_f0, is_voiced], dim=1))
        for block in self.resblocks:
            x = block(x)
        params = self.output_conv(F.leaky_relu(x, LEAKY_SLOPE))
        harmonics = torch.arange(1, self.n_harmonics + 1, device=f0.device, dtype=f0.dtype).view(1, -1, 1)
        frequencies = harmonics * f0.unsqueeze(1)  # [B, K, T]
        audible = frequencies < self.sample_rate / 2
        if self.envelope_bins:
            envelope = scaled_sigmoid(params[:, :self.envelope_bins])
            level = torch.sqrt(f0.clamp_min(1.0) / PITCH_REFERENCE_HZ).unsqueeze(1).to(params.dtype)
            amplitudes = read_envelope(envelope, frequencies, self.sample_rate / 2) * level * audible.to(params.dtype)
        else:
            loudness = scaled_sigmoid(params[:, :1])
            logits = params[:, 1:1 + self.n_harmonics].masked_fill(~audible, -1e4)
            amplitudes = loudness * torch.softmax(logits, dim=1) * audible.to(logits.dtype)
        amplitudes = amplitudes * self.sounding(f0, voiced).to(amplitudes.dtype).unsqueeze(1)
        noise = scaled_sigmoid(params[:, self.harmonic_outputs:]) * 0.1
        return amplitudes, noise

    def sounding(self, f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
        """Bool [B, T]: the frames where harmonics sound (see ``voicing``)."""
        return voiced_frames(f0, voiced) if self.voicing == "gate" else f0 > 0

    # ------------------------------------------------------------------------------------------ synthesis
    def harmonic_part(self, amplitudes: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
        """amplitudes [B, K, T] -> [B, 1, T*hop]: the amplitude-weighted sum of F0's harmonics.

        F0 is constant within a frame and its phase continuous (accumulated per frame in float64); a frame's
        amplitudes hold at its first sample and move linearly to the next frame's. ``sin(k * phase)`` comes
        from the Chebyshev recurrence ``s_{k+1} = 2 cos(phase) s_k - s_{k-1}`` (a few multiply-adds per
        harmonic instead of a sine), ``HARMONIC_GROUP`` harmonics at a time.
        """
        hop, sr = self.hop_length, self.sample_rate
        batch, n_harmonics, n_frames = amplitudes.shape
        step = f0.to(torch.float64) * self.sounding(f0, voiced).to(torch.float64) / sr  # cycles per sample [B, T]
        frame_start = torch.remainder(torch.cumsum(step * hop, dim=-1) - step * hop, 1.0)
        within = torch.arange(hop, device=f0.device, dtype=amplitudes.dtype)
        phase = 2 * math.pi * (frame_start.to(amplitudes.dtype).unsqueeze(-1)
                               + step.to(amplitudes.dtype).unsqueeze(-1) * within)  # [B, T, hop]
        with torch.no_grad():
            twice_cos = 2 * torch.cos(phase)
            current, previous = torch.sin(phase), torch.zeros_like(phase)
        following = torch.cat([amplitudes[..., 1:], amplitudes[..., -1:]], dim=-1)
        held = amplitudes.new_zeros(batch, n_frames, hop)
        moving = amplitudes.new_zeros(batch, n_frames, hop)
        for first in range(0, n_harmonics, HARMONIC_GROUP):
            count = min(HARMONIC_GROUP, n_harmonics - first)
            with torch.no_grad():
                rows = []
                for _ in range(count):
                    rows.append(current)
                    current, previous = twice_cos * current - previous, current
                sines = torch.stack(rows, dim=1)  # [B, k, T, hop]
            held = held + torch.einsum("bkth,bkt->bth", sines, amplitudes[:, first:first + count])
            moving = moving + torch.einsum("bkth,bkt->bth", sines, following[:, first:first + count])
        ramp = within / hop
        out = held * (1 - ramp) + moving * ramp
        return out.reshape(batch, 1, n_frames * hop)

    def noise_part(self, magnitudes: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None,
                   lengths: torch.Tensor | None = None) -> torch.Tensor:
        """magnitudes [B, N, T] -> [B, 1, T*hop]: white noise filtered frame by frame (STFT, overlap-add).
        ``generator``: one, or one per row with ``lengths`` [B] valid frames (see ``noise_rows``)."""
        hop = self.hop_length
        batch, _, n_frames = magnitudes.shape
        length = n_frames * hop
        noise = noise_rows((batch, length), generator, None if lengths is None else lengths * hop, magnitudes.dtype,
                           magnitudes.device, draw=torch.rand)
        noise = noise * 2 - 1
        n_fft = 2 * hop
        window = self.noise_window.to(magnitudes.dtype)
        spectrum = torch.stft(noise, n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                              return_complex=True)  # [B, n_fft/2+1, T+1]
        bands = F.pad(magnitudes, (0, spectrum.shape[-1] - n_frames), mode="replicate")
        response = F.interpolate(bands.transpose(1, 2), size=spectrum.shape[1], mode="linear",
                                 align_corners=True).transpose(1, 2)  # [B, bins, T+1]
        shaped = torch.istft(spectrum * response, n_fft, hop_length=hop, win_length=n_fft, window=window,
                             center=True, length=length)
        return shaped.unsqueeze(1)

    def forward(self, z: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, g: torch.Tensor,
                generator: torch.Generator | Sequence[torch.Generator] | None = None,
                lengths: torch.Tensor | None = None, window_frames: int = 0,
                block_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``generator`` / ``lengths``: the noise, as :meth:`noise_part` takes them. ``window_frames`` and
        ``block_dtype`` are the NSF-HiFiGAN decoder's options (see its ``forward``), not used here: this decoder's
        network runs at the frame rate and its synthesis is cheap signal processing, so it always runs over the
        whole sequence in ``z``'s dtype."""
        amplitudes, noise = self.synth_params(z, f0, voiced, g)
        wav = self.harmonic_part(amplitudes, f0, voiced) + self.noise_part(noise, generator, lengths)
        return wav.clamp(-1.0, 1.0)
