"""Rebuild every bundled file (base, example singer, example song, the synthetic corpus's content encoder) with
the project's own commands, in order. Run it in the repository root:

    python tools/build_bundle.py                      # build what is missing, skip what exists
    python tools/build_bundle.py --base real-ddsp     # another base as the bundled default (see below)
    python tools/build_bundle.py --dry-run            # the plan: each step, run or skipped, its command
    python tools/build_bundle.py --force finetune     # redo one step (STEP+ = that step and every later one)
    python tools/build_bundle.py --tiny --root /tmp/b # a tiny synthetic bundle in seconds (tests, smoke checks)

The bundled base is ONE setting, ``--base`` (default :data:`DEFAULT_BASE`): a name under ``pretrain/``, or a
base folder elsewhere (copied to ``pretrain/<its name>`` by the pretrain step instead of training one). The rest
follows from it: the example singer is preprocessed with the content encoder the base records and fine-tuned
on it (``trainer.discriminator=off`` when the base has no discriminator), and is redone when it was made on
another base; ``pretrain/bundle.json`` names the base and the bundled folders (what a wheel carries).

Steps (each prints the exact command it runs, with this interpreter; skipped when its outputs exist, and an
intermediate one also when nothing after it needs it, e.g. the whole pretraining chain when the base exists):

    corpus              tools/synth_corpus.py --seed 0          -> data/synth (12 singers, 2 held out, songs)
    encoder             tools/train_content_encoder.py          -> pretrain/content/synth-hubert (bundled:
                                                                   content=synth, eval_conversion's phone reader)
    preprocess-synth    ai_singer.preprocess singers=[10 train] -> data/processed_synth
    pretrain-synth      ai_singer.train mode=pretrain           -> pretrain/synth-small (the warm start)
    real-corpus         tools/real_corpus.py --seed 0           -> data/real (needs Debian's asterisk-core-sounds-
                                                                   {en,es,fr,it,ru}-g722, festvox-ru, codec2-examples,
                                                                   alsa-utils, ffmpeg)
    real-pool           the real training voices + synthetic     -> data/pretrain_real_raw
                        training singers, hard-linked
    preprocess-real     Whisper base content, parselmouth F0    -> data/processed_real_whisper
    augment *           tools/augment_voices.py: en_allison_f,  -> data/real_aug/raw (15 new voices, 200 s each;
                        fr_june_f, ru_nsh_m, formant:pitch         augment.json last; ~4 min)
                        1.15:1.4 0.87:0.72 1.07:0.88 0.94:1.12 1.2:1.25
    preprocess-aug *    as preprocess-real                      -> data/processed_real_aug (~7 min)
    mix *               merge-processed: both preprocessed sets -> data/processed_real_mix (singer folders hard-
                        as one                                     linked, manifests joined, stats' singers)
    pretrain-warm       NSF-HiFiGAN base from synth-small       -> pretrain/real-small (2037 steps)
    pretrain            DDSP base from real-small, no discr.    -> pretrain/<base> (16140 steps; ~3.3 h on 2 CPUs),
                                                                   or the chain's warm start (pretrain/real-ddsp)
    pretrain-aug *      the DDSP base trained on with the mix   -> pretrain/real-ddsp-aug (8000 steps from
                                                                   real-ddsp; ~45 min with one thread)
    pretrain-words **   the augmented base trained on with the  -> pretrain/real-ddsp-words (3000 steps from
                        mix and loss.content=10 (Whisper base's    real-ddsp-aug; ~45 min with one thread):
                        encoder states, a loss on the words)       the bundled default
    preprocess-example  10 min of a held-out real voice's sung clips as 'example' -> data/processed_example
    finetune            ai_singer.train mode=finetune (LoRA)    -> singers/example
    song                first ~15 s of data/synth/songs/song01  -> data/examples/song01/*.flac
    manifest            sizes, sha256, commands and versions    -> pretrain/BUNDLE.md, pretrain/bundle.json

The steps marked * are a base's chain (:data:`BASE_CHAINS`, a table of base names): only a build of that base
has them (``--base real-ddsp-aug``: the DDSP base is made as before, as its warm start, then trained on with
15 perturbed copies of the large training voices; ``--base real-ddsp-words``, the default: that base, then
trained on with a loss on the words as well, the step marked **); any other name is trained by the pretrain step itself. The
pretrain steps are the recipes of BENCHMARKS.md "Real voices" (``real-ddsp``, ``real-ddsp-aug``,
``real-ddsp-words``): CPU hours,
resumable (a training step resumes from ``runs/bundle/<run>``; delete that folder to start from scratch) and
skipped when the base exists. ``--tiny`` uses the synthetic recipe (the synthetic base is the bundled one, a
held-out synthetic singer the example): no Debian packages, no Whisper. The bundle (what the demo and a fresh
clone need) must stay under ``--max-mb`` (25 MB); the build fails loudly when it is larger. File helpers used
by the steps: ``copy-singer``, ``pool-voices``, ``merge-processed``, ``copy-base``, ``cut-song``
(tools/bundle_helpers.py).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import platform
import runpy
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: find ai_singer

from ai_singer.bundle import BUNDLE_INDEX  # noqa: E402
from ai_singer.file_hash import sha256_file  # noqa: E402
from ai_singer.demo import (ADAPTER_FILES, BASE_FILES, BASE_TRAINING_FILES, EXAMPLE_SINGER,  # noqa: E402
                            EXAMPLE_SONG_DIR, EXAMPLE_SONG_STEMS, PRETRAIN_DIR, SINGERS_DIR)
from tools import augment_voices, bundle_helpers  # noqa: E402

#: The bundled default base (``--base``): everything else in the bundle follows from it.
DEFAULT_BASE = "real-ddsp-words"
#: Training steps of the words base (``--base real-ddsp-words``) from the augmented one, with ``loss.content``.
WORDS_STEPS = 3000
#: The synthetic corpus's content encoder: bundled whatever the base (``content=synth``; its phone head is
#: tools/eval_conversion.py's articulation reader).
SYNTH_ENCODER_DIR = "pretrain/content/synth-hubert"
SYNTH_ENCODER_FILES = ("config.json", "model.safetensors")
# Intermediate folders (relative to the root; not part of the bundle).
CORPUS_DIR = "data/synth"
PROCESSED_SYNTH_DIR = "data/processed_synth"
REAL_CORPUS_DIR = "data/real"
POOL_DIR = "data/pretrain_real_raw"
PROCESSED_REAL_DIR = "data/processed_real_whisper"
AUG_RAW_DIR = "data/real_aug/raw"            # the perturbed voices (tools/augment_voices.py)
PROCESSED_AUG_DIR = "data/processed_real_aug"
MIX_DIR = "data/processed_real_mix"          # the real pool and the perturbed voices, preprocessed, as one folder
AUG_BASE = "real-ddsp-aug"                   # the base pretrain-aug makes (a bundled base, or the next one's start)
EXAMPLE_RAW_DIR = "data/example_raw"  # <EXAMPLE_RAW_DIR>/example/: the example singer's raw clips
PROCESSED_EXAMPLE_DIR = "data/processed_example"
RUNS_DIR = "runs/bundle"
MANIFEST_FILE = "pretrain/BUNDLE.md"
RECIPES = ("real", "synth")


class BuildError(Exception):
    """A step failed or the bundle is unusable (too large, inputs missing); ``str()`` says which and why."""


@dataclass(frozen=True)
class BuildSettings:
    """What to build and how. Paths are relative to ``root`` (the working directory of every command)."""

    root: Path = REPO
    seed: int = 0
    base: str = DEFAULT_BASE                   # the bundled base: a name under pretrain/ or a folder to copy
    recipe: str = "real"                       # real: the base of BENCHMARKS "Real voices"; synth: the synthetic base
    corpus_args: tuple[str, ...] = ()          # extra tools/synth_corpus.py options
    encoder_steps: int = 3000
    encoder_hidden: int = 128
    encoder_layers: int = 3                    # its last layer is the content layer
    encoder_args: tuple[str, ...] = ()         # extra tools/train_content_encoder.py options
    synth_model: str = "small"
    synth_base: str = "synth-small"            # the synthetic base (recipe synth: the bundled one)
    synth_steps: int = 5000
    real_corpus_args: tuple[str, ...] = ()     # extra tools/real_corpus.py options
    speech_seconds: float = 1200.0             # speech per real training voice in the pool (sung clips: all)
    real_content: tuple[str, ...] = ("content=whisper", "content.path=wheel:base")
    warm_base: str = "real-small"              # the real recipe's first stage (NSF-HiFiGAN, from synth-small)
    warm_steps: int = 2037
    base_steps: int = 16140
    base_model_args: tuple[str, ...] = ("model=small", "model.decoder=ddsp", "model.segment_frames=64")
    # The augmented base (BASE_CHAINS: --base real-ddsp-aug): perturbed copies of the large training voices.
    aug_voices: tuple[str, ...] = ("en_allison_f", "fr_june_f", "ru_nsh_m")
    aug_variants: tuple[str, ...] = ("1.15:1.4", "0.87:0.72", "1.07:0.88", "0.94:1.12", "1.2:1.25")  # formant:pitch
    aug_seconds: float = 200.0                 # audio per new voice
    aug_steps: int = 8000                      # from the DDSP base, on the pool and the new voices
    # The words base (BASE_CHAINS: --base real-ddsp-words): the augmented base trained on with loss.content.
    words_steps: int = WORDS_STEPS             # from the augmented base, on the same mix
    words_loss: tuple[str, ...] = ("loss.content=10", "loss.content_encoder=wheel:base")
    finetune_steps: int = 500
    example_source: str | None = None          # recipe real: a held-out voice of voices.json (default it_carlo_m);
                                               # synth: a held-out synthetic singer (default: the last)
    example_seconds: float | None = 600.0      # seconds of the example's recordings used (a seeded share; None: all)
    source_song: str = "song01"               # a low line (122-226 Hz), in the example voice's range
    song_seconds: float = 15.0
    preprocess_args: tuple[str, ...] = ()      # extra overrides of every preprocess step
    real_preprocess_args: tuple[str, ...] = ("f0.method=parselmouth", "num_workers=2")  # the real recipe's
    # The CPU settings the bundled bases and example singer were trained with (pretrain/BUNDLE.md).
    pretrain_args: tuple[str, ...] = ("trainer.batch_size=6", "trainer.max_frames=64", "trainer.num_workers=0",
                                      "trainer.learning_rate=3e-4", "trainer.save_every=100", "trainer.keep_last=2",
                                      "trainer.eval_every=500", "trainer.log_every=25")
    finetune_args: tuple[str, ...] = ("trainer.batch_size=4", "trainer.max_frames=128", "trainer.num_workers=0",
                                      "trainer.save_every=100", "trainer.eval_every=250", "trainer.log_every=25")
    # The bases before the words base were trained without the loss on the words (loss.content, since made the
    # training default): their steps pin it off, so that they are rebuilt as they were made.
    pretrain_loss: tuple[str, ...] = ("loss.content=0",)
    max_mb: float = 25.0
    force: frozenset[str] = frozenset()
    in_process: bool = False                   # run the same command lines in this interpreter (tests)
    dry_run: bool = False                      # print the steps and their commands, run nothing
    threads: int | None = None                 # OMP_NUM_THREADS of every command (None: torch's default)


#: The held-out real voice fine-tuned as the example singer by default (voices.json marks it heldout).
DEFAULT_EXAMPLE_VOICE = "it_carlo_m"


def tiny_settings(root: str | os.PathLike, **changes) -> BuildSettings:
    """A bundle built in seconds with the synthetic recipe: 3 synthetic singers (1 held out), a tiny encoder
    and model, a few steps."""
    values = dict(
        root=Path(root), recipe="synth", base="synth-tiny", synth_base="synth-tiny",
        corpus_args=("--singers", "3", "--held-out", "1", "--phrases-per-singer", "2", "--seconds", "3.0",
                     "--songs", "1", "--song-seconds", "8", "--parallel-phrases", "1"),
        encoder_steps=3, encoder_hidden=32, encoder_layers=2,
        encoder_args=("--heads", "2", "--intermediate", "64", "--conv-dim", "16,16,16,32,32,32,32",
                      "--pos-conv-kernel", "8", "--pos-conv-groups", "4", "--batch-size", "2",
                      "--crop-frames", "50", "--dropout", "0.0"),
        synth_model="tiny", synth_steps=2, finetune_steps=2, song_seconds=5.0, example_seconds=None,
        source_song="song00",
        preprocess_args=("f0.method=dio", "num_workers=0", "pitch_plots=false", "slicer.min_length_s=1.0"),
        pretrain_args=("trainer=tiny",), finetune_args=("trainer=tiny", "loss.content=0"),  # no Whisper: seconds
    )
    values.update(changes)
    return BuildSettings(**values)


@dataclass(frozen=True)
class BaseChain:
    """The steps a named base needs beyond the real recipe's own: ``steps`` (optional steps of :data:`STEPS`;
    the last one trains the base) and ``warm_start``, the base the ``pretrain`` step makes for it instead."""

    steps: tuple[str, ...]
    warm_start: str


#: Bases of the real recipe made by more steps than ``pretrain`` (which trains any other name itself).
BASE_CHAINS: dict[str, BaseChain] = {
    "real-ddsp-aug": BaseChain(("augment", "preprocess-aug", "mix", "pretrain-aug"), warm_start="real-ddsp"),
    "real-ddsp-words": BaseChain(("augment", "preprocess-aug", "mix", "pretrain-aug", "pretrain-words"),
                                 warm_start="real-ddsp"),
}


@dataclass(frozen=True)
class Step:
    """One build step: ``commands`` (argv lists starting with the interpreter) make ``outputs`` (relative to
    the root; the step is done when all exist and ``current`` says they fit the settings). ``action``: an
    in-process step instead of commands. ``inputs``: the steps whose outputs it reads; a step no later step
    needs is skipped unless it is ``bundled`` (its outputs ship) or forced. An ``optional`` step is part of a
    build only when the base's :data:`BASE_CHAINS` entry names it."""

    name: str
    title: str
    outputs: Callable[["Builder"], list[str]]
    commands: Callable[["Builder"], list[list[str]]] | None = None
    action: Callable[["Builder"], None] | None = None
    inputs: tuple[str, ...] = ()
    bundled: bool = False
    recipes: tuple[str, ...] = RECIPES
    current: Callable[["Builder"], bool] | None = None
    follows: bool = False  # redone whenever one of its inputs is (an adapter of new features or a new base)
    optional: bool = False


