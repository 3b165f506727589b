"""The singing-voice VAE (VITS / so-vits-svc 4.1 family): :class:`SingerVAEConfig`, :class:`SingerVAE`,
:class:`SynthOutput`.

Training: the posterior encoder reads the linear spectrogram, the flow maps its latent ``z`` to the
prior space (``z_p``) for the KL against the prior encoder's distribution, and a random segment of
``z`` is decoded to audio for the reconstruction and adversarial losses. Inference: sample the prior
(mean + ``noise_scale`` x std), invert the flow, decode the whole sequence.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ai_singer.model.ddsp import VOICINGS, DDSPDecoder
from ai_singer.model.decoder import SOURCE_STYLES, NSFHiFiGAN
from ai_singer.model.encoders import (F0_COARSE_SCALES, PRIOR_INPUTS, VOLUME_EMBEDDINGS, PosteriorEncoder,
                                      PriorEncoder)
from ai_singer.model.flow import ResidualCouplingFlow
from ai_singer.model.layers import (frame_mask, random_segment_starts, noise_rows, remove_all_weight_norm,
                                    slice_segments, voiced_frames)


#: waveform decoders a SingerVAE can have (``SingerVAEConfig.decoder``)
DECODERS = ("nsf_hifigan", "ddsp")
#: What the model does with F0 in unvoiced frames (``SingerVAEConfig.unvoiced_f0``): ``interpolated`` uses the
#: interpolated F0 it is fed (ai_singer, so-vits-svc); ``zero`` sets it to 0 Hz wherever ``voiced`` is 0 before
#: the pitch classes and the NSF source see it (RVC feeds 0 Hz there: pitch class 1 and no sine).
UNVOICED_F0 = ("interpolated", "zero")
#: keys added to the architecture after bases were saved without them, with the value that reproduces those
#: bases (only for reading older artifacts; conf/model/*.yaml sets every key)
LEGACY_DEFAULTS = {"decoder": "nsf_hifigan", "ddsp_harmonics": 0, "ddsp_noise_bands": 0, "ddsp_envelope_bins": 0,
                   "ddsp_voicing": "gate",
                   "volume_embedding": "log10", "f0_coarse": "log", "nsf_source": "ai_singer",
                   "decoder_output_bias": False, "voiced_embedding": True, "prior_input": "sum",
                   "unvoiced_f0": "interpolated"}


@dataclass
class SingerVAEConfig:
    """Every architecture setting of :class:`SingerVAE` (and of the matching discriminator).

    No defaults: the values come from ``conf/model/<size>.yaml`` (``base`` is the so-vits-svc 4.1 layout) when
    pretraining, and from a base artifact's own ``config.yaml`` when fine-tuning or converting.
    ``hop_length`` must equal ``prod(upsample_rates)``.

    Four options select so-vits-svc's conventions, so that its generators load as this model
    (:mod:`ai_singer.importers.sovits`): ``volume_embedding`` (``log10`` ours, ``linear`` 4.1's
    ``vol_embedding``, ``none`` 4.0/fork: no ``volume_proj``), ``f0_coarse`` (``log`` ours, ``mel`` their
    ``f0_to_coarse``), ``nsf_source`` (``ai_singer`` ours, ``sovits`` their ``SineGen``) and
    ``decoder_output_bias`` (their ``conv_post`` has a bias). so-vits-svc-fork's 44.1 kHz model is
    ``conf/model/base.yaml`` with ``none``/``mel``/``sovits``/``true`` and its speaker count: the
    parameter counts then agree part by part (their F0 decoder, used only by ``auto_predict_f0``, is not
    part of this model).

    Three more select RVC's (:mod:`ai_singer.importers.rvc`): ``voiced_embedding`` (``false``: no voicing
    embedding in the prior), ``prior_input`` (``scaled_leaky_relu``: RVC's TextEncoder scales the summed inputs by
    ``sqrt(hidden_channels)`` and applies LeakyReLU(0.1)) and ``unvoiced_f0`` (``zero``: 0 Hz in unvoiced
    frames, as RVC's pipeline feeds it). ``conf/model/rvc.yaml`` is RVC v2's 40 kHz model.
    """

    # framing (must agree with the processed dataset)
    sample_rate: int
    hop_length: int
    n_fft: int
    win_length: int
    # inputs
    content_dim: int
    n_speakers: int
    gin_channels: int
    f0_bins: int
    f0_min: float
    f0_max: float
    # latent
    inter_channels: int
    hidden_channels: int
    # prior encoder (transformer)
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    attention_window: int
    content_kernel_size: int
    volume_embedding: str  # log10 | linear | none (ai_singer.model.encoders.VOLUME_EMBEDDINGS)
    f0_coarse: str  # log | mel (ai_singer.model.encoders.F0_COARSE_SCALES)
    voiced_embedding: bool  # an embedding of the voiced flag added to the prior's input (RVC has none)
    prior_input: str  # sum | scaled_leaky_relu (ai_singer.model.encoders.PRIOR_INPUTS)
    unvoiced_f0: str  # interpolated | zero (UNVOICED_F0)
    # posterior encoder (WaveNet over the linear spectrogram)
    posterior_layers: int
    posterior_kernel_size: int
    posterior_dilation_rate: int
    # flow
    n_flows: int
    flow_layers: int
    flow_kernel_size: int
    flow_dilation_rate: int
    # waveform decoder: ``nsf_hifigan`` (upsampling convolutions + harmonic source) or ``ddsp`` (a frame-rate
    # network driving a harmonic-plus-noise synthesiser: learns intelligible speech in far fewer steps)
    decoder: str
    ddsp_harmonics: int           # ddsp only: harmonics of F0 synthesised
    ddsp_noise_bands: int         # ddsp only: noise bands shaped per frame
    ddsp_envelope_bins: int       # ddsp only: 0 = harmonic amplitudes as a distribution over harmonic numbers;
    #                               N >= 2 = a spectral envelope of N mel-spaced points read at each harmonic
    ddsp_voicing: str             # ddsp only: gate | learned (ai_singer.model.ddsp.VOICINGS)
    # NSF-HiFiGAN decoder (ddsp uses upsample_initial_channel as its width, the resblocks at frame rate, and
    # needs prod(upsample_rates) = hop_length like every decoder)
    upsample_initial_channel: int
    upsample_rates: list[int]
    upsample_kernel_sizes: list[int]
    resblock_kernel_sizes: list[int]
    resblock_dilation_sizes: list[list[int]]
    harmonic_num: int
    sine_amp: float
    noise_std: float
    nsf_source: str  # ai_singer | sovits (ai_singer.model.decoder.SOURCE_STYLES)
    decoder_output_bias: bool
    # training
    segment_frames: int
    # discriminator (training only; stored here so a fine-tune rebuilds the same one)
    discriminator_periods: list[int]
    discriminator_scales: int
    discriminator_width: float

    def __post_init__(self) -> None:
        self.upsample_rates = [int(r) for r in self.upsample_rates]
        self.upsample_kernel_sizes = [int(k) for k in self.upsample_kernel_sizes]
        self.resblock_kernel_sizes = [int(k) for k in self.resblock_kernel_sizes]
        self.resblock_dilation_sizes = [[int(d) for d in ds] for ds in self.resblock_dilation_sizes]
        self.discriminator_periods = [int(p) for p in self.discriminator_periods]
        problems = []
        if self.decoder not in DECODERS:
            problems.append(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        elif self.decoder == "ddsp" and (self.ddsp_harmonics < 1 or self.ddsp_noise_bands < 2):
            problems.append(f"decoder=ddsp needs ddsp_harmonics >= 1 and ddsp_noise_bands >= 2, got "
                            f"{self.ddsp_harmonics} and {self.ddsp_noise_bands}")
        if self.ddsp_envelope_bins < 0 or self.ddsp_envelope_bins == 1:
            problems.append(f"ddsp_envelope_bins must be 0 (a distribution over harmonics) or at least 2 (points of "
                            f"a spectral envelope), got {self.ddsp_envelope_bins}")
        if math.prod(self.upsample_rates) != self.hop_length:
            problems.append(
                f"hop_length ({self.hop_length}) must equal the product of upsample_rates "
                f"{self.upsample_rates} (= {math.prod(self.upsample_rates)}): the decoder turns one frame into "
                "exactly hop_length samples")
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            problems.append(f"upsample_kernel_sizes {self.upsample_kernel_sizes} needs one kernel per "
                            f"upsample rate {self.upsample_rates}")
        else:
            for rate, kernel in zip(self.upsample_rates, self.upsample_kernel_sizes):
                if kernel < rate or (kernel - rate) % 2:
                    problems.append(f"upsample kernel {kernel} for rate {rate} must be >= the rate and differ "
                                    "from it by an even number (so each stage multiplies the length exactly)")
        if len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            problems.append("resblock_dilation_sizes needs one list of dilations per resblock kernel size")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            problems.append(f"upsample_initial_channel ({self.upsample_initial_channel}) must be divisible by "
                            f"2**{len(self.upsample_rates)} (channels halve at every upsampling stage)")
        if self.hidden_channels % self.n_heads:
            problems.append(f"hidden_channels ({self.hidden_channels}) must be divisible by n_heads ({self.n_heads})")
        if self.inter_channels % 2:
            problems.append(f"inter_channels ({self.inter_channels}) must be even (the flow splits it in halves)")
        if not 0 < self.f0_min < self.f0_max:
            problems.append(f"need 0 < f0_min < f0_max, got f0_min={self.f0_min}, f0_max={self.f0_max}")
        if self.f0_bins < 3:
            problems.append(f"f0_bins must be at least 3 (bin 0 is unvoiced), got {self.f0_bins}")
        if self.win_length > self.n_fft:
            problems.append(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        for name in ("content_dim", "n_speakers", "gin_channels", "segment_frames", "n_layers", "n_flows",
                     "posterior_layers", "flow_layers", "sample_rate", "hidden_channels", "inter_channels",
                     "filter_channels", "n_heads", "upsample_initial_channel", "hop_length", "n_fft", "win_length",
                     "kernel_size", "posterior_kernel_size", "flow_kernel_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name, allowed in (("volume_embedding", VOLUME_EMBEDDINGS), ("f0_coarse", F0_COARSE_SCALES),
                              ("nsf_source", SOURCE_STYLES), ("prior_input", PRIOR_INPUTS),
                              ("unvoiced_f0", UNVOICED_F0),
                              ("ddsp_voicing", VOICINGS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid SingerVAEConfig: " + "; ".join(problems))

    @property
    def spec_channels(self) -> int:
        """Linear-spectrogram bins the posterior encoder reads: ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints, floats, lists) for YAML/JSON artifacts."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SingerVAEConfig":
        """Build from a mapping (a dict or an OmegaConf node); unknown keys are an error."""
        if not isinstance(values, Mapping):
            try:  # an OmegaConf DictConfig
                from omegaconf import OmegaConf
                values = OmegaConf.to_container(values, resolve=True)
            except Exception as error:  # noqa: BLE001 - report what we got
                raise TypeError(f"SingerVAEConfig.from_dict needs a mapping, got {type(values).__name__}") from error
        else:
            values = _plain(values)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {**LEGACY_DEFAULTS, **values}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SingerVAEConfig keys {unknown}; valid keys are {sorted(known)}")
        missing = sorted(known - set(values))
        if missing:
            raise ValueError(f"SingerVAEConfig keys {missing} are missing (conf/model/*.yaml and base artifacts "
                             "give every key)")
        return cls(**values)


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve an OmegaConf mapping to plain containers; leave a dict as is."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return dict(values)
    if isinstance(values, DictConfig):
        return OmegaConf.to_container(values, resolve=True)  # type: ignore[return-value]
    return dict(values)


