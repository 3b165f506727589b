"""Training settings: the typed dataclasses of ``conf/train.yaml`` and the one builder that checks them.

:func:`typed_config` turns a composed (Dict)Config into a :class:`TrainConfig` (an unknown key or a value of the
wrong type is an error naming it) and :func:`validate_config` checks every value before any heavy work starts;
a mistake raises :class:`TrainSetupError` naming the setting (or file) and the reason. No field has a default of
its own: the defaults live in ``conf/`` only. :mod:`ai_singer.train` runs what these describe.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from ai_singer import checkpoint as ckpt
from ai_singer.adapters import PeftSettings
from ai_singer.bundle import locate_path
from ai_singer.errors import UserError
from ai_singer.model.synthesizer import SingerVAEConfig

MODES = ("pretrain", "finetune")
PRECISIONS = ("fp32", "bf16")
#: ``trainer.discriminator``: what fine-tuning does with the base's discriminator (pretrain: train or off);
#: ``auto`` is ``train`` when the base has one (and for pretraining), ``off`` when it was pretrained without.
DISCRIMINATOR_MODES = ("auto", "train", "frozen", "off")
#: fine-tuning: where the singer vector starts (see ai_singer.train.start_singer_vector)
SINGER_INITS = ("nearest", "mean")


# ------------------------------------------------------------------------------------------ settings

@dataclass
class PathsSettings:
    """``conf/paths`` (every value lives there)."""

    raw: str
    processed: str
    pretrain: str
    singers: str
    runs: str
    output: str


@dataclass
class AudioSettings:
    """``conf/audio``: the framing and the mel spectrogram of the losses."""

    sample_rate: int
    hop_length: int
    n_fft: int
    win_length: int
    n_mels: int
    mel_fmin: float
    mel_fmax: Optional[float]


@dataclass
class TrainerSettings:
    """``conf/trainer`` (the comments in ``conf/trainer/default.yaml`` explain each field)."""

    max_steps: int
    batch_size: int
    max_frames: int
    num_workers: int
    learning_rate: float
    betas: list[float]
    eps: float
    weight_decay: float
    lr_decay: float
    grad_clip: float
    precision: str
    device: str
    save_every: int
    keep_last: int
    log_every: int
    eval_every: int
    eval_clips: int
    eval_max_batches: int
    eval_noise_scale: float
    deterministic: bool
    progress: bool
    discriminator: str
    discriminator_every: int
    singer_init: str
    singer_learning_rate: Optional[float]


@dataclass
class LossWeights:
    """``conf/loss``."""

    mel: float
    kl: float
    feature_matching: float
    adversarial: float
    prior_mel: float
    stft: float
    stft_resolutions: list[list[int]]
    content: float
    content_encoder: str


@dataclass
class TrainConfig:
    """The whole composed ``conf/train.yaml``. No field has a default: a value missing from ``conf/`` is an
    error naming it (:func:`typed_config`), never a silent fallback."""

    paths: PathsSettings
    audio: AudioSettings
    model: SingerVAEConfig
    peft: PeftSettings
    trainer: TrainerSettings
    loss: LossWeights
    mode: str
    name: str
    singer: Optional[str]
    base: Optional[str]
    run_name: Optional[str]
    seed: int
    export_dtype: str  # pretrain: dtype of the base artifact's tensors (float32 | float16 | bfloat16)
    retrieval_centroids: int  # finetune: size of the singer's feature-retrieval index (0 = none)
    voice_print: Optional[str]  # finetune: the Whisper encoder of the singer's voice print (null = none)
    init_from: Optional[str]  # pretrain: a base folder whose same-named, same-shaped tensors start the run


class TrainSetupError(UserError):
    """A run that cannot start: ``str()`` names the file or setting and the reason."""


def typed_config(cfg: Any) -> TrainConfig:
    """Check a composed (Dict)Config against ``TrainConfig`` and return the dataclasses.

    Unknown keys (typos) and values of the wrong type raise ``TrainSetupError`` naming the key.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        message = str(error.msg if hasattr(error, "msg") else error).strip().splitlines()
        raise TrainSetupError(f"train config ({key})", message[0] if message else type(error).__name__) from None
    except (ValueError, TypeError) as error:  # a settings class refused a value (peft.r=-1, model.hidden_channels=-3)
        raise TrainSetupError("train config", str(error)) from None
    assert isinstance(typed, TrainConfig)
    validate_config(typed)
    return typed