@dataclass
class StepRecord:
    step: Step
    commands: list[str]
    status: str  # "ran" | "skipped" | "not needed" | "dry-run"
    seconds: float = 0.0


@dataclass
class BuildResult:
    records: list[StepRecord]
    files: list[tuple[str, int, str]] = field(default_factory=list)  # (path relative to root, bytes, sha256)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.files)


# ------------------------------------------------------------------------------------------- the steps

#: Placeholders in ``Step.inputs``: the step that makes the bundled base, the corpus the example comes from.
BASE, EXAMPLE_CORPUS = "<base>", "<example corpus>"

def _helper(b: "Builder", *args: str) -> list[str]:
    return [b.python, b.tool("build_bundle.py"), *args]


def _train(b: "Builder", *args: str) -> list[str]:
    return [b.python, "-m", "ai_singer.train", *args, f"paths.pretrain={PRETRAIN_DIR}", f"paths.runs={RUNS_DIR}",
            f"seed={b.settings.seed}"]


def _pretrain(b: "Builder", name: str, processed: str, steps: int, *args: str,
              loss: Sequence[str] | None = None) -> list[str]:
    """A base's training command; ``loss``: its loss overrides (default ``pretrain_loss``, without loss.content)."""
    return _train(b, "mode=pretrain", f"name={name}", f"paths.processed={processed}", *args,
                  f"trainer.max_steps={steps}", "export_dtype=float16", *b.settings.pretrain_args,
                  *(b.settings.pretrain_loss if loss is None else loss))


