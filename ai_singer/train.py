"""Training: pretrain a multi-speaker base, or fine-tune a small adapter for one singer on the frozen base.

Entry point (Hydra, ``conf/train.yaml``)::

    python -m ai_singer.train mode=pretrain name=base model=small
    python -m ai_singer.train mode=finetune singer=alice base=pretrain/base peft=lora
    torchrun --nproc_per_node=2 -m ai_singer.train ...      # DDP, unchanged

The composed config is checked against ``TrainConfig`` (dataclasses), so a typo is an error. The
loop (``run_training``) saves the training state every ``trainer.save_every`` steps into
``runs/<run>/checkpoints`` and resumes from the newest readable one automatically; at the end it
exports the artifact: ``pretrain/<name>/`` (base) or ``singers/<singer>/`` (adapter).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ai_singer import checkpoint as ckpt
from ai_singer.adapters import adapter_state_dict, prepare_for_finetune
from ai_singer.atomic import remove_stale_temporaries
from ai_singer.bundle import locate_path
from ai_singer.data import Batch, ManifestDataset, ResumableSampler, collate
from ai_singer.features.spectrogram import linear_spectrogram, mel_spectrogram
from ai_singer.losses import (discriminator_adversarial_loss, feature_matching_loss, generator_adversarial_loss,
                              kl_loss, mel_l1_loss, multi_resolution_stft_loss)
from ai_singer.manifest import DatasetStats, read_stats
from ai_singer.model.discriminator import Discriminator
from ai_singer.model.synthesizer import SingerVAE, SingerVAEConfig
from ai_singer.train_settings import (AudioSettings, LossWeights, TrainConfig, TrainerSettings, TrainSetupError,
                                     resolve_discriminator, run_name_of, typed_config, validate_config)

log = logging.getLogger(__name__)

#: batches scored per candidate vector by trainer.singer_init=nearest
SINGER_INIT_BATCHES = 4


# ---------------------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_setting: str) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), start the process group (nccl on
    CUDA, gloo on CPU) and choose the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=world_size,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    from ai_singer.device import DeviceError, pick_device

    try:
        device = pick_device(device_setting, local_rank=info.local_rank, what="trainer.device")
    except DeviceError as error:
        raise TrainSetupError(error.where, error.reason) from error
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


# ------------------------------------------------------------------------------------------- models

class GeneratorForTraining(nn.Module):
    """The SingerVAE plus where its speaker vector comes from: the speaker table (pretrain) or one
    learned singer vector (fine-tune). One module so that DDP sees every trainable parameter."""

    def __init__(self, model: SingerVAE, singer_embedding: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.singer_embedding = None if singer_embedding is None else nn.Parameter(singer_embedding.clone())

    def speaker_vectors(self, speaker_ids: torch.Tensor) -> torch.Tensor:
        """[B] -> [B, gin_channels]."""
        if self.singer_embedding is None:
            return self.model.embed_speaker(speaker_ids)
        return self.singer_embedding.unsqueeze(0).expand(speaker_ids.shape[0], -1)

    def forward(self, batch: Batch, prior_path: bool = False):
        return self.model(batch.content, batch.f0, batch.voiced, batch.volume, batch.spec, batch.lengths,
                          self.speaker_vectors(batch.speaker_ids), prior_path=prior_path)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every parameter that trains (what a training checkpoint stores), detached, on CPU."""
        return {name: p.detach().cpu().clone() for name, p in self.named_parameters() if p.requires_grad}


@dataclass
class Models:
    generator: GeneratorForTraining
    discriminator: nn.Module | None  # None with trainer.discriminator=off
    model_config: SingerVAEConfig
    speakers: list[str]
    base_sha256: str | None = None
    base_path: Path | None = None
    init_from: dict[str, Any] | None = None  # pretrain warm start: which base, what was taken from it
    singer_start: dict[str, Any] | None = None  # fine-tune: where the singer vector started (trainer.singer_init)



def check_framing(stats: DatasetStats, stats_path: Path, sample_rate: int, hop_length: int, content_dim: int,
                  what: str) -> None:
    """The processed dataset must have the framing and content size of the model it trains."""
    if stats.sample_rate != sample_rate:
        raise TrainSetupError(stats_path, f"sample rate mismatch: the processed dataset is {stats.sample_rate} Hz, "
                                          f"{what} is {sample_rate} Hz (preprocess again with audio.sample_rate="
                                          f"{sample_rate}, or train with matching settings)")
    if stats.hop_length != hop_length:
        raise TrainSetupError(stats_path, f"hop length mismatch: the processed dataset uses hop {stats.hop_length}, "
                                          f"{what} uses hop {hop_length}")
    if stats.content_dim != content_dim:
        raise TrainSetupError(stats_path, f"content dim mismatch: the processed dataset has {stats.content_dim}-dim "
                                          f"content features ({stats.content_encoder_name}), {what} expects "
                                          f"{content_dim}")


