"""Train the project's own small content encoder on the synthetic singing corpus.

No HuBERT/ContentVec weights can be downloaded on our machines or in CI, so the project bundles a small
HuBERT-shaped encoder trained here from scratch: 16 kHz audio -> ``transformers.HubertModel`` (a slim
conv feature extractor with the standard total stride 320, so 50 Hz frames, and a few transformer
layers) -> a linear phone classifier on the output layer, with frame-level cross-entropy against the
corpus's phone labels. Only the training singers are used; the held-out singers of ``corpus.json``
measure how well the features carry phones for unseen voices. Speed/pitch perturbation (resampling
the input and stretching the labels to match) and random gain push the encoder towards speaker
independence.

The result is a Hugging Face-format folder (``config.json`` + ``model.safetensors``), loaded by the
``hubert`` content backend exactly like real ContentVec weights, plus ``phone_head.safetensors`` (the
phone classifier, for diagnostics) and ``training.json`` (what it was trained on and how well it does)::

    python tools/train_content_encoder.py --corpus data/synth --out pretrain/content/synth-hubert \\
        --steps 3000 --hidden 128 --layers 3 --seed 0

then preprocess with ``content.path=pretrain/content/synth-hubert content.layer=3 content.final_proj=false``.

Corpus layout read here (written by ``tools/synth_corpus.py``)::

    <corpus>/corpus.json   {"seed", "singers": [{"name", "split": "train"|"held_out"}, ...],
                            "phrases": [{"singer", "id", "audio", "labels"}, ...],
                            "parallel": [{"phrase_id", "renditions": {<singer>: {"audio", "labels"}}}]}
    <corpus>/phones.json   {"phones": [{"id", "symbol"}, ...]}
    <corpus>/raw/<singer>/<phrase>.wav (+ .labels.npy)   and   parallel/<phrase>/<singer>.wav (+ .labels.npy)

Labels are int16 [frames] at 50 Hz: frame i covers 16 kHz samples [320 i, 320 (i + 1)) and is labelled
by the phone at its centre. Both raw and parallel clips are used (parallel ones of training singers for
training; of held-out singers for evaluation, where the shared phrases also make the speaker probe fair).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)  # run as a script from anywhere: find ai_singer

from ai_singer.atomic import atomic_folder, atomic_write_json, remove_stale_temporaries  # noqa: E402

SAMPLE_RATE = 16000
HOP = 320  # samples per content frame at 16 kHz: 50 frames a second
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)  # product 320, as in HuBERT / ContentVec
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)  # receptive field 400 samples, as in HuBERT / ContentVec
RECEPTIVE_FIELD = 1 + sum((k - 1) * int(np.prod(CONV_STRIDE[:i])) for i, k in enumerate(CONV_KERNEL))
# Reflect padding that centres content frame j on sample (j + 0.5) * HOP (the same as encode_audio).
PAD_LEFT = (RECEPTIVE_FIELD - HOP) // 2
PAD_RIGHT = RECEPTIVE_FIELD - HOP - PAD_LEFT
IGNORE_LABEL = -100


class CorpusError(ValueError):
    """The corpus folder is unusable; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


# ----------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------

@dataclass
class EncoderSize:
    """Architecture of the small HuBERT. ``conv_dim`` has one width per conv layer (7 layers, total
    stride 320); narrow early layers keep the high-rate convolutions cheap."""

    hidden: int = 128
    layers: int = 3
    heads: int = 4
    intermediate: int = 512
    conv_dim: tuple[int, ...] = (32, 64, 64, 128, 128, 128, 128)
    pos_conv_kernel: int = 32
    pos_conv_groups: int = 8
    dropout: float = 0.05


@dataclass
class TrainSettings:
    """Optimisation, data and augmentation settings."""

    steps: int = 3000
    batch_size: int = 8
    crop_frames: int = 100  # 2 s crops
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1
    speed_min: float = 0.84  # resampling factor range; > 1 raises pitch and formants and speeds up
    speed_max: float = 1.19
    augment_prob: float = 0.8
    gain_db: float = 6.0  # random gain, uniform in +-gain_db
    log_every: int = 50