def _base_outputs(name: str, discriminator: bool) -> list[str]:
    return [f"{PRETRAIN_DIR}/{name}/{file}" for file in (*BASE_FILES, *(BASE_TRAINING_FILES if discriminator else ()))]


def _synth_content_args(b: "Builder") -> list[str]:
    return ["content=synth", f"content.path={SYNTH_ENCODER_DIR}", f"content.layer={b.settings.encoder_layers}"]


def _ddsp_pretrain(b: "Builder", name: str, processed: str, steps: int, warm_start: str,
                   loss: Sequence[str] | None = None) -> list[str]:
    """A DDSP base without a discriminator, warm-started from ``pretrain/<warm_start>``."""
    return _pretrain(b, name, processed, steps, *b.settings.base_model_args, f"init_from={PRETRAIN_DIR}/{warm_start}",
                     "trainer.discriminator=off", loss=loss)


def _base_commands(b: "Builder") -> list[list[str]]:
    source = b.base_source()
    if source is not None:
        return [_helper(b, "copy-base", b._shown(source), b.base_dir())]
    return [_ddsp_pretrain(b, b.pretrain_name(), PROCESSED_REAL_DIR, b.settings.base_steps, b.settings.warm_base)]


def _real_preprocess(b: "Builder", raw: str, processed: str) -> list[str]:
    """Preprocess with the real recipe's content encoder and F0."""
    s = b.settings
    return [b.python, "-m", "ai_singer.preprocess", f"paths.raw={raw}", f"paths.processed={processed}",
            *s.real_content, "progress=false", *s.real_preprocess_args, *s.preprocess_args]


def _example_commands(b: "Builder") -> list[list[str]]:
    s = b.settings
    copy = ["--seconds", f"{s.example_seconds:g}", "--seed", str(s.seed)] if s.example_seconds else []
    real = s.recipe == "real"
    return [_helper(b, "copy-singer", b.example_source_dir(), f"{EXAMPLE_RAW_DIR}/{EXAMPLE_SINGER}", *copy),
            [b.python, "-m", "ai_singer.preprocess", f"paths.raw={EXAMPLE_RAW_DIR}",
             f"paths.processed={PROCESSED_EXAMPLE_DIR}", *b.base_content_args(), "progress=false",
             *(s.real_preprocess_args if real else ()), *s.preprocess_args]]


def _finetune_commands(b: "Builder") -> list[list[str]]:
    s = b.settings
    return [_train(b, "mode=finetune", f"singer={EXAMPLE_SINGER}", f"base={b.base_dir()}", "peft=lora",
                   f"paths.processed={PROCESSED_EXAMPLE_DIR}", f"paths.singers={SINGERS_DIR}",
                   f"run_name={EXAMPLE_SINGER}-{b.base_name()}-{b.example_source()}",
                   f"trainer.max_steps={s.finetune_steps}",
                   f"trainer.discriminator={b.finetune_discriminator()}", *s.finetune_args)]