@dataclass
class SynthOutput:
    """What :meth:`SingerVAE.forward` returns. ``B`` batch, ``T`` frames, ``I`` inter channels,
    ``S = segment_frames``, ``H`` hop.

    wav: [B, 1, S*H] decoded segment; start_frames: long [B] first frame of each item's segment;
    segment_frames: S; z: [B, I, T] posterior sample; z_p: [B, I, T] flow(z); m_p, logs_p: [B, I, T]
    prior mean / log-std; m_q, logs_q: [B, I, T] posterior mean / log-std; mask: [B, 1, T] float;
    wav_prior: [B, 1, S*H] the same segment decoded from the prior mean through the inverted flow (the
    conversion path at noise_scale 0), only when the forward pass was asked for it, else None.
    """

    wav: torch.Tensor
    start_frames: torch.Tensor
    segment_frames: int
    z: torch.Tensor
    z_p: torch.Tensor
    m_p: torch.Tensor
    logs_p: torch.Tensor
    m_q: torch.Tensor
    logs_q: torch.Tensor
    mask: torch.Tensor
    wav_prior: torch.Tensor | None = None

    @property
    def hop_length(self) -> int:
        return self.wav.shape[-1] // self.segment_frames

    def slice_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The segment of a frame-rate tensor ``[B, ..., T] -> [B, ..., S]`` (zero-padded past the end)."""
        return slice_segments(x, self.start_frames, self.segment_frames)

    def slice_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """The target audio matching :attr:`wav`: ``wav`` [B, 1, T*H] -> [B, 1, S*H] (zero-padded past
        the end)."""
        hop = self.hop_length
        return slice_segments(wav, self.start_frames * hop, self.segment_frames * hop)


class SingerVAE(nn.Module):
    r"""Singing-voice conversion generator: prior encoder, posterior encoder, flow, NSF-HiFiGAN decoder and
    a speaker embedding table.

    ``SingerVAE(config)`` takes a :class:`SingerVAEConfig` (or a mapping of its fields).

    Inference uses ``prior_encoder``, ``flow``, ``decoder`` (and ``speaker_embedding`` unless a singer
    vector is fed as ``g``); ``posterior_encoder`` is training-only.

    LoRA targets (peft ``target_modules``; every name below is an ``nn.Conv1d`` unless noted). Remove
    weight norm first (:meth:`remove_weight_norm`): peft's merge loses the adapter on weight-normed convs.

    * prior attention: ``prior_encoder.encoder.layers.N.attention.{query_proj,key_proj,value_proj,out_proj}``
      (regex ``r".*attention\.(query|key|value|out)_proj"``)
    * prior feed-forward: ``prior_encoder.encoder.layers.N.feed_forward.{conv_in,conv_out}``
    * prior input/output: ``prior_encoder.content_proj``, ``prior_encoder.volume_proj`` (unless
      ``volume_embedding`` is ``none``),
      ``prior_encoder.out_proj``
    * flow couplings: ``flow.couplings.N.{input_proj,out_proj}``,
      ``flow.couplings.N.wavenet.{dilated_convs.M,res_skip_convs.M,speaker_proj}``
      (regex ``r"flow\..*(dilated_convs\.\d+|res_skip_convs\.\d+|speaker_proj)"``). ``out_proj`` starts
      at zero, which is fine for LoRA (only B starts at zero).
    * decoder: ``decoder.input_conv``, ``decoder.speaker_proj``, ``decoder.source_convs.N``,
      ``decoder.resblocks.N.{dilated_convs,convs}.M``, ``decoder.output_conv``
      (regex ``r"decoder\.(input_conv|speaker_proj|source_convs\.\d+|resblocks\.\d+\.(dilated_convs|convs)\.\d+|output_conv)"``);
      ``decoder.source.merge`` is an ``nn.Linear``. ``decoder.upsamplers.N`` are ConvTranspose1d (peft cannot
      adapt them: train them fully, freeze them, or rely on the adapted convs around them).
    * embeddings (``nn.Embedding``, usually left frozen): ``speaker_embedding``,
      ``prior_encoder.f0_embedding``, ``prior_encoder.voiced_embedding`` (unless ``voiced_embedding`` is false).

    A compact set that adapts every block of the inference path:
    ``r"(prior_encoder\..*(query_proj|key_proj|value_proj|out_proj|conv_in|conv_out)|flow\..*(dilated_convs|res_skip_convs)\.\d+|decoder\.(resblocks\.\d+\.(dilated_convs|convs)\.\d+|source_convs\.\d+|input_conv))"``.
    """

    def __init__(self, config: SingerVAEConfig | Mapping[str, Any]):
        super().__init__()
        if not isinstance(config, SingerVAEConfig):
            config = SingerVAEConfig.from_dict(config)
        self.config = config
        c = config
        self.speaker_embedding = nn.Embedding(c.n_speakers, c.gin_channels)
        self.prior_encoder = PriorEncoder(
            c.content_dim, c.hidden_channels, c.inter_channels, c.filter_channels, c.n_heads, c.n_layers,
            c.kernel_size, c.p_dropout, c.attention_window, c.content_kernel_size, c.f0_bins, c.f0_min, c.f0_max,
            c.volume_embedding, c.f0_coarse, c.voiced_embedding, c.prior_input)
        self.posterior_encoder = PosteriorEncoder(
            c.spec_channels, c.inter_channels, c.hidden_channels, c.posterior_kernel_size,
            c.posterior_dilation_rate, c.posterior_layers, c.gin_channels)
        self.flow = ResidualCouplingFlow(
            c.inter_channels, c.hidden_channels, c.flow_kernel_size, c.flow_dilation_rate, c.flow_layers,
            c.n_flows, c.gin_channels)
        if c.decoder == "ddsp":
            self.decoder = DDSPDecoder(
                c.inter_channels, c.upsample_initial_channel, c.resblock_kernel_sizes, c.resblock_dilation_sizes,
                c.gin_channels, c.sample_rate, c.hop_length, c.ddsp_harmonics, c.ddsp_noise_bands,
                c.ddsp_envelope_bins, c.ddsp_voicing)
        else:
            self.decoder = NSFHiFiGAN(
                c.inter_channels, c.upsample_initial_channel, c.upsample_rates, c.upsample_kernel_sizes,
                c.resblock_kernel_sizes, c.resblock_dilation_sizes, c.gin_channels, c.sample_rate, c.harmonic_num,
                c.sine_amp, c.noise_std, c.nsf_source, c.decoder_output_bias)

    # ----------------------------------------------------------------------------------------------
    def embed_speaker(self, ids: torch.Tensor) -> torch.Tensor:
        """Speaker ids long [B] -> speaker vectors ``g`` [B, gin_channels]."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.n_speakers):
            raise ValueError(f"speaker ids must lie in [0, {self.config.n_speakers - 1}], got "
                             f"{ids.min().item()}..{ids.max().item()}")
        return self.speaker_embedding(ids)

    def _check_inputs(self, content: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, volume: torch.Tensor,
                      g: torch.Tensor) -> None:
        batch, dim, n_frames = content.shape
        if dim != self.config.content_dim:
            raise ValueError(f"content has {dim} channels but the model expects content_dim="
                             f"{self.config.content_dim} (content must be [B, D, T])")
        for name, tensor in (("f0", f0), ("voiced", voiced), ("volume", volume)):
            if tensor.shape != (batch, n_frames):
                raise ValueError(f"{name} must have shape [B, T] = [{batch}, {n_frames}] like content "
                                 f"[B, D, T], got {tuple(tensor.shape)}")
        if g.shape != (batch, self.config.gin_channels):
            raise ValueError(f"g must have shape [B, gin_channels] = [{batch}, {self.config.gin_channels}], "
                             f"got {tuple(g.shape)}")

    def model_f0(self, f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
        """The F0 [B, T] the prior encoder and decoder see: as fed, or 0 Hz in unvoiced frames with
        ``unvoiced_f0: zero``."""
        if self.config.unvoiced_f0 == "zero":
            return torch.where(voiced_frames(f0, voiced), f0, torch.zeros_like(f0))
        return f0

    def forward(self, content: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, volume: torch.Tensor,
                spec: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor,
                generator: torch.Generator | None = None, prior_path: bool = False) -> SynthOutput:
        """Training pass.

        content [B, D, T], f0 [B, T] Hz (gaps interpolated), voiced [B, T] 0/1, volume [B, T] linear RMS,
        spec [B, n_fft//2+1, T] linear magnitude, lengths [B] valid frames, g [B, gin]. ``generator``
        (CPU) makes the segment choice and source phases reproducible. ``prior_path``: also decode the
        segment from the prior mean (``SynthOutput.wav_prior``; ``loss.prior_mel``), a second decoder pass.
        """
        self._check_inputs(content, f0, voiced, volume, g)
        batch, _, n_frames = content.shape
        if spec.shape != (batch, self.config.spec_channels, n_frames):
            raise ValueError(f"spec must have shape [B, n_fft//2+1, T] = [{batch}, {self.config.spec_channels}, "
                             f"{n_frames}], got {tuple(spec.shape)}")
        mask = frame_mask(lengths, batch, n_frames, content.device, content.dtype)
        f0 = self.model_f0(f0, voiced)
        m_p, logs_p = self.prior_encoder(content, f0, voiced, volume, mask)
        z, m_q, logs_q = self.posterior_encoder(spec, mask, g)
        z_p = self.flow(z, mask, g)

        segment = self.config.segment_frames
        starts = random_segment_starts(lengths, segment, generator).to(content.device)
        f0_segment, voiced_segment = slice_segments(f0, starts, segment), slice_segments(voiced, starts, segment)
        wav = self.decoder(slice_segments(z, starts, segment), f0_segment, voiced_segment, g, generator)
        wav_prior = None
        if prior_path:
            z_prior = self.latent_from_prior(m_p, logs_p, torch.zeros_like(m_p), 0.0, mask, g)
            wav_prior = self.decoder(slice_segments(z_prior, starts, segment), f0_segment, voiced_segment, g,
                                     generator)
        return SynthOutput(wav=wav, start_frames=starts, segment_frames=segment, z=z, z_p=z_p, m_p=m_p,
                           logs_p=logs_p, m_q=m_q, logs_q=logs_q, mask=mask, wav_prior=wav_prior)

    def infer(self, content: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, volume: torch.Tensor,
              g: torch.Tensor, lengths: torch.Tensor | None = None, *, noise_scale: float,
              generator: torch.Generator | Sequence[torch.Generator] | None = None,
              decode_window_frames: int = 0, decoder_block_dtype: torch.dtype | None = None,
              prior_frames_multiple: int = 1,
              decoder_stages: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Convert: content [B, D, T], f0 [B, T] Hz, voiced [B, T], volume [B, T], g [B, gin] ->
        wav [B, 1, T*hop_length] in (-1, 1). ``noise_scale``: the prior's sampling temperature, from the caller's
        settings (conversion: ``noise_scale`` of ``conf/infer.yaml``; validation: ``trainer.eval_noise_scale``). Frames past ``lengths`` are zeroed in the latent (their audio is
        not meaningful). Call under ``torch.inference_mode()`` and ``eval()``; the NSF source's sines are
        exactly zero where ``voiced`` is 0 (only low-level noise excites those samples).

        ``generator``: one CPU generator, or one per row (each row's noise is then drawn for its own
        ``lengths`` only, so a row converts the same alone or in a batch, except within the decoder's
        receptive field of its padded end). ``decode_window_frames`` > 0 decodes in windows of that many
        frames (the same audio, cache-sized tensors: see :meth:`NSFHiFiGAN.forward`); 0 at once.
        ``decoder_block_dtype``: the NSF-HiFiGAN decoder's residual-block convolutions in this dtype (e.g.
        ``torch.bfloat16``), the rest in ``content``'s (see :meth:`NSFHiFiGAN.forward`); None: all in ``content``'s.
        ``decoder_stages``: the NSF-HiFiGAN decoder's upsampling stages prepared for inference (a
        :class:`~ai_singer.model.channels_last.ChannelsLastUpsampling` of this model's decoder, with its own block
        dtype), run instead of the decoder's own; None: the decoder's own.
        ``prior_frames_multiple`` > 1: the prior encoder and the flow run over the frames zero-padded up to a
        multiple of it (masked, so the latent is the same up to float rounding, and so is the noise), the decoder
        over the ``T`` frames: fewer distinct tensor lengths over many pieces, whose prepared convolution kernels
        a CPU's conv library then reuses instead of rebuilding.
        """
        self._check_inputs(content, f0, voiced, volume, g)
        batch, _, n_frames = content.shape
        f0 = self.model_f0(f0, voiced)
        padding = -n_frames % max(1, prior_frames_multiple)
        if padding and lengths is None:
            lengths = torch.full((batch,), n_frames, dtype=torch.long, device=content.device)
        padded = [nn.functional.pad(x, (0, padding)) if padding else x for x in (content, f0, voiced, volume)]
        mask = frame_mask(lengths, batch, n_frames + padding, content.device, content.dtype)
        m_p, logs_p = self.prior_encoder(*padded, mask)
        noise = noise_rows((batch, m_p.shape[1], n_frames), generator, lengths, m_p.dtype, m_p.device)
        noise = nn.functional.pad(noise, (0, padding)) if padding else noise
        z = self.latent_from_prior(m_p, logs_p, noise, noise_scale, mask, g)[..., :n_frames]
        stages = {} if decoder_stages is None else {"stages": decoder_stages}
        return self.decoder(z, f0, voiced, g, generator, lengths=lengths, window_frames=decode_window_frames,
                            block_dtype=decoder_block_dtype, **stages)

    def latent_from_prior(self, m_p: torch.Tensor, logs_p: torch.Tensor, noise: torch.Tensor,
                          noise_scale: float | torch.Tensor, mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The decoder's latent in :meth:`infer`: the prior's mean ``m_p`` + ``noise`` (standard normal) x its std
        ``exp(logs_p)`` x ``noise_scale``, through the inverted flow, masked. All [B, I, T]; ``mask`` [B, 1, T],
        ``g`` [B, gin] -> z [B, I, T]."""
        z_p = (m_p + noise * torch.exp(logs_p) * noise_scale) * mask
        return self.flow(z_p, mask, g, reverse=True) * mask

    # ----------------------------------------------------------------------------------------------
    def remove_weight_norm(self) -> int:
        """Bake weight norm into plain weights everywhere (in place, for inference or before LoRA).
        Returns the number of modules changed; outputs are unchanged up to float rounding."""
        return remove_all_weight_norm(self)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: speaker_embedding, prior_encoder, posterior_encoder, flow, decoder, and
        ``inference`` (prior encoder + flow + decoder) and ``total``."""
        counts = {name: sum(p.numel() for p in module.parameters()) for name, module in self.named_children()}
        counts["inference"] = counts["prior_encoder"] + counts["flow"] + counts["decoder"]
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def inference_parameter_count(self) -> int:
        """Parameters used at inference: prior encoder + flow + decoder (not the posterior encoder nor the
        speaker table)."""
        return self.parameter_counts()["inference"]
