"""Refining a conversion toward the source's words (``refine`` in conf/infer.yaml).

A conversion samples the prior encoder's latent from the source's content features and decodes it with the
singer's vector; nothing checks that the audio says what the source said, and on real voices the base loses
words there (BENCHMARKS.md "Real voices"). With ``refine.steps`` > 0 each piece's prior sample ``z_p`` is then
moved for that many Adam steps so that a Whisper encoder hears the converted audio as it hears the source:

    loss = L1(whisper(decode(z_p0 + delta)), whisper(source)) + prior_weight * mean((delta / sigma_p) ** 2)
           + timbre_weight * L1(mean_t logmel(decode(z_p0 + delta)), mean_t logmel(decode(z_p0)))
           + speaker_weight * L1(mean_t whisper(decode(z_p0 + delta)), voice_print)

``decode`` is the model's own path (inverted flow, then the decoder, with the singer's vector, the piece's F0
and the same noise every step); ``sigma_p`` is the prior's standard deviation, so the penalty keeps the latent
where the prior puts its mass, and the last term keeps the piece's long-term average spectrum (Whisper's
log-mel averaged over time: a speaker cue) where the plain conversion put it. The last pulls the piece's
time-averaged encoder states toward the singer's voice print (:mod:`ai_singer.voice_print`: the same average over
the singer's training clips), so that the words come from the source and the voice from the singer; a singer
without a voice print is refined without it. Only ``delta`` is optimised: the model, the singer and the F0 stay as
they are.
This is ``loss.content`` of training (:mod:`ai_singer.content_loss`) applied at conversion time to one piece,
with the source in place of a recording of the singer. It costs a forward and a backward pass of the decoder
and of the Whisper encoder per step (fp32, torch engine only): the default 10 steps take 2.5-3 times the plain
conversion's time on a CPU, and halve the words lost on real voices (``conf/infer.yaml``; BENCHMARKS.md "Real
voices", fourteenth and fifteenth rounds).

The refinement's encoder (``refine.encoder``) should not be the model that measures the words afterwards:
a latent tuned against one recogniser's encoder can please that recogniser more than a listener. The
default, ``wheel:tiny.en``, is not the Whisper base that ``tools/eval_real.py`` reads with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ai_singer.errors import UserError

__all__ = ["LatentRefiner", "RefineSettings"]


@dataclass
class RefineSettings:
    """``refine`` of conf/infer.yaml.

    steps:          Adam steps per piece; 0 = off (the conversion is the plain one, bit for bit).
    learning_rate:  Adam's step size on the latent (the prior's units: ~1 is its spread).
    prior_weight:   weight of the penalty mean((delta / sigma_p)^2) that keeps the latent near the prior sample.
    timbre_weight:  weight of the L1 between the time-averaged log-mel of the refined audio and of the plain
                    conversion's (keeps the singer's average spectrum while the frames change).
    encoder:        the Whisper encoder that compares the two: a faster-whisper (CTranslate2, float16/float32)
                    folder, or ``wheel:tiny.en`` / ``wheel:base`` (models shipped in PyPI wheels).
    centre:         compare the two sets of encoder states after subtracting each one's mean over the piece's
                    frames (per channel): what is constant over a piece, much of a speaker's trace in the states,
                    is not pulled toward the source; the words, which change from frame to frame, still are.
    speaker_weight: weight of the L1 between the refined piece's time-averaged encoder states and the singer's
                    voice print (taken with the same encoder); 0 = off.
    """

    steps: int
    learning_rate: float
    prior_weight: float
    timbre_weight: float
    encoder: str
    centre: bool = False
    speaker_weight: float = 0.0

    def __post_init__(self) -> None:
        if int(self.steps) < 0:
            raise UserError(f"refine.steps={self.steps}", "must be >= 0 (0 = off)")
        if not float(self.learning_rate) > 0:
            raise UserError(f"refine.learning_rate={self.learning_rate}", "must be > 0")
        if float(self.prior_weight) < 0:
            raise UserError(f"refine.prior_weight={self.prior_weight}", "must be >= 0")
        if float(self.timbre_weight) < 0:
            raise UserError(f"refine.timbre_weight={self.timbre_weight}", "must be >= 0")
        if float(self.speaker_weight) < 0:
            raise UserError(f"refine.speaker_weight={self.speaker_weight}", "must be >= 0 (0 = off)")
        if not str(self.encoder).strip():
            raise UserError("refine.encoder", "is empty", "give a faster-whisper folder or wheel:tiny.en")

    @property
    def enabled(self) -> bool:
        return int(self.steps) > 0


class LatentRefiner:
    """Runs the refinement of :mod:`ai_singer.refine` for one piece at a time.

    Args:
        settings: the ``refine`` settings (``steps`` > 0).
        sample_rate: the model's output rate (the decoded audio is resampled to Whisper's 16 kHz by FFT).
    """

    def __init__(self, settings: RefineSettings, sample_rate: int):
        self.settings = settings
        self.sample_rate = int(sample_rate)
        self._words = None

    @property
    def words(self):
        """The Whisper encoder with its input chain (:class:`~ai_singer.content_loss.ContentLoss`, the loss that
        training's ``loss.content`` uses), loaded on first use; a folder without a readable ``model.bin`` is a
        UserError naming it."""
        if self._words is None:
            from ai_singer.content_loss import ContentLoss

            self._words = ContentLoss(self.settings.encoder, self.sample_rate)
        return self._words

    def _distance(self, states: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 between encoder states [1, T, width] and [1, T', width] over their common frames (each centred on its
        own mean over those frames when ``centre``)."""
        frames = min(states.shape[1], target.shape[1])
        states, target = states[:, :frames], target[:, :frames]
        if self.settings.centre:
            states = states - states.mean(1, keepdim=True)
            target = target - target.mean(1, keepdim=True)
        return torch.nn.functional.l1_loss(states, target)

    def convert(self, model: torch.nn.Module, content: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor,
                volume: torch.Tensor, g: torch.Tensor, source16k: np.ndarray, generator: torch.Generator,
                noise_scale: float, voice_print: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Convert one piece with its latent refined.

        Args:
            model: the singer's SingerVAE (eval, adapters merged or not; its parameters are not changed).
            content: [1, D, T]; f0, voiced, volume: [1, T] (as :meth:`SingerVAE.infer` takes them); g: [1, gin].
            source16k: the source audio of the same window at 16 kHz, float32 [S].
            generator: the piece's noise generator, as :meth:`SingerVAE.infer` would get it.
            noise_scale: the prior's sampling temperature.
            voice_print: the singer's mean encoder state [width] (:mod:`ai_singer.voice_print`, taken with this
                refinement's encoder) or None; with ``speaker_weight`` > 0 the piece's average is pulled toward it.

        Returns:
            (wav [1, 1, T * hop] in (-1, 1), decoded from the refined latent with the noise the plain conversion
            would use; {"content_l1_before", "content_l1_after"}: the Whisper L1 to the source before the
            first step and after the last; with a voice print also {"speaker_l1_before", "speaker_l1_after"}: the
            L1 between the piece's average state and the voice print).
        """
        from ai_singer.features.whisper_torch import WHISPER_SAMPLE_RATE
        from ai_singer.model.layers import noise_rows

        settings = self.settings
        words = self.words.to(content.device)  # the encoder where the model runs (a GPU: both there)
        with torch.inference_mode(False), torch.enable_grad():  # inputs made under inference_mode: copy them
            content, f0, voiced, volume, g = (t.detach().clone().float() for t in (content, f0, voiced, volume, g))
            n_frames = content.shape[-1]
            mask = torch.ones(1, 1, n_frames, dtype=content.dtype, device=content.device)
            model_f0 = model.model_f0(f0, voiced)
            with torch.no_grad():
                m_p, logs_p = model.prior_encoder(content, model_f0, voiced, volume, mask)
                noise = noise_rows((1, m_p.shape[1], n_frames), generator, None, m_p.dtype, m_p.device)
                z_p0 = m_p + noise * torch.exp(logs_p) * noise_scale
                sigma = torch.exp(logs_p)
                source = torch.from_numpy(np.ascontiguousarray(source16k, dtype=np.float32)).to(content.device)
                target = words.features(source.reshape(1, -1), sample_rate=WHISPER_SAMPLE_RATE)
            decoder_state = generator.get_state()

            def decode(delta: torch.Tensor) -> torch.Tensor:
                z = model.flow((z_p0 + delta) * mask, mask, g, reverse=True) * mask
                return model.decoder(z, model_f0, voiced, g, torch.Generator().set_state(decoder_state))

            speaker = None
            if voice_print is not None and float(settings.speaker_weight) > 0:
                speaker = voice_print.detach().float().to(content.device).reshape(1, -1)
                if speaker.shape[1] != target.shape[2]:
                    raise UserError("the singer's voice print", f"has {speaker.shape[1]} values but the refinement's "
                                    f"encoder {settings.encoder} gives {target.shape[2]}-wide states",
                                    "take the voice print again with this encoder (ai-singer voice-print NAME "
                                    "--data DATASET), or refine.speaker_weight=0")
            delta = torch.zeros_like(z_p0, requires_grad=True)
            optimiser = torch.optim.Adam([delta], lr=float(settings.learning_rate))
            before, average_spectrum, speaker_before = None, None, None
            for _ in range(int(settings.steps)):
                mel = words.log_mel(decode(delta))
                states = words.encoder(mel)
                distance = self._distance(states, target)
                voice = (torch.nn.functional.l1_loss(states.mean(1), speaker) if speaker is not None else None)
                if before is None:  # the first step decodes the plain conversion
                    before, average_spectrum = float(distance.detach()), mel.detach().mean(-1)
                    speaker_before = float(voice.detach()) if voice is not None else None
                loss = distance + float(settings.prior_weight) * ((delta / sigma) ** 2).mean()
                if settings.timbre_weight:
                    loss = loss + float(settings.timbre_weight) * torch.nn.functional.l1_loss(
                        mel.mean(-1), average_spectrum)
                if voice is not None:
                    loss = loss + float(settings.speaker_weight) * voice
                # the gradient of the latent only: the model's parameters get none (and keep no .grad)
                (delta.grad,) = torch.autograd.grad(loss, [delta])
                optimiser.step()
            with torch.no_grad():
                wav = decode(delta)
                states = words.features(wav)
                after = float(self._distance(states, target))
        stats = {"content_l1_before": before if before is not None else after, "content_l1_after": after}
        if speaker is not None:
            speaker_after = float(torch.nn.functional.l1_loss(states.mean(1), speaker))
            stats.update(speaker_l1_before=speaker_before if speaker_before is not None else speaker_after,
                         speaker_l1_after=speaker_after)
        return wav.detach(), stats