STEPS: tuple[Step, ...] = (
    Step("corpus", "synthetic singing corpus",
         outputs=lambda b: [f"{CORPUS_DIR}/corpus.json"],
         commands=lambda b: [[b.python, b.tool("synth_corpus.py"), "--out", CORPUS_DIR, "--seed", str(b.settings.seed),
                              "--no-progress", *b.settings.corpus_args]]),
    Step("encoder", "content encoder (HuBERT format) trained on the synthetic corpus's training singers",
         outputs=lambda b: [f"{SYNTH_ENCODER_DIR}/{name}" for name in SYNTH_ENCODER_FILES], inputs=("corpus",),
         bundled=True,
         commands=lambda b: [[b.python, b.tool("train_content_encoder.py"), "--corpus", CORPUS_DIR,
                              "--out", SYNTH_ENCODER_DIR, "--steps", str(b.settings.encoder_steps),
                              "--hidden", str(b.settings.encoder_hidden), "--layers", str(b.settings.encoder_layers),
                              "--seed", str(b.settings.seed), "--no-progress", *b.settings.encoder_args]]),
    Step("preprocess-synth", "preprocess the synthetic training singers",
         outputs=lambda b: [f"{PROCESSED_SYNTH_DIR}/stats.json", f"{PROCESSED_SYNTH_DIR}/manifest.jsonl"],
         inputs=("corpus", "encoder"),
         commands=lambda b: [[b.python, "-m", "ai_singer.preprocess", f"paths.raw={CORPUS_DIR}/raw",
                              f"paths.processed={PROCESSED_SYNTH_DIR}", *_synth_content_args(b),
                              f"singers=[{','.join(b.train_singers())}]", "progress=false",
                              *b.settings.preprocess_args]]),
    Step("pretrain-synth", "pretrain the synthetic base on the synthetic training singers",
         outputs=lambda b: _base_outputs(b.settings.synth_base, True), inputs=("preprocess-synth",),
         commands=lambda b: [_pretrain(b, b.settings.synth_base, PROCESSED_SYNTH_DIR, b.settings.synth_steps,
                                       f"model={b.settings.synth_model}")]),
    Step("real-corpus", "real voices made to sing (Debian's asterisk/festvox-ru/codec2/alsa speech, WORLD)",
         outputs=lambda b: [f"{REAL_CORPUS_DIR}/voices.json"], recipes=("real",),
         commands=lambda b: [[b.python, b.tool("real_corpus.py"), "--out", REAL_CORPUS_DIR, "--seed",
                              str(b.settings.seed), *b.settings.real_corpus_args]]),
    Step("real-pool", "the real training voices (speech capped per voice) and the synthetic training singers in "
                      "one raw folder", recipes=("real",),
         outputs=lambda b: [f"{POOL_DIR}/{bundle_helpers.POOL_RECORD}"], inputs=("corpus", "real-corpus"),
         commands=lambda b: [_helper(b, "pool-voices", "--corpus", REAL_CORPUS_DIR, "--synth", CORPUS_DIR, "--out",
                                     POOL_DIR, "--speech-seconds", f"{b.settings.speech_seconds:g}", "--seed",
                                     str(b.settings.seed))]),
    Step("preprocess-real", "preprocess the pool with the real recipe's content encoder and F0", recipes=("real",),
         outputs=lambda b: [f"{PROCESSED_REAL_DIR}/stats.json", f"{PROCESSED_REAL_DIR}/manifest.jsonl"],
         inputs=("real-pool",),
         commands=lambda b: [_real_preprocess(b, POOL_DIR, PROCESSED_REAL_DIR)]),
    Step("augment", "new training voices: the large real training voices with formants and pitch shifted (WORLD)",
         outputs=lambda b: [f"{AUG_RAW_DIR}/{augment_voices.RECORD}"], inputs=("real-corpus",), recipes=("real",),
         optional=True,
         commands=lambda b: [[b.python, b.tool("augment_voices.py"), "--corpus", REAL_CORPUS_DIR, "--out", AUG_RAW_DIR,
                              "--voices", *b.settings.aug_voices, "--variants", *b.settings.aug_variants,
                              "--seconds", f"{b.settings.aug_seconds:g}", "--seed", str(b.settings.seed)]]),
    Step("preprocess-aug", "preprocess the new voices as the pool (content encoder, F0)", recipes=("real",),
         outputs=lambda b: [f"{PROCESSED_AUG_DIR}/stats.json", f"{PROCESSED_AUG_DIR}/manifest.jsonl"],
         inputs=("augment",), optional=True, commands=lambda b: [_real_preprocess(b, AUG_RAW_DIR, PROCESSED_AUG_DIR)]),
    Step("mix", "the preprocessed pool and new voices as one folder (hard links, one manifest)", recipes=("real",),
         outputs=lambda b: [f"{MIX_DIR}/stats.json", f"{MIX_DIR}/manifest.jsonl"], optional=True, follows=True,
         inputs=("preprocess-real", "preprocess-aug"),
         commands=lambda b: [_helper(b, "merge-processed", "--out", MIX_DIR, PROCESSED_REAL_DIR, PROCESSED_AUG_DIR)]),
    Step("pretrain-warm", "warm-start a real-voice base (NSF-HiFiGAN) from the synthetic one", recipes=("real",),
         outputs=lambda b: _base_outputs(b.settings.warm_base, True), inputs=("preprocess-real", "pretrain-synth"),
         commands=lambda b: [_pretrain(b, b.settings.warm_base, PROCESSED_REAL_DIR, b.settings.warm_steps,
                                       "model=small", f"init_from={PRETRAIN_DIR}/{b.settings.synth_base}")]),
    Step("pretrain", "the DDSP base (no discriminator) from the warm start: the bundled base, or the next "
                     "stage's warm start (or a copy of --base)",
         outputs=lambda b: _base_outputs(b.pretrain_name(), False), recipes=("real",),
         inputs=("preprocess-real", "pretrain-warm"), commands=_base_commands),
    Step("pretrain-aug", "the augmented base: the DDSP base trained on, with the new voices", recipes=("real",),
         outputs=lambda b: _base_outputs(AUG_BASE, False), inputs=("mix", "pretrain"), optional=True,
         commands=lambda b: [_ddsp_pretrain(b, AUG_BASE, MIX_DIR, b.settings.aug_steps, b.chain().warm_start)]),
    Step("pretrain-words", "the words base: the augmented base trained on, with a loss on the words (Whisper)",
         recipes=("real",), outputs=lambda b: _base_outputs(b.base_name(), False), inputs=("mix", "pretrain-aug"),
         optional=True,
         commands=lambda b: [_ddsp_pretrain(b, b.base_name(), MIX_DIR, b.settings.words_steps, AUG_BASE,
                                            loss=b.settings.words_loss)]),
    Step("preprocess-example", "preprocess the example singer's recordings with the base's content encoder",
         outputs=lambda b: [f"{PROCESSED_EXAMPLE_DIR}/stats.json", f"{PROCESSED_EXAMPLE_DIR}/manifest.jsonl"],
         inputs=(EXAMPLE_CORPUS, BASE), current=lambda b: b.example_is_current(), follows=True,
         commands=_example_commands),
    Step("finetune", "fine-tune the example singer's LoRA adapter on the frozen base",
         outputs=lambda b: [f"{SINGERS_DIR}/{EXAMPLE_SINGER}/{name}" for name in ADAPTER_FILES],
         inputs=("preprocess-example", BASE), bundled=True, follows=True,
         current=lambda b: b.adapter_is_current(), commands=_finetune_commands),
    Step("song", "the example song: the first seconds of a synthetic song's stems (a low line, in the example "
                 "singer's range)",
         outputs=lambda b: [f"{EXAMPLE_SONG_DIR}/{name}" for name in EXAMPLE_SONG_STEMS], inputs=("corpus",),
         bundled=True,
         commands=lambda b: [_helper(b, "cut-song", f"{CORPUS_DIR}/songs/{b.settings.source_song}", EXAMPLE_SONG_DIR,
                                     "--seconds", f"{b.settings.song_seconds:g}")]),
    Step("manifest", "list the bundled files, their sizes and hashes, the commands and versions",
         outputs=lambda b: [], bundled=True, action=lambda b: b.write_manifest()),
)
STEP_NAMES = tuple(step.name for step in STEPS)


