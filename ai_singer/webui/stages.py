"""What the web page's buttons run: the command line's own stage functions on configs composed from ``conf/``.

Each function composes the stage's config exactly as ``ai-singer STAGE`` does (``ai_singer.config.compose``),
sets the values the page chose (typed values set on the composed config, never text parsed as overrides, so
nothing typed in the page can select another config or reach a path), and calls the stage:
``songs.run_batch`` (convert), ``preprocess.run_preprocess``, ``train.run_training`` (fine-tune),
``mix.concat_tracks``. The stage checks the settings as on the command line and raises its UserError for a
mistake. The working folders are the session's (:mod:`ai_singer.webui.workspace`); the catalog folders
(``paths.pretrain``, ``paths.singers``) are the server's.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ai_singer.catalog import AdapterEntry, BaseEntry, list_installed
from ai_singer.errors import UserError
from ai_singer.values import plain_name

_COMPOSE = threading.Lock()  # Hydra's global state: one composition at a time


@dataclass(frozen=True)
class Catalog:
    """The server's model folders: ``paths.pretrain`` (bases) and ``paths.singers`` (adapters)."""

    pretrain_dir: Path
    singers_dir: Path

    def bases(self) -> list[BaseEntry]:
        """The user's bases, then the bundled ones no base of the user's shadows (as names are looked up)."""
        return list_installed(self.pretrain_dir, self.singers_dir)[0]

    def adapters(self) -> list[AdapterEntry]:
        """The user's singers, then the bundled ones, each matched to the base it fits."""
        return list_installed(self.pretrain_dir, self.singers_dir)[1]

    def base(self, name: str) -> BaseEntry:
        """The installed base of that name (UserError when there is none)."""
        for base in self.bases():
            if base.name == name and not base.error:
                return base
        raise UserError(f"base {name!r}", f"no usable base of that name in {self.pretrain_dir}",
                        "pick one of the installed bases")


def group_options(group: str) -> list[str]:
    """The options of a config group (``conf/<group>/*.yaml``), e.g. the PEFT methods."""
    from ai_singer.conf_dir import conf_dir

    return sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml"))


def compose_with(config_name: str, groups: Mapping[str, str] | None = None,
                 values: Mapping[str, Any] | None = None) -> Any:
    """``conf/<config_name>.yaml`` composed with the group choices ``groups`` (each checked against the group's
    files) and then the typed ``values`` set key by key (a key the config lacks is an error)."""
    from omegaconf import OmegaConf

    from ai_singer.config import compose

    overrides = []
    for group, option in (groups or {}).items():
        if option not in group_options(group):
            raise UserError(f"{group}={option}", f"not one of {', '.join(group_options(group))}")
        overrides.append(f"{group}={option}")
    with _COMPOSE:
        cfg = compose(config_name, overrides)
    for key, value in (values or {}).items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or leaf not in list(node.keys()):
            raise KeyError(f"conf/{config_name}.yaml has no setting {key}")
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def singer_name(value: Any) -> str:
    """A singer's name as typed in the page: a plain folder name, never a path (UserError otherwise)."""
    text = str(value or "").strip()
    if not text:
        raise UserError("singer", "no singer name given", "type a name: letters, digits, _ - .")
    return plain_name(text, "singer")


# ---------------------------------------------------------------------------------------------- convert

@dataclass(frozen=True)
class ConvertChoices:
    """What the Convert page sets; everything else is conf/infer.yaml's."""

    singer: str
    transpose: float | str  # semitones, or "auto"
    key: str
    scale: str
    strength: float
    retrieval_ratio: float
    noise_scale: float


def convert_songs(songs_dir: Path, output_dir: Path, choices: ConvertChoices, catalog: Catalog) -> Any:
    """``ai-singer convert songs=<songs_dir> singer=... paths.output=<output_dir> ...``: the batch result
    (``songs.BatchResult``); ``<output_dir>/batch_report.json`` is rewritten after each song."""
    from ai_singer.songs import run_batch

    cfg = compose_with("infer", values={
        "songs": str(songs_dir), "singer": singer_name(choices.singer), "paths.output": str(output_dir),
        "paths.singers": str(catalog.singers_dir), "paths.pretrain": str(catalog.pretrain_dir),
        "transpose": choices.transpose, "pitch_correction.key": choices.key, "pitch_correction.scale": choices.scale,
        "pitch_correction.strength": choices.strength, "retrieval_ratio": choices.retrieval_ratio,
        "noise_scale": choices.noise_scale, "progress": False})
    return run_batch(cfg)


def batch_status(output_dir: Path, song_names: list[str]) -> list[list[str]]:
    """Rows ``[song, status, detail]`` for the batch being converted into ``output_dir``: what its
    ``batch_report.json`` says so far, ``waiting`` for the rest."""
    try:
        report = json.loads((output_dir / "batch_report.json").read_text(encoding="utf-8"))
        done = {entry["song"]: entry for entry in report.get("songs", [])}
    except (OSError, ValueError, KeyError, TypeError):
        done = {}
    rows = []
    for name in song_names:
        entry = done.get(name)
        if entry is None:
            rows.append([name, "waiting", ""])
        else:
            rows.append([name, str(entry.get("status")), str(entry.get("reason") or "")])
    return rows