# ----------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------

@dataclass
class Clip:
    """One labelled clip at 16 kHz: ``audio`` float32 [labels * 320], ``labels`` int64 [frames]."""

    singer: str
    phrase: str
    path: Path
    audio: np.ndarray
    labels: np.ndarray


@dataclass
class Corpus:
    """The clips split into training and held-out singers, plus the phone inventory."""

    root: Path
    train: list[Clip]
    held_out: list[Clip]
    phones: list[str]  # symbol by id
    info: dict = field(default_factory=dict)

    @property
    def train_singers(self) -> list[str]:
        return sorted({clip.singer for clip in self.train})

    @property
    def held_out_singers(self) -> list[str]:
        return sorted({clip.singer for clip in self.held_out})


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CorpusError(path, "file not found (generate the corpus with tools/synth_corpus.py --out <dir>)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CorpusError(path, f"not valid JSON ({error})") from None


def _singer_splits(info: dict, path: Path) -> dict[str, str]:
    """Singer name -> "train" | "held_out" from corpus.json's ``singers`` list."""
    singers = info.get("singers")
    if not isinstance(singers, list) or not singers:
        raise CorpusError(path, "expected a non-empty 'singers' list")
    splits = {}
    for entry in singers:
        if isinstance(entry, dict) and "name" in entry:
            splits[str(entry["name"])] = "held_out" if entry.get("split") == "held_out" else "train"
        else:
            raise CorpusError(path, f"each singer needs a 'name' (and a 'split'), got {entry!r}")
    return splits


def _phone_symbols(root: Path) -> list[str]:
    path = root / "phones.json"
    doc = _read_json(path)
    entries = doc.get("phones") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CorpusError(path, "expected a 'phones' list of {id, symbol}")
    try:
        symbols = {int(entry["id"]): str(entry["symbol"]) for entry in entries}
    except (KeyError, TypeError, ValueError):
        raise CorpusError(path, "every phone needs an integer 'id' and a 'symbol'") from None
    return [symbols.get(i, f"#{i}") for i in range(max(symbols) + 1)]


def load_clip(wav_path: Path, label_path: Path, singer: str, name: str, n_phones: int) -> Clip:
    """Read one wav and its labels; resample to 16 kHz and trim/pad to ``labels * 320`` samples."""
    from ai_singer.audio import load_audio, resample, to_mono

    if not label_path.is_file():
        raise CorpusError(label_path, f"phone labels missing for {wav_path.name}")
    try:
        labels = np.load(label_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CorpusError(label_path, f"unreadable labels ({error})") from None
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise CorpusError(label_path, f"expected a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= n_phones:
        raise CorpusError(label_path, f"phone ids must lie in 0..{n_phones - 1} (phones.json), "
                                      f"found {labels.min()}..{labels.max()}")
    audio, sr = load_audio(wav_path)
    audio = resample(to_mono(audio), sr, SAMPLE_RATE).astype(np.float32)
    frames = len(labels)
    audio_frames = len(audio) / HOP
    if abs(audio_frames - frames) > 2:
        raise CorpusError(label_path, f"{frames} label frames but the audio lasts {audio_frames:.1f} frames "
                                      f"of {HOP} samples at 16 kHz (expected 50 labels a second)")
    audio = np.pad(audio, (0, max(0, frames * HOP - len(audio))))[: frames * HOP]
    return Clip(singer, name, wav_path, audio, labels.astype(np.int64))


def _clip_entries(info: dict, root: Path) -> list[tuple[str, str, Path, Path]]:
    """(singer, clip name, wav, labels) for every raw and parallel clip that corpus.json lists."""
    entries = []
    for item in info.get("phrases", []):
        entries.append((str(item["singer"]), str(item["id"]), root / item["audio"], root / item["labels"]))
    for group in info.get("parallel", []):
        for singer, item in group.get("renditions", {}).items():
            entries.append((str(singer), f"{singer}/{group['phrase_id']}", root / item["audio"], root / item["labels"]))
    return entries


def load_corpus(root: str | Path, max_clips_per_singer: int | None = None, progress: bool = True) -> Corpus:
    """Load the labelled raw and parallel clips that ``root/corpus.json`` lists; clips of singers whose
    ``split`` is ``held_out`` go to ``Corpus.held_out`` (never trained on)."""
    from tqdm import tqdm

    root = Path(root)
    info = _read_json(root / "corpus.json")
    splits = _singer_splits(info, root / "corpus.json")
    phones = _phone_symbols(root)
    entries = _clip_entries(info, root)
    if not entries:
        raise CorpusError(root / "corpus.json", "lists no clips ('phrases' or 'parallel')")
    per_singer: dict[str, int] = {}
    jobs = []
    for singer, name, wav, labels in entries:
        if singer not in splits:
            raise CorpusError(root / "corpus.json", f"clip {name} belongs to unknown singer {singer!r}")
        if max_clips_per_singer is not None and per_singer.get(singer, 0) >= max_clips_per_singer:
            continue
        per_singer[singer] = per_singer.get(singer, 0) + 1
        jobs.append((singer, name, wav, labels))
    train, held_out = [], []
    for singer, name, wav, labels in tqdm(jobs, desc="loading corpus", unit="clip", disable=not progress, leave=False):
        clip = load_clip(wav, labels, singer, name, len(phones))
        (held_out if splits[singer] == "held_out" else train).append(clip)
    if not train:
        raise CorpusError(root / "corpus.json", "every singer is held out: nothing to train on")
    return Corpus(root, train, held_out, phones, info)


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------

def build_config(size: EncoderSize):
    """A small ``HubertConfig`` with HuBERT's framing (stride 320, receptive field 400)."""
    from transformers import HubertConfig

    if len(size.conv_dim) != len(CONV_STRIDE):
        raise ValueError(f"conv_dim needs {len(CONV_STRIDE)} widths (one per conv layer), got {size.conv_dim}")
    if size.hidden % size.heads or size.hidden % size.pos_conv_groups:
        raise ValueError(f"hidden {size.hidden} must be divisible by heads {size.heads} and "
                         f"pos_conv_groups {size.pos_conv_groups}")
    return HubertConfig(
        hidden_size=size.hidden, num_hidden_layers=size.layers, num_attention_heads=size.heads,
        intermediate_size=size.intermediate, conv_dim=tuple(size.conv_dim), conv_stride=CONV_STRIDE,
        conv_kernel=CONV_KERNEL, feat_extract_norm="group", do_stable_layer_norm=False,
        num_conv_pos_embeddings=size.pos_conv_kernel, num_conv_pos_embedding_groups=size.pos_conv_groups,
        hidden_dropout=size.dropout, attention_dropout=size.dropout, activation_dropout=size.dropout,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
        apply_spec_augment=False, mask_time_prob=0.0, mask_feature_prob=0.0,
        classifier_proj_size=size.hidden,
    )


class PhoneTagger(torch.nn.Module):
    """HubertModel + a linear phone classifier on its output layer (``hidden_states[layers]``)."""

    def __init__(self, config, n_phones: int):
        super().__init__()
        from transformers import HubertModel

        self.hubert = HubertModel(config)
        self.phone_head = torch.nn.Linear(config.hidden_size, n_phones)

    def features(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k [B, samples] (already padded by PAD_LEFT/PAD_RIGHT) -> [B, frames, hidden]."""
        return self.hubert(wav16k).last_hidden_state

    def forward(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k [B, samples] -> phone logits [B, frames, n_phones]."""
        return self.phone_head(self.features(wav16k))


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------------
# Batches with speed/pitch perturbation
# ----------------------------------------------------------------------------------------------------

class CropSampler:
    """Random training crops of ``crop_frames`` content frames, seeded.

    A crop is resampled by a random factor ``r`` (pitch, formants and tempo all scaled by ``r``): it
    reads ``r`` times as much source audio, and output frame ``j`` takes the label of the source frame
    at the same point of the stretched timeline. Returns (audio [B, crop_frames * 320 + 80] float32,
    labels [B, crop_frames] int64, IGNORE_LABEL past a clip's end).
    """

    def __init__(self, clips: list[Clip], settings: TrainSettings):
        self.clips = clips
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        # Reflect-padded copies: content frame j of a clip is centred on (j + 0.5) * HOP.
        self.padded = [np.pad(c.audio, (PAD_LEFT, PAD_RIGHT), mode="reflect") for c in clips]
        weights = np.array([len(c.labels) for c in clips], dtype=np.float64)
        self.weights = weights / weights.sum()

    def _one(self) -> tuple[np.ndarray, np.ndarray]:
        import soxr

        s = self.settings
        rng = self.rng
        index = int(rng.choice(len(self.clips), p=self.weights))
        clip, padded = self.clips[index], self.padded[index]
        out_len = s.crop_frames * HOP + PAD_LEFT + PAD_RIGHT
        rate = 1.0
        if rng.random() < s.augment_prob:
            rate = float(np.exp(rng.uniform(np.log(s.speed_min), np.log(s.speed_max))))
        src_len = int(math.ceil(out_len * rate)) + 2
        start = int(rng.integers(0, max(1, len(padded) - src_len) + 1))
        source = padded[start:start + src_len]
        if rate != 1.0:
            audio = soxr.resample(source, SAMPLE_RATE * rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
        else:
            audio = source.astype(np.float32)
        audio = np.pad(audio, (0, max(0, out_len - len(audio))))[:out_len]
        # Output frame j is centred at output sample PAD_LEFT + (j + 0.5) * HOP, i.e. at source sample
        # start + that * rate in the padded clip, i.e. clip sample (start + (...) * rate - PAD_LEFT).
        centres = start + (PAD_LEFT + (np.arange(s.crop_frames) + 0.5) * HOP) * rate - PAD_LEFT
        frame = np.floor(centres / HOP).astype(np.int64)
        available = start + len(source) - PAD_LEFT  # clip samples that the read covered
        valid = (frame >= 0) & (frame < len(clip.labels)) & (centres < available)
        labels = np.where(valid, clip.labels[np.clip(frame, 0, len(clip.labels) - 1)], IGNORE_LABEL)
        gain = 10 ** (rng.uniform(-s.gain_db, s.gain_db) / 20)
        return audio * gain, labels

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._one() for _ in range(self.settings.batch_size)]
        return (torch.from_numpy(np.stack([a for a, _ in pairs])),
                torch.from_numpy(np.stack([lab for _, lab in pairs])))


# ----------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------

def frame_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [B, T1, P] against labels [B, T2], trimmed to the shorter length."""
    frames = min(logits.shape[1], labels.shape[1])
    return F.cross_entropy(logits[:, :frames].reshape(-1, logits.shape[-1]), labels[:, :frames].reshape(-1),
                           ignore_index=IGNORE_LABEL)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class TrainResult:
    losses: list[float]  # training loss per step
    seconds_per_step: float


def train_tagger(tagger: PhoneTagger, clips: list[Clip], settings: TrainSettings, progress: bool = True) -> TrainResult:
    """Train ``tagger`` on random crops of ``clips`` for ``settings.steps`` steps (AdamW)."""
    from tqdm import tqdm

    sampler = CropSampler(clips, settings)
    decay = [p for n, p in tagger.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in tagger.named_parameters() if p.dim() < 2]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    tagger.train()
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(settings.steps), desc="training", unit="step", disable=not progress)
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, settings)
        audio, labels = sampler.batch()
        loss = frame_loss(tagger(audio), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tagger.parameters(), settings.grad_clip)
        optimiser.step()
        losses.append(loss.item())
        if step % settings.log_every == 0 or step == settings.steps - 1:
            recent = float(np.mean(losses[-settings.log_every:]))
            bar.set_postfix(loss=f"{recent:.3f}", lr=f"{optimiser.param_groups[0]['lr']:.2e}")
    tagger.eval()
    elapsed = time.perf_counter() - started
    return TrainResult(losses, elapsed / max(1, settings.steps))


@torch.inference_mode()
def clip_features(tagger: PhoneTagger, clip: Clip) -> torch.Tensor:
    """Content features of a whole clip, framed like ``encode_audio``: [len(labels), hidden]."""
    padded = np.pad(clip.audio, (PAD_LEFT, PAD_RIGHT), mode="reflect")
    features = tagger.features(torch.from_numpy(padded)[None])[0]
    return features[: len(clip.labels)]


@torch.inference_mode()
def phone_accuracy(tagger: PhoneTagger, clips: list[Clip]) -> float | None:
    """Frame-level phone accuracy of the tagger over ``clips`` (None when there are none)."""
    correct = total = 0
    for clip in clips:
        predicted = tagger.phone_head(clip_features(tagger, clip)).argmax(-1).numpy()
        frames = min(len(predicted), len(clip.labels))
        correct += int((predicted[:frames] == clip.labels[:frames]).sum())
        total += frames
    return correct / total if total else None


def _mean_mel(clip: Clip) -> np.ndarray:
    """Time-averaged log-mel (80 bands, 16 kHz, hop 320) over the clip's non-silent frames: [80]."""
    from ai_singer.features.spectrogram import mel_spectrogram

    mel = mel_spectrogram(torch.from_numpy(clip.audio)[None], SAMPLE_RATE, 1024, HOP, 1024, 80, 0.0, 8000.0)[0].T
    return _mean_over_sung(mel.numpy(), clip.labels)


def _mean_over_sung(frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n = min(len(frames), len(labels))
    sung = labels[:n] != 0
    return frames[:n][sung].mean(0) if sung.any() else frames[:n].mean(0)


def speaker_probe(tagger: PhoneTagger, clips: list[Clip], max_per_singer: int = 12) -> dict | None:
    """How much singer identity a linear classifier reads from time-averaged features.

    On ``clips`` (at most ``max_per_singer`` per singer), a logistic regression predicts the singer from
    each clip's mean content feature, trained on half of each singer's clips and tested on the other half; the
    same on mean log-mel features as a reference. Lower content accuracy than mel accuracy means the
    encoder dropped singer identity. Returns None with fewer than 2 singers or 2 clips each.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    by_singer: dict[str, list[Clip]] = {}
    for clip in clips:
        by_singer.setdefault(clip.singer, []).append(clip)
    if len(by_singer) < 2 or min(len(v) for v in by_singer.values()) < 2:
        return None
    names = sorted(by_singer)
    split = {"train": [], "test": []}
    for label, name in enumerate(names):
        for position, clip in enumerate(sorted(by_singer[name], key=lambda c: c.phrase)[:max_per_singer]):
            split["train" if position % 2 == 0 else "test"].append((clip, label))
    result = {"singers": len(names), "chance": 1.0 / len(names)}
    for kind in ("content", "mel"):
        def vector(clip: Clip) -> np.ndarray:
            if kind == "mel":
                return _mean_mel(clip)
            return _mean_over_sung(clip_features(tagger, clip).numpy(), clip.labels)

        x_train = np.stack([vector(c) for c, _ in split["train"]])
        y_train = np.array([y for _, y in split["train"]])
        x_test = np.stack([vector(c) for c, _ in split["test"]])
        y_test = np.array([y for _, y in split["test"]])
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        probe.fit(x_train, y_train)
        result[f"{kind}_accuracy"] = float((probe.predict(x_test) == y_test).mean())
    return result


# ----------------------------------------------------------------------------------------------------
# Artifact
# ----------------------------------------------------------------------------------------------------

def write_artifact(out: Path, tagger: PhoneTagger, phones: list[str], document: dict) -> None:
    """The artifact folder ``out`` (:func:`save_artifact` and ``training.json``), written whole in a temporary
    folder beside it and swapped in (:func:`ai_singer.atomic.atomic_folder`): a failure or a kill at any moment
    leaves the complete old artifact or the complete new one, never a folder a content backend would load
    half of. Temporary folders of killed runs beside ``out`` are removed first."""
    remove_stale_temporaries(Path(out).parent)
    with atomic_folder(out) as folder:
        save_artifact(tagger, folder, phones)
        atomic_write_json(folder / "training.json", document)


def save_artifact(tagger: PhoneTagger, folder: Path, phones: list[str]) -> None:
    """``save_pretrained`` the HubertModel (config.json + model.safetensors) and the phone head."""
    from safetensors.torch import save_file

    tagger.hubert.save_pretrained(folder, safe_serialization=True)
    head = {k: v.detach().contiguous().clone() for k, v in tagger.phone_head.state_dict().items()}
    save_file(head, str(folder / "phone_head.safetensors"), metadata={"phones": json.dumps(phones)})


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


# ----------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    size, train = EncoderSize(), TrainSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, help="synthetic corpus folder (corpus.json, raw/)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    parser.add_argument("--steps", type=int, default=train.steps)
    parser.add_argument("--batch-size", type=int, default=train.batch_size)
    parser.add_argument("--crop-frames", type=int, default=train.crop_frames, help="50 Hz frames per crop")
    parser.add_argument("--lr", type=float, default=train.lr)
    parser.add_argument("--warmup-steps", type=int, default=train.warmup_steps)
    parser.add_argument("--seed", type=int, default=train.seed)
    parser.add_argument("--threads", type=int, default=train.threads, help="torch CPU threads")
    parser.add_argument("--speed-min", type=float, default=train.speed_min, help="lowest resampling factor")
    parser.add_argument("--speed-max", type=float, default=train.speed_max, help="highest resampling factor")
    parser.add_argument("--augment-prob", type=float, default=train.augment_prob)
    parser.add_argument("--hidden", type=int, default=size.hidden)
    parser.add_argument("--layers", type=int, default=size.layers)
    parser.add_argument("--heads", type=int, default=size.heads)
    parser.add_argument("--intermediate", type=int, default=size.intermediate)
    parser.add_argument("--conv-dim", type=lambda s: tuple(int(x) for x in s.split(",")),
                        default=size.conv_dim, help="7 comma-separated conv widths")
    parser.add_argument("--pos-conv-kernel", type=int, default=size.pos_conv_kernel)
    parser.add_argument("--pos-conv-groups", type=int, default=size.pos_conv_groups)
    parser.add_argument("--dropout", type=float, default=size.dropout)
    parser.add_argument("--max-clips-per-singer", type=int, default=None, help="use at most this many clips")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if not 0 < args.speed_min <= 1.0 <= args.speed_max:
        parser.error("--speed-min must be in (0, 1] and --speed-max at least 1")
    if len(args.conv_dim) != len(CONV_STRIDE):
        parser.error(f"--conv-dim needs {len(CONV_STRIDE)} comma-separated widths, got {len(args.conv_dim)}")
    return args


@contextlib.contextmanager
def torch_settings(threads: int, seed: int, quiet: bool):
    """Thread count, a seeded RNG, deterministic algorithms and (if ``quiet``) no transformers progress
    bars for the duration of a run; the caller's settings and RNG state are restored afterwards."""
    from transformers.utils import logging as hf_logging

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    bars = hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        if quiet and bars:
            hf_logging.enable_progress_bar()


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Train, evaluate and save; returns the ``training.json`` document."""
    with torch_settings(args.threads, args.seed, quiet=args.no_progress):
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    progress = not args.no_progress
    size = EncoderSize(hidden=args.hidden, layers=args.layers, heads=args.heads, intermediate=args.intermediate,
                       conv_dim=tuple(args.conv_dim), pos_conv_kernel=args.pos_conv_kernel,
                       pos_conv_groups=args.pos_conv_groups, dropout=args.dropout)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, crop_frames=args.crop_frames, lr=args.lr,
                             warmup_steps=min(args.warmup_steps, max(1, args.steps // 5)), seed=args.seed,
                             threads=args.threads, speed_min=args.speed_min, speed_max=args.speed_max,
                             augment_prob=args.augment_prob)
    corpus = load_corpus(args.corpus, args.max_clips_per_singer, progress=progress)
    print(f"corpus {corpus.root}: {len(corpus.train)} training clips from {len(corpus.train_singers)} singers, "
          f"{len(corpus.held_out)} held-out clips from {len(corpus.held_out_singers)} singers "
          f"({', '.join(corpus.held_out_singers) or 'none'}), {len(corpus.phones)} phones", flush=True)
    if not corpus.held_out:
        print("warning: corpus.json holds out no singers; the accuracy below is on training singers", flush=True)

    tagger = PhoneTagger(build_config(size), len(corpus.phones))
    print(f"encoder: {count_parameters(tagger.hubert) / 1e6:.2f} M parameters "
          f"(hidden {size.hidden}, {size.layers} layers, conv {list(size.conv_dim)})", flush=True)
    result = train_tagger(tagger, corpus.train, settings, progress=progress)

    eval_clips = corpus.held_out or corpus.train
    accuracy = phone_accuracy(tagger, eval_clips)
    train_accuracy = phone_accuracy(tagger, corpus.train[: max(8, len(corpus.held_out))])
    probe = speaker_probe(tagger, corpus.held_out)
    probe_all = speaker_probe(tagger, corpus.train + corpus.held_out)
    window = max(1, min(50, len(result.losses) // 4))
    document = {
        "format_version": 1,
        "kind": "content_encoder",
        "content_overrides": {"name": "hubert", "layer": size.layers, "final_proj": False, "dim": size.hidden},
        "sample_rate": SAMPLE_RATE,
        "hop": HOP,
        "phones": corpus.phones,
        "corpus": {"path": str(corpus.root), "seed": corpus.info.get("seed"),
                   "train_singers": corpus.train_singers, "held_out_singers": corpus.held_out_singers,
                   "train_clips": len(corpus.train), "held_out_clips": len(corpus.held_out)},
        "encoder": {**asdict(size), "conv_dim": list(size.conv_dim),
                    "parameters": count_parameters(tagger.hubert)},
        "training": {**asdict(settings), "seconds_per_step": round(result.seconds_per_step, 4),
                     "loss_first": float(np.mean(result.losses[:window])),
                     "loss_last": float(np.mean(result.losses[-window:]))},
        "frame_accuracy_held_out": accuracy if corpus.held_out else None,
        "frame_accuracy_train_sample": train_accuracy,
        "speaker_probe_held_out": probe,
        "speaker_probe_all_singers": probe_all,
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else
                   " ".join(["tools/train_content_encoder.py", *argv]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    write_artifact(args.out, tagger, corpus.phones, document)
    size_mb = folder_bytes(args.out) / 1e6
    document["artifact_mb"] = round(size_mb, 2)

    print(f"loss {document['training']['loss_first']:.3f} -> {document['training']['loss_last']:.3f}; "
          f"{result.seconds_per_step:.3f} s/step", flush=True)
    if accuracy is not None:
        which = "held-out singers" if corpus.held_out else "training singers"
        print(f"frame phone accuracy on {which}: {accuracy:.3f} (training sample: {train_accuracy:.3f})")
    for label, found in (("held-out", probe), ("all", probe_all)):
        if found is not None:
            print(f"speaker probe on {found['singers']} {label} singers (chance {found['chance']:.2f}): content "
                  f"features {found['content_accuracy']:.2f} vs mel {found['mel_accuracy']:.2f} "
                  f"(lower = more speaker-independent)")
    print(f"saved {args.out} ({size_mb:.1f} MB). Use it with:\n"
          f"  content.path={args.out} content.layer={size.layers} content.final_proj=false", flush=True)
    return document


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args, argv)
    except CorpusError as error:  # a clear message naming the file, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