def parse_force(items: Sequence[str]) -> frozenset[str]:
    """``--force`` values: step names, ``STEP+`` (that step and every later one), or ``all``."""
    names: set[str] = set()
    for item in items:
        for word in item.split(","):
            word = word.strip()
            if not word:
                continue
            if word == "all":
                names.update(STEP_NAMES)
                continue
            name = word.rstrip("+")
            if name not in STEP_NAMES:
                raise BuildError(f"--force {word}: unknown step; steps are {', '.join(STEP_NAMES)} (or all, STEP+)")
            names.update(STEP_NAMES[STEP_NAMES.index(name):] if word.endswith("+") else [name])
    return frozenset(names)


# ------------------------------------------------------------------------------------------ the builder

class Builder:
    """Runs the steps of :data:`STEPS` for one :class:`BuildSettings`."""

    def __init__(self, settings: BuildSettings, echo: Callable[[str], None] = print):
        self.settings = replace(settings, root=Path(settings.root).resolve())
        self.root = self.settings.root
        self.echo = echo
        self.python = self._shown(Path(sys.executable))
        self.records: list[StepRecord] = []

    # -- command lines
    def _shown(self, path: Path) -> str:
        """``path`` relative to the root when it is inside it (shorter, still exact with cwd = root)."""
        try:
            return Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def tool(self, name: str) -> str:
        return self._shown(REPO / "tools" / name)

    def corpus_info(self) -> dict:
        path = self.root / CORPUS_DIR / "corpus.json"
        if not path.is_file():
            raise BuildError(f"{path}: missing; run the corpus step first")
        return json.loads(path.read_text(encoding="utf-8"))

    def train_singers(self) -> list[str]:
        """The corpus's training singers (``split == "train"`` in corpus.json)."""
        singers = [s["name"] for s in self.corpus_info()["singers"] if s.get("split") == "train"]
        if not singers:
            raise BuildError(f"{self.root / CORPUS_DIR / 'corpus.json'}: no training singers")
        return singers

    def example_source(self) -> str:
        """The voice fine-tuned as 'example': ``example_source``, else (recipe real) the held-out real voice
        :data:`DEFAULT_EXAMPLE_VOICE` or (recipe synth) the corpus's last held-out synthetic singer. It must be
        held out of the base."""
        wanted = self.settings.example_source
        if self.settings.recipe == "real":
            path = self.root / REAL_CORPUS_DIR / "voices.json"
            if not path.is_file():
                raise BuildError(f"{path}: missing; run the real-corpus step first")
            voices = json.loads(path.read_text(encoding="utf-8"))["voices"]
            held_out = sorted(name for name, voice in voices.items() if voice.get("role") == "heldout")
            wanted = wanted or DEFAULT_EXAMPLE_VOICE
            if wanted not in held_out:
                raise BuildError(f"{path}: {wanted!r} is not a held-out voice (held out: {', '.join(held_out)}); the "
                                 "example singer must be a voice the base never heard")
            return wanted
        singers = self.corpus_info()["singers"]
        if wanted:
            if wanted not in {s["name"] for s in singers}:
                raise BuildError(f"example singer {wanted!r} is not in the corpus")
            return wanted
        held_out = [s["name"] for s in singers if s.get("split") == "held_out"]
        if not held_out:
            raise BuildError(f"{self.root / CORPUS_DIR / 'corpus.json'}: no held-out singer to use as the example")
        return held_out[-1]

    def example_source_dir(self) -> str:
        """The raw folder copied as the example singer: a real voice's sung clips, or a synthetic singer's."""
        if self.settings.recipe == "real":
            return f"{REAL_CORPUS_DIR}/raw/{self.example_source()}/sung"
        return f"{CORPUS_DIR}/raw/{self.example_source()}"

    # -- the base, and what follows from it
    def base_source(self) -> Path | None:
        """The folder ``--base`` names when it is an existing base outside ``pretrain/`` (copied there), else None."""
        given = Path(self.settings.base)
        if len(given.parts) == 1 and not given.is_absolute():
            return None  # a name under pretrain/
        folder = given if given.is_absolute() else (self.root / given)
        if folder.resolve() == (self.root / PRETRAIN_DIR / given.name).resolve():
            return None
        if not (folder / BASE_FILES[0]).is_file():
            raise BuildError(f"--base {self.settings.base}: no {BASE_FILES[0]} there; give a base folder or a name "
                             f"under {PRETRAIN_DIR}/")
        return folder

    def base_name(self) -> str:
        return Path(self.settings.base).name

    def base_dir(self) -> str:
        return f"{PRETRAIN_DIR}/{self.base_name()}"

    def chain(self) -> BaseChain | None:
        """The base's :data:`BASE_CHAINS` entry (real recipe, a name rather than a folder to copy), else None."""
        if self.settings.recipe != "real" or self.base_source() is not None:
            return None
        return BASE_CHAINS.get(self.base_name())

    def base_step(self) -> str:
        """The step that makes the bundled base."""
        if self.settings.recipe != "real":
            return "pretrain-synth"
        chain = self.chain()
        return chain.steps[-1] if chain else "pretrain"

    def pretrain_name(self) -> str:
        """The base the ``pretrain`` step makes: the bundled one, or the warm start of its chain."""
        chain = self.chain()
        return chain.warm_start if chain else self.base_name()

    def base_config(self) -> dict:
        import yaml

        path = self.root / self.base_dir() / BASE_FILES[0]
        if not path.is_file():
            raise BuildError(f"{path}: missing; run the {self.base_step()} step first")
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}

    def base_content_args(self) -> list[str]:
        """Preprocess overrides for the content encoder the base records (its features are what it learned)."""
        from ai_singer.errors import UserError
        from ai_singer.features.content import as_overrides, preprocess_content_settings

        try:
            groups, values = preprocess_content_settings(self.base_config().get("content_encoder"))
        except UserError as error:
            raise BuildError(f"{self.root / self.base_dir() / BASE_FILES[0]}: {error.reason}") from None
        return as_overrides({**groups, **values})

    def base_encoder_dir(self) -> str | None:
        """The base's content encoder folder when it is a bundled local folder (not a wheel's model)."""
        from ai_singer.features.whisper_models import is_wheel_path

        with contextlib.suppress(BuildError):
            path = (self.base_config().get("content_encoder") or {}).get("path")
            if path and not is_wheel_path(str(path)) and not Path(str(path)).is_absolute():
                return Path(str(path)).as_posix()
        return None

    def finetune_discriminator(self) -> str:
        """``off`` for a base pretrained without a discriminator, else ``train``."""
        self.base_config()
        return "train" if (self.root / self.base_dir() / BASE_TRAINING_FILES[0]).is_file() else "off"

    def example_is_current(self) -> bool:
        """The example's recordings are the chosen voice's and its features come from the base's content encoder
        (else preprocess-example is redone)."""
        from ai_singer.features.content import encoder_mismatches

        record = bundle_helpers.copy_record(self.root / EXAMPLE_RAW_DIR / EXAMPLE_SINGER)
        with contextlib.suppress(BuildError):
            wanted = bundle_helpers.copy_description(self.example_source_dir(), self.settings.example_seconds,
                                                     self.settings.seed)
            if not record.is_file() or record.read_text(encoding="utf-8") != wanted:
                return False
        stats = self.root / PROCESSED_EXAMPLE_DIR / "stats.json"
        try:
            expected = self.base_config().get("content_encoder") or {}
        except BuildError:
            return True  # no base yet: nothing to compare with
        recorded = json.loads(stats.read_text(encoding="utf-8")).get("content_encoder") or {}
        return not encoder_mismatches(expected, recorded)

    def adapter_is_current(self) -> bool:
        """The example adapter was trained on this base (its recorded hash), else finetune is redone."""
        import yaml

        try:
            base_hash = self.base_config().get("generator_sha256")
        except BuildError:
            return True
        adapter = yaml.safe_load((self.root / SINGERS_DIR / EXAMPLE_SINGER / ADAPTER_FILES[0]).read_text(
            encoding="utf-8")) or {}
        return adapter.get("base_sha256") == base_hash

    # -- running
    def shell(self, argv: Sequence[str]) -> str:
        """The exact shell command line of ``argv`` (with its OMP_NUM_THREADS when ``threads`` is set)."""
        prefix = f"OMP_NUM_THREADS={self.settings.threads} " if self.settings.threads else ""
        return prefix + shlex.join(argv)

    def run_command(self, argv: Sequence[str]) -> int:
        """Run one command line in the root (a subprocess, or this interpreter when ``in_process``)."""
        threads = self.settings.threads
        if not self.settings.in_process:
            sys.stdout.flush()
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
            return subprocess.run(list(argv), cwd=self.root, env=env).returncode
        import torch

        program = list(argv[1:])
        saved_argv, saved_threads = sys.argv, torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            with contextlib.chdir(self.root):
                if program[0] == "-m":
                    module = importlib.import_module(program[1])
                    sys.argv = [program[1], *program[2:]]
                    module.main()
                else:
                    sys.argv = program
                    runpy.run_path(program[0], run_name="__main__")
        except SystemExit as stop:
            code = stop.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        finally:
            sys.argv = saved_argv
            torch.set_num_threads(saved_threads)
        return 0

    def is_done(self, step: Step) -> bool:
        outputs = step.outputs(self)
        if not outputs or not all((self.root / path).is_file() for path in outputs):
            return False
        return step.current is None or step.current(self)

    def is_stale(self, step: Step) -> bool:
        """Its outputs are there but no longer fit the settings (another base or example voice)."""
        outputs = step.outputs(self)
        return bool(outputs) and all((self.root / path).is_file() for path in outputs) and \
            step.current is not None and not step.current(self)

    def steps(self) -> list[Step]:
        """The steps of this recipe and base, in order."""
        chain = self.chain()
        return [step for step in STEPS if self.settings.recipe in step.recipes
                and (not step.optional or (chain is not None and step.name in chain.steps))]

    def inputs_of(self, step: Step) -> set[str]:
        if step.name == "pretrain" and self.base_source() is not None:
            return set()  # a copy needs no training data
        example_corpus = "real-corpus" if self.settings.recipe == "real" else "corpus"
        names = {self.base_step() if name == BASE else example_corpus if name == EXAMPLE_CORPUS else name
                 for name in step.inputs}
        return names & {s.name for s in self.steps()}

    def plan(self, wanted: Sequence[str] = ()) -> set[str]:
        """The steps that run: forced ones, and unfinished ones whose outputs ship, that are ``wanted`` (named
        with ``--only``), stale, or that a running step needs; then those that follow a running input."""
        steps, run = self.steps(), set()
        for step in reversed(steps):
            if step.name in self.settings.force:
                run.add(step.name)
            elif not self.is_done(step) and (step.bundled or step.name == self.base_step() or step.name in wanted
                                             or self.is_stale(step) or any(step.name in self.inputs_of(later) and later.name in run
                                                    for later in steps)):
                run.add(step.name)
        for step in steps:
            if step.follows and self.inputs_of(step) & run:
                run.add(step.name)
        return run

    def run(self, steps: Sequence[str] | None = None) -> BuildResult:
        """Run every step of the recipe (or the named ones) in order; raises BuildError when one fails."""
        wanted = STEP_NAMES if steps is None else tuple(steps)
        selected = [step for step in self.steps() if step.name in wanted]
        self.root.mkdir(parents=True, exist_ok=True)
        self.echo(f"build_bundle: root {self.root} (base {self.base_name()}, recipe {self.settings.recipe})")
        planned = self.plan(() if steps is None else steps)
        for number, step in enumerate(selected, 1):
            prefix = f"[{number}/{len(selected)}] {step.name}"
            if step.name not in planned:
                why = (f"{', '.join(step.outputs(self))} already there; --force {step.name} to redo"
                       if self.is_done(step) else "nothing after it needs it")
                self.echo(f"{prefix}: skipped ({why})")
                self.records.append(StepRecord(step, self.command_lines(step), "skipped"))
                continue
            self.echo(f"{prefix}: {step.title}")
            if self.settings.dry_run:
                self.echo("\n".join(f"$ {line}" if not line.startswith("#") else line
                                     for line in self.command_lines(step)))
                self.records.append(StepRecord(step, self.command_lines(step), "dry-run"))
                continue
            started = time.perf_counter()
            if step.action is not None:
                step.action(self)
            else:
                for argv in step.commands(self):
                    self.echo(f"$ {self.shell(argv)}")
                    code = self.run_command(argv)
                    if code != 0:
                        raise BuildError(f"step {step.name} failed: `{self.shell(argv)}` exited with {code} "
                                         f"(run in {self.root}); fix it and run build_bundle again to go on")
                missing = [path for path in step.outputs(self) if not (self.root / path).is_file()]
                if missing:
                    raise BuildError(f"step {step.name} finished but did not write {', '.join(missing)}")
            seconds = time.perf_counter() - started
            self.echo(f"{prefix}: done in {seconds:.1f} s")
            self.records.append(StepRecord(step, self.command_lines(step), "ran", seconds))
        files = bundle_files(self.root, self.bundled_entries())
        result = BuildResult(self.records, files)
        if self.settings.dry_run:
            return result
        self.echo(f"bundle: {result.total_bytes / 1e6:.2f} MB in {len(files)} files (limit {self.settings.max_mb:g} MB)")
        check_size(result, self.settings.max_mb)
        return result

    def command_lines(self, step: Step) -> list[str]:
        if step.action is not None:
            return [f"# in build_bundle.py: write {MANIFEST_FILE}"]
        try:
            return [self.shell(argv) for argv in step.commands(self)]
        except BuildError as error:
            return [f"# (not known: {error})"]

    # -- the manifest
    def bundled_entries(self) -> list[str]:
        """The bundled model and data folders (relative to the root): the base, its content encoder when it is a
        local folder, the synthetic encoder, the example singer and song."""
        entries = [self.base_dir(), SYNTH_ENCODER_DIR]
        encoder = self.base_encoder_dir()
        if encoder and encoder not in entries:
            entries.insert(1, encoder)
        return entries + [f"{SINGERS_DIR}/{EXAMPLE_SINGER}", EXAMPLE_SONG_DIR]

    def write_manifest(self) -> Path:
        """``pretrain/BUNDLE.md`` (each bundled file with size and sha256, the commands, the versions) and
        ``pretrain/bundle.json`` (the base and the bundled folders, read by ai_singer.bundle and setup.py)."""
        from ai_singer.atomic import atomic_write_json, atomic_write_text

        entries = self.bundled_entries()
        files = bundle_files(self.root, entries)
        total = sum(size for _, size, _ in files)
        lines = ["# The bundled files", "",
                 f"Written by `tools/build_bundle.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
                 f"for the base `{self.base_dir()}` ({self.settings.recipe} recipe). "
                 f"Total: {total / 1e6:.2f} MB in {len(files)} files (limit {self.settings.max_mb:g} MB). "
                 "Rebuild with `python tools/build_bundle.py` in the repository root (it skips what exists; "
                 "`--force STEP` redoes a step; `--base NAME|DIR` bundles another base).", "",
                 "| file | bytes | sha256 |", "|---|---:|---|"]
        lines += [f"| `{path}` | {size} | `{digest}` |" for path, size, digest in files]
        lines += ["", "## Commands", "", "Run in the repository root, in this order (a step is skipped when its outputs "
                  "exist, or when nothing after it needs them):", ""]
        records = {record.step.name: record for record in self.records}
        for step in self.steps():
            if step.action is not None:
                continue
            record = records.get(step.name)
            commands = record.commands if record else self.command_lines(step)
            note = "" if record is not None and record.status == "ran" else \
                " (not run by the build that wrote this file: its outputs were already there, or nothing needed them)"
            lines += [f"{step.name}: {step.title}{note}", "", "```bash", *commands, "```", ""]
        lines += ["## Versions", "", *[f"- {line}" for line in versions()], ""]
        path = self.root / MANIFEST_FILE
        atomic_write_text(path, "\n".join(lines))
        atomic_write_json(self.root / BUNDLE_INDEX, {"base": self.base_name(), "example_singer": EXAMPLE_SINGER,
                                                     "song": EXAMPLE_SONG_DIR, "entries": entries})
        self.echo(f"wrote {path} and {self.root / BUNDLE_INDEX}")
        return path