# ------------------------------------------------------------------------------------------- preprocess

def content_choices(base: BaseEntry) -> tuple[dict[str, str], dict[str, Any]]:
    """The preprocess ``content`` settings that give the features ``base`` was trained on: the group of its
    encoder kind and the recorded path (and layer / final_proj where the encoder has them)."""
    from ai_singer.features.content import preprocess_content_settings

    try:
        return preprocess_content_settings(base.content_record)
    except UserError as error:
        raise UserError(f"base {base.name!r}", error.reason, "preprocess on the command line with the content=... "
                                                            "settings it was trained with") from None


def preprocess(raw_dir: Path, processed_dir: Path, base: BaseEntry) -> Any:
    """``ai-singer preprocess paths.raw=<raw_dir> paths.processed=<processed_dir>`` with the content encoder
    ``base`` was trained with; the ``preprocess.PreprocessResult``."""
    from ai_singer.preprocess import run_preprocess

    groups, values = content_choices(base)
    cfg = compose_with("preprocess", groups, {**values, "paths.raw": str(raw_dir),
                                              "paths.processed": str(processed_dir), "progress": False})
    return run_preprocess(cfg)


# ------------------------------------------------------------------------------------------------ train

@dataclass(frozen=True)
class TrainChoices:
    """What the Train page sets; everything else is conf/train.yaml's."""

    singer: str
    base: str
    method: str  # a conf/peft option
    max_steps: int
    batch_size: int
    learning_rate: float
    discriminator: str
    save_every: int
    eval_every: int  # 0 = no validation samples
    num_workers: int


def train_config(processed_dir: Path, runs_dir: Path, choices: TrainChoices, catalog: Catalog) -> Any:
    """The typed config of ``ai-singer train mode=finetune singer=... base=... peft=...`` for the page's
    choices (checked by the stage's own ``typed_config``)."""
    from ai_singer.train_settings import typed_config

    base = catalog.base(choices.base)
    cfg = compose_with("train", {"peft": choices.method}, {
        "mode": "finetune", "singer": singer_name(choices.singer), "base": str(base.path),
        "paths.processed": str(processed_dir), "paths.runs": str(runs_dir),
        "paths.singers": str(catalog.singers_dir), "paths.pretrain": str(catalog.pretrain_dir),
        "trainer.max_steps": choices.max_steps, "trainer.batch_size": choices.batch_size,
        "trainer.learning_rate": choices.learning_rate, "trainer.discriminator": choices.discriminator,
        "trainer.save_every": choices.save_every, "trainer.eval_every": choices.eval_every,
        "trainer.num_workers": choices.num_workers, "trainer.progress": False})
    return typed_config(cfg)


def finetune(config: Any, on_step: Any) -> Any:
    """``train.run_training`` (resumes from the run's newest checkpoint; a KeyboardInterrupt raised by
    ``on_step`` saves a checkpoint and returns ``interrupted=True``, as Ctrl-C does)."""
    from ai_singer.train import run_training

    result = run_training(config, on_step=on_step)
    result.models = None  # the page needs the numbers, not the models
    return result


def latest_samples(run_dir: Path) -> dict[str, Any]:
    """The newest validation sample a run wrote to TensorBoard: ``{"step", "image" (PNG bytes), "audio" (WAV
    bytes), "val_mel"}``; empty when there is none yet (``trainer.eval_every`` steps not reached, or 0)."""
    if not any(Path(run_dir).glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 1, "audio": 1, "scalars": 1, "tensors": 1,
                                                          "histograms": 1})
    events.Reload()
    tags = events.Tags()
    sample: dict[str, Any] = {}
    images = sorted(t for t in tags.get("images", []) if t.startswith("val_mel/"))
    if images:
        image = events.Images(images[0])[-1]
        sample.update(step=image.step, image=image.encoded_image_string)
    audio = sorted(t for t in tags.get("audio", []) if t.startswith("val_audio/"))
    if audio:
        clip = events.Audio(audio[0])[-1]
        sample.update(step=clip.step, audio=clip.encoded_audio_string)
    if "val/mel" in tags.get("scalars", []):
        sample["val_mel"] = events.Scalars("val/mel")[-1].value
    return sample


# ----------------------------------------------------------------------------------------------- concat

def concat(tracks: list[Path], output: Path, crossfade_s: float) -> Any:
    """``ai-singer concat TRACKS -o OUTPUT --crossfade S``: the ``mix.ConcatResult``."""
    from ai_singer.mix import concat_tracks

    if len(tracks) < 2:
        raise UserError("concat", f"{len(tracks)} track(s) given", "upload two or more tracks to join")
    return concat_tracks(tracks, output, crossfade_s=crossfade_s)