def validate_config(cfg: TrainConfig) -> None:
    """Values that parse but make no sense are errors naming the setting."""
    if cfg.mode not in MODES:
        raise TrainSetupError("mode", f"must be one of {MODES}, not {cfg.mode!r}")
    if cfg.mode == "finetune":
        if not cfg.singer:
            raise TrainSetupError("singer", "mode=finetune needs singer=<name>")
        if not cfg.base:
            raise TrainSetupError("base", "mode=finetune needs base=<folder of a pretrained base, e.g. pretrain/base>")
    if cfg.retrieval_centroids < 0:
        raise TrainSetupError("retrieval_centroids", f"must be >= 0 (0 = no index), got {cfg.retrieval_centroids}")
    if cfg.export_dtype not in ckpt.WEIGHTS_DTYPES:
        raise TrainSetupError("export_dtype", f"must be one of {tuple(ckpt.WEIGHTS_DTYPES)}, not {cfg.export_dtype!r}")
    if cfg.trainer.discriminator not in DISCRIMINATOR_MODES:
        raise TrainSetupError("trainer.discriminator", f"must be one of {DISCRIMINATOR_MODES}, "
                                                       f"not {cfg.trainer.discriminator!r}")
    if cfg.init_from and cfg.mode != "pretrain":
        raise TrainSetupError("init_from", "is for mode=pretrain (a fine-tuned singer starts from base=...)")
    if cfg.trainer.singer_init not in SINGER_INITS:
        raise TrainSetupError("trainer.singer_init", f"must be one of {SINGER_INITS}, not {cfg.trainer.singer_init!r}")
    if cfg.trainer.singer_learning_rate is not None and not cfg.trainer.singer_learning_rate >= 0:
        raise TrainSetupError("trainer.singer_learning_rate", f"must be >= 0 or null (= trainer.learning_rate), not "
                                                              f"{cfg.trainer.singer_learning_rate}")
    if cfg.trainer.discriminator_every < 1:
        raise TrainSetupError("trainer.discriminator_every", f"must be >= 1 (1 = every step), not "
                                                             f"{cfg.trainer.discriminator_every}")
    if cfg.mode == "pretrain" and cfg.trainer.discriminator == "frozen":
        raise TrainSetupError("trainer.discriminator", "'frozen' is for fine-tuning: a base is pretrained with its "
                                                       "discriminator (train) or without one (off: mel + KL only)")
    if cfg.trainer.precision not in PRECISIONS:
        raise TrainSetupError("trainer.precision", f"must be one of {PRECISIONS}, not {cfg.trainer.precision!r}")
    for name in ("max_steps", "batch_size", "max_frames", "save_every", "keep_last", "log_every"):
        if getattr(cfg.trainer, name) < 1:
            raise TrainSetupError(f"trainer.{name}", f"must be >= 1, got {getattr(cfg.trainer, name)}")
    if len(cfg.trainer.betas) != 2:
        raise TrainSetupError("trainer.betas", f"needs two values, got {cfg.trainer.betas}")
    for name in ("mel", "kl", "feature_matching", "adversarial", "prior_mel", "stft", "content"):
        if getattr(cfg.loss, name) < 0:
            raise TrainSetupError(f"loss.{name}", f"must be >= 0 (0 = off), got {getattr(cfg.loss, name)}")
    if cfg.loss.stft > 0:
        pairs = cfg.loss.stft_resolutions
        if not pairs or any(len(pair) != 2 or not 0 < pair[1] <= pair[0] for pair in pairs):
            raise TrainSetupError("loss.stft_resolutions", f"needs [n_fft, hop] pairs with 0 < hop <= n_fft, got "
                                                           f"{cfg.loss.stft_resolutions}")
    if cfg.loss.content > 0:  # the Whisper folder must be there before any data is read
        _require_whisper("loss.content_encoder", cfg.loss.content_encoder, "wheel:base")
    if cfg.mode == "finetune" and cfg.voice_print:  # taken at export: the folder must be there before training
        _require_whisper("voice_print", cfg.voice_print, "wheel:tiny.en (or null: no voice print)")


def _require_whisper(setting: str, path: str, example: str) -> None:
    """TrainSetupError naming ``setting`` unless ``path`` is a Whisper (faster-whisper) folder or a wheel model."""
    from ai_singer.features.whisper_models import WhisperModelMissing, resolve_model_dir

    try:
        folder = resolve_model_dir(path)
    except (WhisperModelMissing, ValueError) as error:
        raise TrainSetupError(setting, f"{path}: {error}") from error
    if not (folder / "model.bin").is_file():
        raise TrainSetupError(setting, f"{folder} has no model.bin", (
            f"give a faster-whisper (CTranslate2, float16 or float32) folder, or {example}"))


def resolve_discriminator(cfg: TrainConfig) -> TrainConfig:
    """``trainer.discriminator=auto`` made concrete: ``off`` when fine-tuning a base that has no discriminator
    (a DDSP base pretrained on mel + KL alone), else ``train``. Other values are returned unchanged."""
    if cfg.trainer.discriminator != "auto":
        return cfg
    has_one = cfg.mode != "finetune" or (locate_path(str(cfg.base)) / ckpt.BASE_DISCRIMINATOR_FILE).is_file()
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, discriminator="train" if has_one else "off"))


def run_name_of(cfg: TrainConfig) -> str:
    if cfg.run_name:
        return cfg.run_name
    return f"pretrain-{cfg.name}" if cfg.mode == "pretrain" else str(cfg.singer)