def bundle_files(root: Path, folders: Sequence[str]) -> list[tuple[str, int, str]]:
    """Every file under ``folders`` (relative to root) as (path relative to root, bytes, sha256), sorted; hidden
    and temp files excluded."""
    files = []
    for folder in folders:
        base = Path(root) / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts) \
                    and not path.name.endswith(".tmp"):
                files.append((relative.as_posix(), path.stat().st_size, sha256_file(path)))
    return files


def check_size(result: BuildResult, max_mb: float) -> None:
    """BuildError naming the largest files when the bundle is over ``max_mb``."""
    if result.total_bytes <= max_mb * 1e6:
        return
    largest = sorted(result.files, key=lambda item: -item[1])[:5]
    listing = ", ".join(f"{path} ({size / 1e6:.1f} MB)" for path, size, _ in largest)
    raise BuildError(f"the bundle is {result.total_bytes / 1e6:.1f} MB, over the {max_mb:g} MB limit; largest: "
                     f"{listing}. Use a smaller model or encoder, or export the base in float16.")


def versions() -> list[str]:
    """Interpreter, package versions and the git commit the bundle was built from."""
    from importlib import metadata

    lines = [f"python {platform.python_version()} ({platform.system()} {platform.machine()})"]
    packages = []
    for name in ("ai_singer", "torch", "transformers", "peft", "numpy", "safetensors", "soundfile", "soxr",
                 "pyworld-prebuilt", "hydra-core"):
        try:
            packages.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    lines.append(", ".join(packages))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if commit:
            lines.append(f"git commit {commit}{' (with uncommitted changes)' if dirty else ''}")
    except (OSError, subprocess.SubprocessError):
        pass
    return lines