def build_pretrain_models(cfg: TrainConfig, stats: DatasetStats, stats_path: Path, speakers: list[str]) -> Models:
    """A fresh SingerVAE sized for the dataset (content dim from stats.json, one speaker per singer)."""
    if cfg.model.sample_rate != cfg.audio.sample_rate or cfg.model.hop_length != cfg.audio.hop_length:
        raise TrainSetupError("model", f"the model's framing ({cfg.model.sample_rate} Hz, hop {cfg.model.hop_length}) "
                                       f"differs from audio ({cfg.audio.sample_rate} Hz, hop {cfg.audio.hop_length})")
    model_config = dataclasses.replace(cfg.model, content_dim=stats.content_dim, n_speakers=len(speakers))
    check_framing(stats, stats_path, model_config.sample_rate, model_config.hop_length, model_config.content_dim,
                  "the model")
    generator = GeneratorForTraining(SingerVAE(model_config))
    discriminator = Discriminator.from_config(model_config) if cfg.trainer.discriminator == "train" else None
    init_from = (warm_start(generator.model, discriminator, locate_path(cfg.init_from), speakers)
                 if cfg.init_from else None)
    return Models(generator=generator, discriminator=discriminator, model_config=model_config, speakers=speakers,
                  init_from=init_from)


def _take_matching(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Copy the tensors of ``state`` whose name and shape match ``module``'s; returns (how many were
    copied, the module's names left as initialised)."""
    own = module.state_dict()
    taken = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict(taken, strict=False)
    return len(taken), sorted(set(own) - set(taken))


def _take_speaker_rows(generator: SingerVAE, table: torch.Tensor, base_speakers: list[str],
                       speakers: list[str]) -> int | None:
    """Copy the base's speaker vectors ``table [n_base, gin]`` into ``generator``'s table row by singer name;
    singers the base does not know start at the mean of its vectors. Returns how many rows were copied, or
    None (nothing taken) when the table does not fit (another vector size, or no name per row)."""
    own = generator.speaker_embedding.weight
    if table.ndim != 2 or table.shape[1] != own.shape[1] or table.shape[0] != len(base_speakers):
        return None
    rows = {name: index for index, name in enumerate(base_speakers)}
    with torch.no_grad():
        mean = table.float().mean(dim=0)
        for index, name in enumerate(speakers):
            own[index] = table[rows[name]].float() if name in rows else mean
    return sum(name in rows for name in speakers)


def warm_start(generator: SingerVAE, discriminator: nn.Module | None, base_dir: Path,
               speakers: list[str] | None = None) -> dict[str, Any]:
    """Start a pretraining run from an existing base (``init_from=pretrain/<base>``): every tensor with the
    same name and shape is copied (the decoder, flow, posterior and most of the prior encoder when the
    architecture matches); the rest — typically the content projection for another content encoder — stays
    freshly initialised. The speaker table is taken row by singer name (``speakers``, this run's singers in
    table order): a singer the base knows keeps its vector, a new one starts at the mean of the base's.
    Nothing is silent: the counts and the names left fresh are logged and recorded in the exported base's
    config."""
    has_discriminator = (base_dir / ckpt.BASE_DISCRIMINATOR_FILE).is_file()
    try:
        base = ckpt.load_base(base_dir, with_discriminator=has_discriminator)
    except ckpt.ArtifactError as error:
        raise TrainSetupError("init_from", str(error)) from error
    copied, fresh = _take_matching(generator, base.generator_state)
    record: dict[str, Any] = {"name": base.name, "sha256": base.sha256, "generator_copied": copied,
                              "generator_fresh": fresh}
    table_name = "speaker_embedding.weight"
    if speakers is not None and table_name in fresh and table_name in base.generator_state:
        taken = _take_speaker_rows(generator, base.generator_state[table_name], base.speakers, speakers)
        if taken is not None:  # a table that does not fit stays fresh, and is listed so
            record["speakers_copied"] = taken
            fresh.remove(table_name)
            copied = record["generator_copied"] = copied + 1
    if copied == 0:
        raise TrainSetupError("init_from", f"{base_dir}: no tensor of that base fits this model "
                                           f"(architecture {base.model_config.get('hidden_channels')} hidden vs "
                                           f"{generator.config.hidden_channels}); choose model= like the base's")
    if base.discriminator_state is not None and discriminator is not None:
        d_copied, d_fresh = _take_matching(discriminator, base.discriminator_state)
        record.update(discriminator_copied=d_copied, discriminator_fresh=d_fresh)
    if "speakers_copied" in record:
        log.info("init_from %s: speaker table taken by name: %d of %d singers known to the base, the rest start "
                 "at the mean of its vectors", base_dir, record["speakers_copied"], len(speakers or []))
    log.info("init_from %s: %d generator tensors copied, %d left fresh (%s)%s", base_dir, copied, len(fresh),
             ", ".join(fresh[:8]) + (" ..." if len(fresh) > 8 else ""),
             f"; discriminator {record['discriminator_copied']} copied, {len(record['discriminator_fresh'])} fresh"
             if "discriminator_copied" in record else
             "; no discriminator trains" if discriminator is None else "; the base has no discriminator: it starts fresh")
    return record


def build_finetune_models(cfg: TrainConfig, stats: DatasetStats, stats_path: Path) -> Models:
    """Load the base strictly (its own architecture), freeze it, inject the adapter, and add the
    learned singer vector (initialised to the mean of the base's speaker embeddings)."""
    mode = cfg.trainer.discriminator
    base_path = locate_path(str(cfg.base))  # the user's, else bundled
    discriminator_file = base_path / ckpt.BASE_DISCRIMINATOR_FILE
    if mode != "off" and (base_path / ckpt.BASE_CONFIG_FILE).is_file() and not discriminator_file.is_file():
        raise TrainSetupError(discriminator_file,
                              f"trainer.discriminator={mode} needs the base's discriminator, and this base was "
                              "pretrained without one; fine-tune it with trainer.discriminator=off")
    base = ckpt.load_base(base_path, with_discriminator=mode != "off")
    config = SingerVAEConfig.from_dict(base.model_config)
    check_framing(stats, stats_path, config.sample_rate, config.hop_length, config.content_dim,
                  f"the base {cfg.base}")
    from ai_singer.features.content import encoder_mismatches

    mismatches = encoder_mismatches(base.config.get("content_encoder") or {}, stats.content_encoder)
    if mismatches:
        raise TrainSetupError(stats_path, f"content encoder mismatch with the base {cfg.base} (base vs dataset: "
                                          f"{', '.join(mismatches)}); preprocess this singer with the encoder the "
                                          f"base was trained with (content=<group> / content.layer=... as recorded "
                                          f"in {base.path / ckpt.BASE_CONFIG_FILE})")
    model = SingerVAE(config)
    ckpt.load_state_strict(model, base.generator_state, base.path / ckpt.BASE_GENERATOR_FILE)
    discriminator = None
    if mode != "off":
        discriminator = Discriminator.from_config(config)
        ckpt.load_state_strict(discriminator, base.discriminator_state, base.path / ckpt.BASE_DISCRIMINATOR_FILE)
        discriminator.requires_grad_(mode == "train")
    with torch.no_grad():
        all_ids = torch.arange(config.n_speakers)
        singer_init = model.embed_speaker(all_ids).mean(dim=0)
    prepare_for_finetune(model, cfg.peft)
    # the learned singer vector replaces the speaker table, which gets no gradient (and would stall DDP)
    model.speaker_embedding.requires_grad_(False)
    generator = GeneratorForTraining(model, singer_embedding=singer_init)
    return Models(generator=generator, discriminator=discriminator, model_config=config,
                  speakers=list(base.speakers), base_sha256=base.sha256, base_path=base.path)


# ---------------------------------------------------------------------------------------- the step

@dataclass
class TrainState:
    """Where the run is: optimiser steps done, epoch, and batches of that epoch already consumed."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


@dataclass
class Optimisation:
    generator: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer | None  # None unless the discriminator trains
    generator_schedule: torch.optim.lr_scheduler.LRScheduler
    discriminator_schedule: torch.optim.lr_scheduler.LRScheduler | None


def make_optimisation(generator: nn.Module, discriminator: nn.Module | None, trainer: TrainerSettings
                      ) -> Optimisation:
    """AdamW (betas from the config) + exponential decay per step, for the generator and (when it
    trains) the discriminator. A fine-tuned singer's vector (``generator.singer_embedding``) is a group of
    its own at ``trainer.singer_learning_rate`` without weight decay (null: the generator's rate and decay)."""
    def adamw(module: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise TrainSetupError("peft", "nothing to train: no parameter requires a gradient")
        singer = getattr(module, "singer_embedding", None)
        groups: list[dict[str, Any]] = [{"params": params}]
        if trainer.singer_learning_rate is not None and isinstance(singer, nn.Parameter) and singer.requires_grad:
            groups = [{"params": [p for p in params if p is not singer]},
                      {"params": [singer], "lr": trainer.singer_learning_rate, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=trainer.learning_rate, betas=tuple(trainer.betas), eps=trainer.eps,
                                 weight_decay=trainer.weight_decay)

    opt_g = adamw(generator)
    opt_d = adamw(discriminator) if discriminator is not None and trainer.discriminator == "train" else None
    return Optimisation(opt_g, opt_d, torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=trainer.lr_decay),
                        None if opt_d is None else torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=trainer.lr_decay))


class StepRunner:
    """One optimisation step (discriminator then generator) and the validation pass. With a frozen
    discriminator only the generator steps; with none (``off``) the generator learns from mel + KL alone."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module | None, optimisation: Optimisation,
                 model_config: SingerVAEConfig, audio: AudioSettings, weights: LossWeights, trainer: TrainerSettings,
                 device: torch.device):
        self.generator, self.discriminator, self.opt = generator, discriminator, optimisation
        self.model_config, self.audio, self.weights, self.trainer, self.device = (
            model_config, audio, weights, trainer, device)
        self.autocast_enabled = trainer.precision == "bf16" and device.type == "cuda"
        self.content_loss = None
        if weights.content > 0:  # loss.content: Whisper's encoder, frozen, loaded once before the first step
            from ai_singer.content_loss import ContentLoss

            self.content_loss = ContentLoss(weights.content_encoder, model_config.sample_rate).to(device)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast_enabled)

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, 1, S] or [B, S] float -> log-mel [B, n_mels, S // hop] (fp32)."""
        a, c = self.audio, self.model_config
        return mel_spectrogram(wav.reshape(wav.shape[0], -1).float(), sr=c.sample_rate, n_fft=a.n_fft,
                               hop=c.hop_length, win=a.win_length, n_mels=a.n_mels, fmin=a.mel_fmin, fmax=a.mel_fmax)

    def with_spec(self, batch: Batch) -> Batch:
        """Fill ``batch.spec`` [B, n_fft//2+1, T] (linear magnitude) on the batch's device."""
        c = self.model_config
        batch.spec = linear_spectrogram(batch.wav[:, 0, :], n_fft=c.n_fft, hop=c.hop_length, win=c.win_length)
        return batch

    def clip(self, module: nn.Module) -> torch.Tensor:
        params = [p for p in module.parameters() if p.grad is not None]
        max_norm = self.trainer.grad_clip if self.trainer.grad_clip > 0 else math.inf
        if not params:
            return torch.zeros(())
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def reconstruction_losses(self, out, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The generator's mel L1 of ``out.wav`` against ``real`` [B, 1, S], its KL, and the two weighted as
        in training (``loss.mel``, ``loss.kl``)."""
        loss_mel = mel_l1_loss(self.mel(out.wav), self.mel(real))
        loss_kl = kl_loss(out)
        return loss_mel, loss_kl, self.weights.mel * loss_mel + self.weights.kl * loss_kl.float()

    @torch.no_grad()
    def score_singer_vectors(self, generator: "GeneratorForTraining", batches: list[Batch],
                             candidates: torch.Tensor, seed: int) -> list[float]:
        """Mean training loss (mel L1 and KL, weighted as in training) of ``batches`` with each row of
        ``candidates [N, gin]`` as the singer vector; every candidate sees the same segments and noise
        (``seed``). The generator's singer vector is left as it was."""
        kept = generator.singer_embedding.detach().clone()
        generator.eval()
        scores = []
        try:
            for vector in candidates:
                generator.singer_embedding.copy_(vector)
                torch.manual_seed(seed)
                total = 0.0
                for batch in batches:
                    batch = self.with_spec(batch.to(self.device))
                    out = generator(batch)
                    total += float(self.reconstruction_losses(out, out.slice_audio(batch.wav))[2])
                scores.append(total / max(1, len(batches)))
        finally:
            generator.singer_embedding.copy_(kept)
        return scores

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """Step ``step`` (0-based, the global count): discriminator (LSGAN, when it trains, on every
        ``trainer.discriminator_every``-th step) then generator (mel L1, KL and, with a discriminator, feature
        matching and LSGAN); returns the losses."""
        batch = self.with_spec(batch.to(self.device, non_blocking=True))
        self.generator.train()
        with self.autocast():
            out = self.generator(batch, prior_path=self.weights.prior_mel > 0)
        fake = out.wav
        real = out.slice_audio(batch.wav)
        logged: dict[str, float] = {}

        if self.opt.discriminator is not None and step % self.trainer.discriminator_every == 0:
            self.discriminator.train()
            with self.autocast():
                d_real, d_fake, _, _ = self.discriminator(real, fake.detach())
            loss_disc, _, _ = discriminator_adversarial_loss(d_real, d_fake)
            self.opt.discriminator.zero_grad(set_to_none=True)
            loss_disc.float().backward()
            grad_norm_d = self.clip(self.discriminator)
            self.opt.discriminator.step()
            logged.update({"loss/discriminator": loss_disc.item(), "grad_norm/discriminator": float(grad_norm_d)})

        loss_mel, loss_kl, loss_gen = self.reconstruction_losses(out, real)
        w = self.weights
        if out.wav_prior is not None:  # loss.prior_mel: the conversion path decodes the target too
            loss_prior = mel_l1_loss(self.mel(out.wav_prior), self.mel(real))
            loss_gen = loss_gen + w.prior_mel * loss_prior
            logged["loss/prior_mel"] = loss_prior.item()
        if w.stft > 0:  # loss.stft: short windows for what the mel's 2048-sample frames blur (consonants)
            loss_stft = multi_resolution_stft_loss(fake, real, w.stft_resolutions)
            loss_gen = loss_gen + w.stft * loss_stft
            logged["loss/stft"] = loss_stft.item()
        if self.content_loss is not None:  # loss.content: Whisper's reading of the segment, against the recording's
            loss_content = self.content_loss(fake, real)
            loss_gen = loss_gen + w.content * loss_content
            logged["loss/content"] = loss_content.item()
        if self.discriminator is not None:
            with self.autocast():
                # no discriminator-parameter gradients in the generator's backward (unwrapped: nothing to sync)
                _, d_fake, fmap_real, fmap_fake = unwrap(self.discriminator).for_generator(real, fake)
            loss_fm = feature_matching_loss(fmap_real, fmap_fake)
            loss_adv, _ = generator_adversarial_loss(d_fake)
            loss_gen = loss_gen + w.feature_matching * loss_fm.float() + w.adversarial * loss_adv.float()
            logged.update({"loss/feature_matching": loss_fm.item(), "loss/generator_adversarial": loss_adv.item()})
        self.opt.generator.zero_grad(set_to_none=True)
        loss_gen.backward()
        grad_norm_g = self.clip(self.generator)
        self.opt.generator.step()
        self.opt.generator_schedule.step()
        if self.opt.discriminator_schedule is not None:
            self.opt.discriminator_schedule.step()
            logged["lr/discriminator"] = self.opt.discriminator.param_groups[0]["lr"]
        return {
            "loss/generator_total": loss_gen.item(), "loss/mel": loss_mel.item(), "loss/kl": loss_kl.item(),
            **logged, "grad_norm/generator": float(grad_norm_g),
            "lr/generator": self.opt.generator.param_groups[0]["lr"],
        }

    @torch.no_grad()
    def validate(self, generator: GeneratorForTraining, loader: DataLoader, max_batches: int, n_clips: int,
                 noise_scale: float) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Mean mel L1 of converted validation clips (the prior path, as at inference) and up to
        ``n_clips`` examples ``(target mel [M, T], generated mel [M, T], generated wav [S])``."""
        generator.eval()
        total, count, examples = 0.0, 0, []
        hop = self.model_config.hop_length
        for index, batch in enumerate(loader):
            if index >= max_batches:
                break
            batch = batch.to(self.device)
            with self.autocast():
                wav = generator.model.infer(batch.content, batch.f0, batch.voiced, batch.volume,
                                            generator.speaker_vectors(batch.speaker_ids), lengths=batch.lengths,
                                            noise_scale=noise_scale)
            wav = wav.float()
            mel_fake, mel_real = self.mel(wav), self.mel(batch.wav)
            for i in range(batch.size):
                n = int(batch.lengths[i])
                total += float(nn.functional.l1_loss(mel_fake[i, :, :n], mel_real[i, :, :n]))
                count += 1
                if len(examples) < n_clips:
                    examples.append((mel_real[i, :, :n].cpu(), mel_fake[i, :, :n].cpu(), wav[i, 0, : n * hop].cpu()))
        generator.train()
        return (total / max(count, 1)), examples


# ------------------------------------------------------------------------------------ training state

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_identity(cfg: TrainConfig, models: Models) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed by this run."""
    return {"mode": cfg.mode, "peft_method": cfg.peft.method if cfg.mode == "finetune" else "",
            "base_sha256": models.base_sha256 or "", "singer": cfg.singer or "",
            "discriminator": cfg.trainer.discriminator}


def make_train_state(models: Models, opt: Optimisation, state: TrainState, identity: dict[str, Any]) -> dict:
    """Everything a resumed run needs; the discriminator and its optimiser only when it trains (a frozen
    one is the base's, unchanged)."""
    trains_d = opt.discriminator is not None
    return {
        "identity": identity,
        "generator": models.generator.trainable_state(),
        "discriminator": ({k: v.detach().cpu().clone() for k, v in models.discriminator.state_dict().items()}
                          if trains_d else None),
        "optimizer_generator": opt.generator.state_dict(),
        "optimizer_discriminator": opt.discriminator.state_dict() if trains_d else None,
        "scheduler_generator": opt.generator_schedule.state_dict(),
        "scheduler_discriminator": opt.discriminator_schedule.state_dict() if trains_d else None,
        "step": state.step, "epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch,
        "rng": ckpt.capture_rng_state(), "singer_start": models.singer_start,
    }


def restore_train_state(path: Path, saved: dict, models: Models, opt: Optimisation, identity: dict[str, Any]
                        ) -> TrainState:
    """Load a checkpoint into the models/optimisers after checking it belongs to this run."""
    theirs = saved.get("identity", {})
    if theirs.get("base_sha256", "") != identity["base_sha256"]:
        raise ckpt.AdapterBaseMismatch(path, f"adapter/base hash mismatch: this checkpoint was trained on base "
                                    f"{theirs.get('base_sha256') or '(none: a pretrain run)'}, the base given is "
                                    f"{identity['base_sha256'] or '(none)'}; use the same base or another run_name")
    theirs = {"discriminator": "train", **theirs}  # checkpoints written before the setting existed trained it
    for key in ("mode", "peft_method", "singer", "discriminator"):
        if theirs.get(key, "") != identity[key]:
            raise TrainSetupError(path, f"checkpoint was written with {key}={theirs.get(key)!r}, this run has "
                                        f"{key}={identity[key]!r}; use another run_name to start a new run")
    expected = models.generator.trainable_state()
    parts = [("generator", expected, saved["generator"])]
    if opt.discriminator is not None:
        parts.append(("discriminator", models.discriminator.state_dict(), saved["discriminator"]))
    for part, want, have in parts:
        diff = ckpt.state_dict_diff(want, have)
        if diff:
            raise TrainSetupError(path, f"the checkpoint's {part} weights do not fit this run (another model size, "
                                        f"peft setting or set of singers?); use another run_name to start a new "
                                        f"run:\n{diff}")
    groups, saved_groups = len(opt.generator.param_groups), len(saved["optimizer_generator"]["param_groups"])
    if groups != saved_groups:
        raise TrainSetupError(path, f"the checkpoint's optimiser has {saved_groups} parameter group(s), this run "
                                    f"{groups}: trainer.singer_learning_rate was set or unset since the run began; "
                                    f"resume with the setting it began with, or use another run_name")
    missing, unexpected = models.generator.load_state_dict(saved["generator"], strict=False)
    assert not unexpected and set(missing).isdisjoint(expected)
    opt.generator.load_state_dict(saved["optimizer_generator"])
    opt.generator_schedule.load_state_dict(saved["scheduler_generator"])
    if opt.discriminator is not None:
        models.discriminator.load_state_dict(saved["discriminator"], strict=True)
        opt.discriminator.load_state_dict(saved["optimizer_discriminator"])
        opt.discriminator_schedule.load_state_dict(saved["scheduler_discriminator"])
    ckpt.restore_rng_state(saved["rng"])
    models.singer_start = saved.get("singer_start")
    return TrainState(step=int(saved["step"]), epoch=int(saved["epoch"]),
                      batches_in_epoch=int(saved["batches_in_epoch"]))


# ------------------------------------------------------------------------------------------- export

#: the trainer settings an artifact records as its recipe (``training``); the rest (paths, logging, workers,
#: device) change how a run goes, not what it learns
RECIPE_TRAINER_KEYS = ("batch_size", "max_frames", "learning_rate", "singer_learning_rate", "betas", "eps",
                       "weight_decay", "lr_decay", "grad_clip", "precision", "discriminator", "discriminator_every",
                       "singer_init")


def training_record(cfg: TrainConfig) -> dict[str, Any]:
    """How the artifact was trained, for its config (``training``): the seed, the recipe's trainer settings, the
    loss weights and the processed dataset it read, so that an artifact says how to make it again."""
    trainer = dataclasses.asdict(cfg.trainer)
    return {"seed": int(cfg.seed), "data": str(cfg.paths.processed),
            "trainer": {key: trainer[key] for key in RECIPE_TRAINER_KEYS}, "loss": dataclasses.asdict(cfg.loss)}


def export_artifact(cfg: TrainConfig, models: Models, stats: DatasetStats, steps: int,
                    train_set: ManifestDataset | None = None) -> Path:
    """Write the base (pretrain) or the adapter (finetune) artifact, recording the ``steps`` trained;
    returns its folder. A fine-tuned singer also gets its feature-retrieval index (k-means of the content
    features of ``train_set``) unless ``retrieval_centroids`` is 0, and its voice print (the mean Whisper state
    over the clips of ``train_set``, :mod:`ai_singer.voice_print`) unless ``voice_print`` is null."""
    if cfg.mode == "pretrain":
        config = {"model": models.model_config.to_dict(), "steps": int(steps),
                  "content_encoder": stats.content_encoder,
                  "sample_rate": models.model_config.sample_rate, "hop_length": models.model_config.hop_length,
                  "speakers": list(models.speakers), "training": training_record(cfg)}
        if models.init_from is not None:
            config["init_from"] = models.init_from
        discriminator_state = models.discriminator.state_dict() if models.discriminator is not None else None
        return ckpt.save_base(Path(cfg.paths.pretrain) / cfg.name, models.generator.model.state_dict(),
                              discriminator_state, config, weights_dtype=cfg.export_dtype)
    singer_stats = dataclasses.asdict(stats.singers[cfg.singer]) if cfg.singer in stats.singers else {}
    tensors = adapter_state_dict(models.generator.model)
    tensors["singer_embedding"] = models.generator.singer_embedding.detach()
    centroids = None
    if cfg.retrieval_centroids > 0 and train_set is not None:
        from ai_singer import retrieval

        centroids = retrieval.build_index(train_set.all_content(), cfg.retrieval_centroids, seed=cfg.seed)
    voice_print = None
    if cfg.voice_print and train_set is not None:
        from ai_singer.voice_print import compute_voice_print

        log.info("voice print of %s: %s over %d clips", cfg.singer, cfg.voice_print, len(train_set.records))
        try:
            voice_print = compute_voice_print(cfg.voice_print, train_set.clip_audio())
        except ValueError as error:  # an optional extra: the trained adapter is exported without it
            log.warning("singer %s: no voice print (%s); refine.speaker_weight will not apply to it", cfg.singer,
                        error)
    config = {"singer": cfg.singer, "method": cfg.peft.method, "peft": cfg.peft.to_dict(), "steps": int(steps),
              "retrieval_index": None, "singer_start": models.singer_start,
              "base_sha256": models.base_sha256, "base_name": models.base_path.name if models.base_path else "",
              "stats": singer_stats, "training": training_record(cfg)}
    return ckpt.save_adapter(Path(cfg.paths.singers) / str(cfg.singer), tensors, config, retrieval_index=centroids,
                             voice_print=voice_print)


# --------------------------------------------------------------------------------------------- loop

@dataclass
class TrainResult:
    run_dir: Path
    artifact_dir: Path | None
    step: int
    interrupted: bool = False
    last_losses: dict[str, float] = field(default_factory=dict)
    models: Models | None = None


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) into a request to stop after the current step, so the checkpoint
    saved on the way out is consistent; a second Ctrl-C interrupts at once. Only in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this step and saving a checkpoint (press again to stop at once)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def should_stop(self, info: DistInfo, device: torch.device) -> bool:
        """True when any rank was asked to stop (all ranks agree, so none is left waiting)."""
        if not info.enabled:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def run_training(cfg: TrainConfig, on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train as configured (resuming from the run's newest good checkpoint) and export the artifact.

    ``on_step(step, losses)`` is called after every optimiser step (tests use it to simulate a crash
    or a Ctrl-C). A KeyboardInterrupt saves a checkpoint and returns ``interrupted=True``.
    ``trainer.deterministic`` switches torch to deterministic algorithms for the run only.
    """
    validate_config(cfg)
    cfg = resolve_discriminator(cfg)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        return _train(cfg, on_step)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark


@dataclass
class TrainSession:
    """Everything a run holds between its setup, its step loop and its finish (one per process)."""

    cfg: TrainConfig
    info: Any  # DistributedInfo
    device: torch.device
    stats: DatasetStats
    train_set: ManifestDataset
    models: Any  # the generator (+ discriminator) and their config, from build_*_models
    opt: Any  # make_optimisation's optimisers and schedulers
    run_dir: Path
    identity: dict[str, Any]
    state: TrainState
    resumed: bool
    sampler: ResumableSampler
    loader: DataLoader
    generator: nn.Module  # DDP-wrapped when distributed
    runner: StepRunner
    logger: Any = None  # TrainLogger on the main process
    val_loader: DataLoader | None = None
    last_saved: int = -1

    def save_checkpoint(self) -> None:
        """Training state at the current step (main process only)."""
        if not self.info.is_main:
            return
        ckpt.save_train_state(self.run_dir, self.state.step,
                              make_train_state(self.models, self.opt, self.state, self.identity),
                              keep_last=self.cfg.trainer.keep_last)
        self.last_saved = self.state.step


def _setup(cfg: TrainConfig) -> TrainSession:
    """Devices, data, models, optimisers, the newest good checkpoint (resume), loaders, DDP, logger."""
    trainer = cfg.trainer
    info, device = setup_distributed(trainer.device)
    seed_everything(cfg.seed + info.rank)

    processed = Path(cfg.paths.processed)
    manifest_path, stats_path = processed / "manifest.jsonl", processed / "stats.json"
    singers = [cfg.singer] if cfg.mode == "finetune" else None
    train_set = ManifestDataset(manifest_path, "train", singers=singers, max_frames=trainer.max_frames, seed=cfg.seed)
    stats = read_stats(stats_path)
    train_set.hop_length = stats.hop_length
    if cfg.mode == "pretrain":
        models = build_pretrain_models(cfg, stats, stats_path, train_set.speakers)
    else:
        models = build_finetune_models(cfg, stats, stats_path)
    models.generator.to(device)
    if models.discriminator is not None:
        models.discriminator.to(device)
    opt = make_optimisation(models.generator, models.discriminator, trainer)
    if info.is_main:
        n_trainable = sum(p.numel() for p in models.generator.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in models.generator.parameters())
        log.info("%s on %s (world size %d): %d train clips of %d singer(s); generator %d of %d parameters train; "
                 "discriminator: %s", cfg.mode, device, info.world_size, len(train_set),
                 len({r.singer for r in train_set.records}), n_trainable, n_total, trainer.discriminator)

    run_dir = Path(cfg.paths.runs) / run_name_of(cfg)
    identity = run_identity(cfg, models)
    state = TrainState()
    if info.is_main:
        removed = remove_stale_temporaries(run_dir / ckpt.CHECKPOINTS_DIR)
        if removed:
            log.info("removed %d unfinished checkpoint file(s) of a killed run: %s", len(removed),
                     ", ".join(p.name for p in removed))
    latest = ckpt.load_latest_train_state(run_dir)
    if latest is not None:
        saved_step, saved = latest
        path = ckpt.checkpoint_path(run_dir, saved_step)
        state = restore_train_state(path, saved, models, opt, identity)
        if info.is_main:
            log.info("resumed %s at step %d", path, state.step)
        if info.rank:  # the checkpoint holds rank 0's RNG; the other ranks need their own streams
            torch.manual_seed(cfg.seed + info.rank + 7919 * state.step)

    sampler = ResumableSampler(train_set, num_replicas=info.world_size, rank=info.rank, seed=cfg.seed,
                               with_epoch=True)
    loader = DataLoader(train_set, batch_size=trainer.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=trainer.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=trainer.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed), drop_last=False)

    generator: nn.Module = models.generator
    discriminator: nn.Module | None = models.discriminator
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        generator = DistributedDataParallel(generator, device_ids=ids)
        if opt.discriminator is not None:  # a frozen one has nothing to synchronise
            discriminator = DistributedDataParallel(discriminator, device_ids=ids)
    runner = StepRunner(generator, discriminator, opt, models.model_config, cfg.audio, cfg.loss, trainer, device)
    if cfg.mode == "finetune" and latest is None:
        models.singer_start = start_singer_vector(runner, models, train_set, cfg)
        if info.is_main:
            start = models.singer_start
            log.info("singer vector starts at %s (loss %.4f; the base's mean vector: %.4f)",
                     start["from"], start["loss"], start["mean_loss"])

    session = TrainSession(cfg=cfg, info=info, device=device, stats=stats, train_set=train_set, models=models,
                           opt=opt, run_dir=run_dir, identity=identity, state=state, resumed=latest is not None,
                           sampler=sampler, loader=loader, generator=generator, runner=runner,
                           last_saved=state.step if latest is not None else -1)
    if info.is_main:
        from ai_singer.train_logging import TrainLogger

        run_dir.mkdir(parents=True, exist_ok=True)
        session.logger = TrainLogger(run_dir)
        if trainer.eval_every > 0:
            val_set = ManifestDataset(manifest_path, "val", singers=singers, max_frames=trainer.max_frames * 4,
                                      speakers=train_set.speakers, hop_length=stats.hop_length, seed=cfg.seed)
            if len(val_set):
                session.val_loader = DataLoader(val_set, batch_size=1, shuffle=False, collate_fn=collate,
                                                num_workers=0)
    return session


def start_singer_vector(runner: StepRunner, models: Models, train_set: ManifestDataset, cfg: TrainConfig
                        ) -> dict[str, Any]:
    """Set where a fine-tuned singer's vector starts (``trainer.singer_init``): ``mean``, the mean of the
    base's speaker vectors; ``nearest``, the base speaker whose vector gives the singer's clips the lowest
    training loss (the first :data:`SINGER_INIT_BATCHES` batches of a seeded shuffle), or the mean if that
    scores lower. A real voice is then modelled from a vector the decoder was trained on, not from the mean
    (which lies far from every speaker's vector). Returns the record kept in ``adapter.yaml``."""
    generator = models.generator
    mean = generator.singer_embedding.detach().clone()
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    size = cfg.trainer.batch_size
    batches = [collate([train_set[i] for i in order[start:start + size]])
               for start in range(0, min(len(order), SINGER_INIT_BATCHES * size), size)]
    table = generator.model.speaker_embedding.weight.detach()
    candidates = torch.cat([mean[None], table]) if cfg.trainer.singer_init == "nearest" else mean[None]
    scores = runner.score_singer_vectors(generator, batches, candidates.to(mean.device), seed=cfg.seed)
    best = int(np.argmin(scores))
    with torch.no_grad():
        generator.singer_embedding.copy_(candidates[best])
    chosen = "mean" if best == 0 else f"speaker {models.speakers[best - 1]}"
    return {"method": cfg.trainer.singer_init, "from": chosen, "loss": round(scores[best], 5),
            "mean_loss": round(scores[0], 5), "batches": len(batches)}


def _step_loop(session: TrainSession, on_step: Callable[[int, dict[str, float]], None] | None
               ) -> tuple[bool, dict[str, float]]:
    """Train until ``trainer.max_steps`` (checkpoints, logs, validation on the way). Returns (interrupted,
    the last step's losses); Ctrl-C or a stop request saves a checkpoint and returns interrupted=True."""
    cfg, info, state = session.cfg, session.info, session.state
    trainer = cfg.trainer
    logger, progress = session.logger, None
    if info.is_main and trainer.progress:
        from tqdm import tqdm

        progress = tqdm(total=trainer.max_steps, initial=state.step, desc=run_name_of(cfg), unit="step",
                        dynamic_ncols=True)
    interrupted = False
    losses: dict[str, float] = {}
    tick_time, tick_step = time.perf_counter(), state.step
    with StopRequest() as stop:
        try:
            while state.step < trainer.max_steps:
                session.sampler.set_position(state.epoch, state.batches_in_epoch * trainer.batch_size)
                finished_epoch = True
                for batch in session.loader:
                    losses = session.runner.train_step(batch, state.step)
                    state.step += 1
                    state.batches_in_epoch += 1
                    if logger is not None and state.step % trainer.log_every == 0:
                        now = time.perf_counter()
                        losses["speed/steps_per_s"] = (state.step - tick_step) / max(now - tick_time, 1e-9)
                        tick_time, tick_step = now, state.step
                        logger.scalars(losses, state.step)
                    if progress is not None:
                        progress.update(1)
                        shown = {"mel": losses["loss/mel"], "kl": losses["loss/kl"],
                                 "content": losses.get("loss/content"), "d": losses.get("loss/discriminator")}
                        progress.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None},
                                             refresh=False)
                    if logger is not None and session.val_loader is not None and state.step % trainer.eval_every == 0:
                        evaluate(session.runner, unwrap(session.generator), session.val_loader, logger, trainer,
                                 state.step, session.models.model_config.sample_rate)
                    if state.step % trainer.save_every == 0 or state.step >= trainer.max_steps:
                        session.save_checkpoint()
                        session.last_saved = state.step
                    if on_step is not None:
                        on_step(state.step, losses)
                    if stop.should_stop(info, session.device):
                        raise KeyboardInterrupt
                    if state.step >= trainer.max_steps:
                        finished_epoch = False
                        break
                if finished_epoch:
                    state.epoch += 1
                    state.batches_in_epoch = 0
        except KeyboardInterrupt:
            interrupted = True
            if info.is_main:
                log.warning("interrupted at step %d: saving a checkpoint", state.step)
                if session.last_saved != state.step:
                    session.save_checkpoint()
        finally:
            if progress is not None:
                progress.close()
            if logger is not None:
                logger.close()
    return interrupted, losses


def _finish(session: TrainSession, interrupted: bool, losses: dict[str, float]) -> TrainResult:
    """A finished run saves its last step (if not yet saved) and exports the artifact (main process)."""
    info, state = session.info, session.state
    artifact_dir = None
    if not interrupted and info.is_main:
        if session.last_saved != state.step:
            session.save_checkpoint()
        artifact_dir = export_artifact(session.cfg, session.models, session.stats, state.step, session.train_set)
        log.info("exported %s", artifact_dir)
    if info.enabled:
        dist.barrier()
    return TrainResult(run_dir=session.run_dir, artifact_dir=artifact_dir, step=state.step, interrupted=interrupted,
                       last_losses=losses, models=session.models)


def _train(cfg: TrainConfig, on_step: Callable[[int, dict[str, float]], None] | None) -> TrainResult:
    """Setup (resuming from the newest good checkpoint), the step loop, then the finish (export)."""
    session = _setup(cfg)
    interrupted, losses = _step_loop(session, on_step)
    return _finish(session, interrupted, losses)


def evaluate(runner: StepRunner, generator: GeneratorForTraining, val_loader: DataLoader, logger, trainer:
             TrainerSettings, step: int, sample_rate: int) -> float:
    """Validation mel loss + mel images + audio of a few validation clips, to TensorBoard."""
    val_mel, examples = runner.validate(generator, val_loader, trainer.eval_max_batches, trainer.eval_clips,
                                        trainer.eval_noise_scale)
    logger.scalars({"val/mel": val_mel}, step)
    for i, (mel_real, mel_fake, wav) in enumerate(examples):
        logger.mel_images(f"val_mel/{i}", mel_real, mel_fake, step)
        logger.audio(f"val_audio/{i}", wav, sample_rate, step)
    logger.flush()
    return val_mel


# ---------------------------------------------------------------------------------------- entry point

def run_cli(cfg: Any) -> int:
    """The command's body: check the config, train, print where the artifact went; returns the exit
    code: 0 done, 130 interrupted (Ctrl-C; the checkpoint is saved, so ``train && convert`` stops there).
    An error in the user's data, artifacts or settings is raised (a UserError:
    :func:`ai_singer.conf_dir.run_hydra_app` reports it, exit code 2)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_training(typed_config(cfg))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result.interrupted:
        print(f"train: interrupted at step {result.step}; the checkpoint is in {result.run_dir / 'checkpoints'}. "
              "Run the same command again to resume.")
        return 130
    if result.artifact_dir is not None:
        print(f"train: {result.step} steps done; artifact in {result.artifact_dir}")
    return 0


def main() -> None:
    """``python -m ai_singer.train [overrides]`` (Hydra; also under ``torchrun``)."""
    from ai_singer.conf_dir import run_hydra_app

    run_hydra_app("train", run_cli)


if __name__ == "__main__":
    main()
