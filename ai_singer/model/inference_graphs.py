"""A singer's conversion graph as two traceable modules with the noise as inputs (what ``ai-singer export`` turns
into ONNX): :class:`PriorGraph` (prior encoder, flow, NSF source, the decoder's input) and :class:`DecoderGraph`
(the decoder's upsampling stages over one window). Together they compute :meth:`SingerVAE.infer` for one piece
(batch 1, every frame valid), given the noise it would draw: ``prior_noise`` [1, I, T] and ``source_noise``
[1, K, T*hop] (standard normal; K = the source's harmonics). Split in two so that the decoder can run over windows
with its receptive field as context (:func:`~ai_singer.model.decoder.decode_windows`), as the torch path does.

Only the NSF-HiFiGAN decoder is supported (the DDSP decoder's noise is shaped by an STFT).
"""
from __future__ import annotations

import torch
from torch import nn

from ai_singer.model.decoder import NSFHiFiGAN

#: names of the graphs' inputs and outputs, in order
PRIOR_INPUTS = ("content", "f0", "voiced", "volume", "prior_noise", "source_noise", "noise_scale")
PRIOR_OUTPUTS = ("frames", "source")
DECODER_INPUTS = ("frames", "source")
DECODER_OUTPUTS = ("audio",)


def check_exportable(model: nn.Module) -> None:
    """ValueError unless ``model`` (a SingerVAE) has the decoder these graphs cover."""
    if not isinstance(model.decoder, NSFHiFiGAN):
        raise ValueError(f"only the nsf_hifigan decoder can be exported, this model's is {model.config.decoder}")


class PriorGraph(nn.Module):
    """``content`` [1, D, T], ``f0``/``voiced``/``volume`` [1, T], ``prior_noise`` [1, I, T], ``source_noise``
    [1, K, T*hop], ``noise_scale`` [] -> (``frames`` [1, C, T]: the decoder's input, ``source`` [1, 1, T*hop]: its
    excitation). ``model``: a SingerVAE in eval mode (adapter merged); ``g`` [1, gin]: the singer vector, a constant
    of the graph."""

    def __init__(self, model: nn.Module, g: torch.Tensor):
        super().__init__()
        check_exportable(model)
        self.model = model
        self.register_buffer("g", g.reshape(1, -1).float())

    def forward(self, content: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, volume: torch.Tensor,
                prior_noise: torch.Tensor, source_noise: torch.Tensor,
                noise_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model, decoder = self.model, self.model.decoder
        mask = torch.ones_like(f0).unsqueeze(1)
        m_p, logs_p = model.prior_encoder(content, f0, voiced, volume, mask)
        z = model.latent_from_prior(m_p, logs_p, prior_noise, noise_scale, mask, self.g)
        sines, voiced_samples = decoder.source.sine_waves(f0, voiced)
        return decoder.frame_input(z, self.g), decoder.source.excite(sines, voiced_samples, source_noise)


class DecoderGraph(nn.Module):
    """``frames`` [1, C, W], ``source`` [1, 1, W*hop] -> ``audio`` [1, 1, W*hop] (the upsampling stages of the
    decoder of ``model``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        check_exportable(model)
        self.decoder = model.decoder

    def forward(self, frames: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.decoder.upsample(frames, source)