# ---------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Steps: " + ", ".join(STEP_NAMES))
    defaults = BuildSettings()
    parser.add_argument("--root", type=Path, default=REPO, help="where data/, pretrain/, singers/ are written "
                                                                "(default: the repository)")
    parser.add_argument("--base", default=None,
                        help=f"the bundled base: a name under pretrain/ (built by the real recipe when missing; "
                             f"{', '.join(BASE_CHAINS)} with the extra steps of its chain) or a base folder elsewhere, "
                             f"copied to pretrain/<its name> (default {DEFAULT_BASE})")
    parser.add_argument("--example", default=None, metavar="VOICE",
                        help=f"held-out voice fine-tuned as the example singer (default {DEFAULT_EXAMPLE_VOICE}; "
                             "--tiny: the last held-out synthetic singer)")
    parser.add_argument("--force", action="append", default=[], metavar="STEP",
                        help="redo STEP even if its outputs exist (repeatable; STEP+ = it and every later step; all)")
    parser.add_argument("--dry-run", action="store_true", help="print each step's commands (and whether it would "
                                                               "be skipped), run nothing")
    parser.add_argument("--only", action="append", default=None, metavar="STEP", help="run only these steps")
    for option, name, what in (("synth-steps", "synth_steps", "synthetic base training steps"),
                               ("warm-steps", "warm_steps", "real recipe: warm-start base training steps"),
                               ("base-steps", "base_steps", "real recipe: DDSP base training steps"),
                               ("aug-steps", "aug_steps", "real recipe, --base real-ddsp-aug: training steps "
                                                          "from the DDSP base with the perturbed voices"),
                               ("words-steps", "words_steps", "real recipe, --base real-ddsp-words: training "
                                                              "steps from the augmented base with loss.content"),
                               ("finetune-steps", "finetune_steps", "example adapter training steps"),
                               ("encoder-steps", "encoder_steps", "synthetic content encoder training steps")):
        parser.add_argument(f"--{option}", type=int, default=None, help=f"{what} (default {getattr(defaults, name)})")
    parser.add_argument("--song-seconds", type=float, default=None,
                        help=f"length of the example song (default about {defaults.song_seconds:g} s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="run every command with OMP_NUM_THREADS=N (on a busy 2-core machine a training step "
                             "was 4-12x faster with 1 than with 2); default: torch's own choice")
    parser.add_argument("--max-mb", type=float, default=defaults.max_mb, help="fail when the bundle is larger")
    parser.add_argument("--tiny", action="store_true", help="a tiny synthetic bundle in seconds (tiny corpus, encoder "
                                                            "and model; for tests and smoke checks)")
    for name in ("corpus", "real-corpus", "encoder", "preprocess", "pretrain", "finetune"):
        parser.add_argument(f"--{name}-arg", action="append", default=[], metavar="ARG",
                            help=f"extra argument for the {name} command(s) (repeatable; use --{name}-arg=--opt "
                                 f"for options)")
    return parser


HELPERS = ("copy-singer", "pool-voices", "merge-processed", "copy-base", "cut-song")


def _helper_main(argv: Sequence[str]) -> int:
    """The file helpers of tools/bundle_helpers.py, as used by the steps."""
    parser = argparse.ArgumentParser(prog="build_bundle.py")
    commands = parser.add_subparsers(dest="command", required=True)
    copy = commands.add_parser("copy-singer", help="copy a singer folder's audio files (or a seeded share)")
    copy.add_argument("source", type=Path)
    copy.add_argument("target", type=Path)
    copy.add_argument("--seconds", type=float, default=None)
    copy.add_argument("--seed", type=int, default=0)
    pool = commands.add_parser("pool-voices", help="the real training voices + synthetic training singers")
    pool.add_argument("--corpus", type=Path, required=True)
    pool.add_argument("--synth", type=Path, required=True)
    pool.add_argument("--out", type=Path, required=True)
    pool.add_argument("--speech-seconds", type=float, default=None)
    pool.add_argument("--seed", type=int, default=0)
    merge = commands.add_parser("merge-processed", help="preprocessed folders as one (singer folders hard-linked)")
    merge.add_argument("sources", type=Path, nargs="+")
    merge.add_argument("--out", type=Path, required=True)
    base = commands.add_parser("copy-base", help="copy a base folder")
    base.add_argument("source", type=Path)
    base.add_argument("target", type=Path)
    cut = commands.add_parser("cut-song", help="cut a song folder's stems to FLAC")
    cut.add_argument("source", type=Path)
    cut.add_argument("target", type=Path)
    cut.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "copy-singer":
            files = bundle_helpers.copy_singer(args.source, args.target, args.seconds, args.seed)
            print(f"copied {len(files)} audio file(s) of {args.source} to {args.target}")
        elif args.command == "pool-voices":
            files = bundle_helpers.pool_voices(args.corpus, args.synth, args.out, args.speech_seconds, args.seed)
            print(f"pooled {len(files)} audio file(s) in {args.out}")
        elif args.command == "merge-processed":
            singers = bundle_helpers.merge_processed(args.sources, args.out)
            print(f"merged {len(singers)} singer(s) of {', '.join(map(str, args.sources))} in {args.out}")
        elif args.command == "copy-base":
            files = bundle_helpers.copy_base(args.source, args.target)
            print(f"copied {len(files)} file(s) of {args.source} to {args.target}")
        else:
            for path in bundle_helpers.cut_song(args.source, args.target, args.seconds):
                print(f"wrote {path}")
    except (bundle_helpers.HelperError, OSError, ValueError) as error:
        print(f"build_bundle: error: {error}", file=sys.stderr)
        return 1
    return 0


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    settings = tiny_settings(args.root) if args.tiny else BuildSettings(root=args.root)
    changes: dict = {"force": parse_force(args.force), "max_mb": args.max_mb, "dry_run": args.dry_run,
                     "threads": args.threads}
    for option, name in (("synth_steps", "synth_steps"), ("warm_steps", "warm_steps"), ("base_steps", "base_steps"),
                         ("aug_steps", "aug_steps"), ("words_steps", "words_steps"),
                         ("finetune_steps", "finetune_steps"), ("encoder_steps", "encoder_steps"),
                         ("song_seconds", "song_seconds"), ("example", "example_source")):
        if getattr(args, option) is not None:
            changes[name] = getattr(args, option)
    if args.base is not None:
        changes["base"] = args.base
        if settings.recipe == "synth":
            changes["synth_base"] = Path(args.base).name
    for option, name in (("corpus_arg", "corpus_args"), ("real_corpus_arg", "real_corpus_args"),
                         ("encoder_arg", "encoder_args"), ("preprocess_arg", "preprocess_args"),
                         ("pretrain_arg", "pretrain_args"), ("finetune_arg", "finetune_args")):
        changes[name] = (*getattr(settings, name), *getattr(args, option))
    return replace(settings, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HELPERS:
        return _helper_main(argv)
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if args.only:
            unknown = [name for name in args.only if name not in STEP_NAMES]
            if unknown:
                raise BuildError(f"--only {', '.join(unknown)}: unknown step; steps are {', '.join(STEP_NAMES)}")
        Builder(settings_from_args(args)).run(args.only)
    except BuildError as error:
        print(f"build_bundle: error: {error}", file=sys.stderr)
        return 1
    print(f"build_bundle: finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
