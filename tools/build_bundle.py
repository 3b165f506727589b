"""Rebuild every bundled file (content encoder, base, example singer, example song) with the project's own
commands, in order. Run it in the repository root:

    python tools/build_bundle.py                      # build what is missing, skip what exists
    python tools/build_bundle.py --force pretrain     # redo one step (STEP+ = that step and every later one)
    python tools/build_bundle.py --tiny --root /tmp/b # a tiny bundle in seconds (tests, smoke checks)

Steps (each prints the exact command it runs, with this interpreter; skipped when its outputs exist):

    corpus              tools/synth_corpus.py --seed 0          -> data/synth (12 singers, 2 held out, songs)
    encoder             tools/train_content_encoder.py          -> pretrain/content/synth-hubert
    preprocess-base     ai_singer.preprocess singers=[10 train] -> data/processed_synth
    pretrain            ai_singer.train mode=pretrain           -> pretrain/synth-small (float16)
    preprocess-example  a held-out singer's raw clips as 'example' -> data/processed_example
    finetune            ai_singer.train mode=finetune (LoRA)    -> singers/example
    song                first ~15 s of data/synth/songs/song00  -> data/examples/song01/*.flac
    manifest            sizes, sha256, commands and versions    -> pretrain/BUNDLE.md

The bundle (what the demo and a fresh clone need) must stay under ``--max-mb`` (25 MB); the build fails
loudly when it is larger. Training steps resume from ``runs/bundle/<run>`` when forced again (delete that
folder to train from scratch). Two helper commands used by the steps: ``copy-singer SRC DST`` and
``cut-song SRC DST --seconds S``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib
import json
import os
import platform
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: find ai_singer

from ai_singer.demo import (ADAPTER_FILES, BASE_FILES, CONTENT_ENCODER_DIR, CONTENT_ENCODER_FILES,  # noqa: E402
                            EXAMPLE_SINGER, EXAMPLE_SONG_DIR, EXAMPLE_SONG_STEMS, PRETRAIN_DIR, SINGERS_DIR)

# Intermediate folders (relative to the root; not part of the bundle).
CORPUS_DIR = "data/synth"
PROCESSED_BASE_DIR = "data/processed_synth"
EXAMPLE_RAW_DIR = "data/synth/example_raw"  # <EXAMPLE_RAW_DIR>/example/: the example singer's raw clips
PROCESSED_EXAMPLE_DIR = "data/processed_example"
RUNS_DIR = "runs/bundle"
MANIFEST_FILE = "pretrain/BUNDLE.md"
AUDIO_SUFFIXES = (".wav", ".flac")


class BuildError(Exception):
    """A step failed or the bundle is unusable (too large, inputs missing); ``str()`` says which and why."""


@dataclass(frozen=True)
class BuildSettings:
    """What to build and how. Paths are relative to ``root`` (the working directory of every command)."""

    root: Path = REPO
    seed: int = 0
    corpus_args: tuple[str, ...] = ()          # extra tools/synth_corpus.py options
    encoder_steps: int = 3000
    encoder_hidden: int = 128
    encoder_layers: int = 3                    # its last layer is the content layer
    encoder_args: tuple[str, ...] = ()         # extra tools/train_content_encoder.py options
    model: str = "small"
    base_name: str = "synth-small"
    pretrain_steps: int = 5000
    finetune_steps: int = 1500
    example_source: str | None = None          # synthetic singer fine-tuned as 'example' (default: last held out)
    source_song: str = "song00"
    song_seconds: float = 15.0
    preprocess_args: tuple[str, ...] = ()      # extra overrides of both preprocess steps
    # The CPU settings the bundled base and example singer were trained with (pretrain/BUNDLE.md).
    pretrain_args: tuple[str, ...] = ("trainer.batch_size=6", "trainer.max_frames=64", "trainer.num_workers=0",
                                      "trainer.learning_rate=3e-4", "trainer.save_every=100", "trainer.keep_last=2",
                                      "trainer.eval_every=500", "trainer.log_every=25")
    finetune_args: tuple[str, ...] = ("trainer.batch_size=4", "trainer.max_frames=128", "trainer.num_workers=0",
                                      "trainer.save_every=100", "trainer.eval_every=250", "trainer.log_every=25")
    max_mb: float = 25.0
    force: frozenset[str] = frozenset()
    in_process: bool = False                   # run the same command lines in this interpreter (tests)
    dry_run: bool = False                      # print the steps and their commands, run nothing
    threads: int | None = None                 # OMP_NUM_THREADS of every command (None: torch's default)


def tiny_settings(root: str | os.PathLike, **changes) -> BuildSettings:
    """A bundle built in seconds: 3 synthetic singers (1 held out), a tiny encoder and model, a few steps."""
    values = dict(
        root=Path(root),
        corpus_args=("--singers", "3", "--held-out", "1", "--phrases-per-singer", "2", "--seconds", "3.0",
                     "--songs", "1", "--song-seconds", "8", "--parallel-phrases", "1"),
        encoder_steps=3, encoder_hidden=32, encoder_layers=2,
        encoder_args=("--heads", "2", "--intermediate", "64", "--conv-dim", "16,16,16,32,32,32,32",
                      "--pos-conv-kernel", "8", "--pos-conv-groups", "4", "--batch-size", "2",
                      "--crop-frames", "50", "--dropout", "0.0"),
        model="tiny", base_name="synth-tiny", pretrain_steps=2, finetune_steps=2, song_seconds=5.0,
        preprocess_args=("f0.method=dio", "num_workers=0", "pitch_plots=false", "slicer.min_length_s=1.0"),
        pretrain_args=("trainer=tiny",), finetune_args=("trainer=tiny",),
    )
    values.update(changes)
    return BuildSettings(**values)


@dataclass(frozen=True)
class Step:
    """One build step: ``commands`` (argv lists starting with the interpreter) make ``outputs`` (relative to
    the root; the step is skipped when all exist). ``action``: an in-process step instead of commands."""

    name: str
    title: str
    outputs: Callable[["Builder"], list[str]]
    commands: Callable[["Builder"], list[list[str]]] | None = None
    action: Callable[["Builder"], None] | None = None


@dataclass
class StepRecord:
    step: Step
    commands: list[str]
    status: str  # "ran" | "skipped" | "dry-run"
    seconds: float = 0.0


@dataclass
class BuildResult:
    records: list[StepRecord]
    files: list[tuple[str, int, str]] = field(default_factory=list)  # (path relative to root, bytes, sha256)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.files)


# ------------------------------------------------------------------------------------------- the steps

def _content_args(b: "Builder") -> list[str]:
    layers = b.settings.encoder_layers
    return [f"content.path={CONTENT_ENCODER_DIR}", f"content.layer={layers}", "content.final_proj=false"]


def _base_dir(b: "Builder") -> str:
    return f"{PRETRAIN_DIR}/{b.settings.base_name}"


STEPS: tuple[Step, ...] = (
    Step("corpus", "synthetic singing corpus",
         outputs=lambda b: [f"{CORPUS_DIR}/corpus.json"],
         commands=lambda b: [[b.python, b.tool("synth_corpus.py"), "--out", CORPUS_DIR, "--seed", str(b.settings.seed),
                              "--no-progress", *b.settings.corpus_args]]),
    Step("encoder", "content encoder (HuBERT format) trained on the corpus's training singers",
         outputs=lambda b: [f"{CONTENT_ENCODER_DIR}/{name}" for name in CONTENT_ENCODER_FILES],
         commands=lambda b: [[b.python, b.tool("train_content_encoder.py"), "--corpus", CORPUS_DIR,
                              "--out", CONTENT_ENCODER_DIR, "--steps", str(b.settings.encoder_steps),
                              "--hidden", str(b.settings.encoder_hidden), "--layers", str(b.settings.encoder_layers),
                              "--seed", str(b.settings.seed), "--no-progress", *b.settings.encoder_args]]),
    Step("preprocess-base", "preprocess the training singers",
         outputs=lambda b: [f"{PROCESSED_BASE_DIR}/stats.json", f"{PROCESSED_BASE_DIR}/manifest.jsonl"],
         commands=lambda b: [[b.python, "-m", "ai_singer.preprocess", f"paths.raw={CORPUS_DIR}/raw",
                              f"paths.processed={PROCESSED_BASE_DIR}", *_content_args(b),
                              f"singers=[{','.join(b.train_singers())}]", "progress=false",
                              *b.settings.preprocess_args]]),
    Step("pretrain", "pretrain the base on the training singers",
         outputs=lambda b: [f"{_base_dir(b)}/{name}" for name in (*BASE_FILES, "discriminator.safetensors")],
         commands=lambda b: [[b.python, "-m", "ai_singer.train", "mode=pretrain", f"name={b.settings.base_name}",
                              f"model={b.settings.model}", f"paths.processed={PROCESSED_BASE_DIR}",
                              f"paths.pretrain={PRETRAIN_DIR}", f"paths.runs={RUNS_DIR}",
                              f"trainer.max_steps={b.settings.pretrain_steps}",
                              "export_dtype=float16", f"seed={b.settings.seed}", *b.settings.pretrain_args]]),
    Step("preprocess-example", "preprocess a held-out singer's recordings as singer 'example'",
         outputs=lambda b: [f"{PROCESSED_EXAMPLE_DIR}/stats.json", f"{PROCESSED_EXAMPLE_DIR}/manifest.jsonl"],
         commands=lambda b: [[b.python, b.tool("build_bundle.py"), "copy-singer",
                              f"{CORPUS_DIR}/raw/{b.example_source()}", f"{EXAMPLE_RAW_DIR}/{EXAMPLE_SINGER}"],
                             [b.python, "-m", "ai_singer.preprocess", f"paths.raw={EXAMPLE_RAW_DIR}",
                              f"paths.processed={PROCESSED_EXAMPLE_DIR}", *_content_args(b), "progress=false",
                              *b.settings.preprocess_args]]),
    Step("finetune", "fine-tune the example singer's LoRA adapter on the frozen base",
         outputs=lambda b: [f"{SINGERS_DIR}/{EXAMPLE_SINGER}/{name}" for name in ADAPTER_FILES],
         commands=lambda b: [[b.python, "-m", "ai_singer.train", "mode=finetune", f"singer={EXAMPLE_SINGER}",
                              f"base={_base_dir(b)}", "peft=lora", f"paths.processed={PROCESSED_EXAMPLE_DIR}",
                              f"paths.singers={SINGERS_DIR}", f"paths.runs={RUNS_DIR}",
                              f"trainer.max_steps={b.settings.finetune_steps}",
                              f"seed={b.settings.seed}", *b.settings.finetune_args]]),
    Step("song", "the example song: the first seconds of a synthetic song's stems",
         outputs=lambda b: [f"{EXAMPLE_SONG_DIR}/{name}" for name in EXAMPLE_SONG_STEMS],
         commands=lambda b: [[b.python, b.tool("build_bundle.py"), "cut-song",
                              f"{CORPUS_DIR}/songs/{b.settings.source_song}", EXAMPLE_SONG_DIR,
                              "--seconds", f"{b.settings.song_seconds:g}"]]),
    Step("manifest", "list the bundled files, their sizes and hashes, the commands and versions",
         outputs=lambda b: [], action=lambda b: b.write_manifest()),
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
        """The synthetic singer fine-tuned as 'example': ``example_source`` or the last held-out singer."""
        singers = self.corpus_info()["singers"]
        if self.settings.example_source:
            if self.settings.example_source not in {s["name"] for s in singers}:
                raise BuildError(f"example singer {self.settings.example_source!r} is not in the corpus")
            return self.settings.example_source
        held_out = [s["name"] for s in singers if s.get("split") == "held_out"]
        if not held_out:
            raise BuildError(f"{self.root / CORPUS_DIR / 'corpus.json'}: no held-out singer to use as the example")
        return held_out[-1]

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
        return bool(outputs) and all((self.root / path).is_file() for path in outputs)

    def run(self, steps: Sequence[str] | None = None) -> BuildResult:
        """Run every step (or the named ones) in order; raises BuildError when one fails."""
        wanted = STEP_NAMES if steps is None else tuple(steps)
        selected = [step for step in STEPS if step.name in wanted]
        self.root.mkdir(parents=True, exist_ok=True)
        self.echo(f"build_bundle: root {self.root}")
        for number, step in enumerate(selected, 1):
            prefix = f"[{number}/{len(selected)}] {step.name}"
            if step.name not in self.settings.force and self.is_done(step):
                self.echo(f"{prefix}: skipped ({', '.join(step.outputs(self))} already there; --force {step.name} "
                          "to redo)")
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
        files = bundle_files(self.root, self.settings.base_name)
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
    def write_manifest(self) -> Path:
        """``pretrain/BUNDLE.md``: each bundled file with size and sha256, the commands, the versions."""
        from ai_singer.atomic import atomic_write_text

        files = bundle_files(self.root, self.settings.base_name)
        total = sum(size for _, size, _ in files)
        lines = ["# The bundled files", "",
                 f"Written by `tools/build_bundle.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
                 f"Total: {total / 1e6:.2f} MB in {len(files)} files (limit {self.settings.max_mb:g} MB). "
                 "Rebuild with `python tools/build_bundle.py` in the repository root (it skips what exists; "
                 "`--force STEP` redoes a step).", "",
                 "| file | bytes | sha256 |", "|---|---:|---|"]
        lines += [f"| `{path}` | {size} | `{digest}` |" for path, size, digest in files]
        lines += ["", "## Commands", "", "Run in the repository root, in this order:", ""]
        records = {record.step.name: record for record in self.records}
        for step in STEPS:
            if step.action is not None:
                continue
            commands = records[step.name].commands if step.name in records else self.command_lines(step)
            lines += [f"{step.name}: {step.title}", "", "```bash", *commands, "```", ""]
        lines += ["## Versions", "", *[f"- {line}" for line in versions()], ""]
        path = self.root / MANIFEST_FILE
        atomic_write_text(path, "\n".join(lines))
        self.echo(f"wrote {path}")
        return path


def bundle_files(root: Path, base_name: str) -> list[tuple[str, int, str]]:
    """Every bundled file as (path relative to root, bytes, sha256), sorted; hidden and temp files excluded."""
    folders = [CONTENT_ENCODER_DIR, f"{PRETRAIN_DIR}/{base_name}", f"{SINGERS_DIR}/{EXAMPLE_SINGER}", EXAMPLE_SONG_DIR]
    files = []
    for folder in folders:
        base = Path(root) / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts) \
                    and not path.name.endswith(".tmp"):
                files.append((relative.as_posix(), path.stat().st_size, sha256_of(path)))
    return files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# ----------------------------------------------------------------------------------- helper commands

def copy_singer(source: Path, target: Path) -> list[Path]:
    """Copy the audio files of a singer folder (``*.wav``/``*.flac``, recursively) into ``target``; files
    already there with the same size are kept. Returns the target files."""
    from ai_singer.atomic import atomic_path

    source, target = Path(source), Path(target)
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise BuildError(f"{source}: no audio files to copy")
    copied = []
    for path in files:
        destination = target / path.relative_to(source)
        if not destination.is_file() or destination.stat().st_size != path.stat().st_size:
            destination.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(destination) as tmp:
                shutil.copyfile(path, tmp)
        copied.append(destination)
    return copied


def cut_song(source: Path, target: Path, seconds: float, fade_s: float = 0.02, search_s: float = 2.0) -> list[Path]:
    """Cut every stem of the song folder ``source`` to about ``seconds`` and write them to ``target`` as
    PCM_16 FLAC (``<stem>.flac``). The cut is at the quietest 10 ms of the vocal in the last ``search_s``
    before ``seconds`` (a rest when there is one), with a ``fade_s`` fade-out. Returns the files written."""
    import numpy as np

    from ai_singer.audio import audio_info, frame_db, load_audio, write_audio

    source, target = Path(source), Path(target)
    stems = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES) \
        if source.is_dir() else []
    vocals = [p for p in stems if p.stem == "vocals"]
    if not vocals:
        raise BuildError(f"{source}: no vocals.wav/.flac stem to cut")
    sr = audio_info(vocals[0]).sample_rate
    vocal, _ = load_audio(vocals[0])
    n = min(int(round(seconds * sr)), vocal.shape[-1])
    hop = max(1, sr // 100)
    start = max(0, n - int(search_s * sr))
    levels = frame_db(vocal.mean(axis=0)[start:n], hop)
    if levels.size:
        quietest = int(np.argmin(levels[: max(1, (n - start) // hop)]))
        n = start + quietest * hop + hop // 2
    fade = np.linspace(1.0, 0.0, min(n, int(fade_s * sr)), dtype=np.float32)
    written = []
    for path in stems:
        audio, rate = load_audio(path, 0, n)
        if rate != sr:
            raise BuildError(f"{path}: sample rate {rate} Hz differs from the vocal's {sr} Hz")
        audio = audio[:, :n].copy()
        audio[:, audio.shape[1] - fade.shape[0]:] *= fade[: audio.shape[1]]
        out = target / f"{path.stem}.flac"
        write_audio(out, audio[0] if audio.shape[0] == 1 else audio, sr, subtype="PCM_16")
        written.append(out)
    return written


# ---------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Steps: " + ", ".join(STEP_NAMES))
    defaults = BuildSettings()
    parser.add_argument("--root", type=Path, default=REPO, help="where data/, pretrain/, singers/ are written "
                                                                "(default: the repository)")
    parser.add_argument("--force", action="append", default=[], metavar="STEP",
                        help="redo STEP even if its outputs exist (repeatable; STEP+ = it and every later step; all)")
    parser.add_argument("--dry-run", action="store_true", help="print each step's commands (and whether it would "
                                                               "be skipped), run nothing")
    parser.add_argument("--only", action="append", default=None, metavar="STEP", help="run only these steps")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help=f"base training steps (default {defaults.pretrain_steps}; --tiny: 2)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help=f"example adapter training steps (default {defaults.finetune_steps}; --tiny: 2)")
    parser.add_argument("--encoder-steps", type=int, default=None,
                        help=f"content encoder training steps (default {defaults.encoder_steps})")
    parser.add_argument("--song-seconds", type=float, default=None,
                        help=f"length of the example song (default about {defaults.song_seconds:g} s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="run every command with OMP_NUM_THREADS=N (on a busy 2-core machine a training step "
                             "was 4-12x faster with 1 than with 2); default: torch's own choice")
    parser.add_argument("--max-mb", type=float, default=defaults.max_mb, help="fail when the bundle is larger")
    parser.add_argument("--tiny", action="store_true", help="a tiny bundle in seconds (tiny corpus, encoder and "
                                                            "model; for tests and smoke checks)")
    for name in ("corpus", "encoder", "preprocess", "pretrain", "finetune"):
        parser.add_argument(f"--{name}-arg", action="append", default=[], metavar="ARG",
                            help=f"extra argument for the {name} command(s) (repeatable; use --{name}-arg=--opt "
                                 f"for options)")
    return parser


def _helper_main(argv: Sequence[str]) -> int:
    """``copy-singer SRC DST`` and ``cut-song SRC DST --seconds S`` (used by the steps)."""
    parser = argparse.ArgumentParser(prog="build_bundle.py")
    commands = parser.add_subparsers(dest="command", required=True)
    copy = commands.add_parser("copy-singer", help="copy a singer folder's audio files")
    copy.add_argument("source", type=Path)
    copy.add_argument("target", type=Path)
    cut = commands.add_parser("cut-song", help="cut a song folder's stems to FLAC")
    cut.add_argument("source", type=Path)
    cut.add_argument("target", type=Path)
    cut.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "copy-singer":
            files = copy_singer(args.source, args.target)
            print(f"copied {len(files)} audio file(s) of {args.source} to {args.target}")
        else:
            for path in cut_song(args.source, args.target, args.seconds):
                print(f"wrote {path}")
    except (BuildError, OSError, ValueError) as error:
        print(f"build_bundle: error: {error}", file=sys.stderr)
        return 1
    return 0


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    settings = tiny_settings(args.root) if args.tiny else BuildSettings(root=args.root)
    changes: dict = {"force": parse_force(args.force), "max_mb": args.max_mb, "dry_run": args.dry_run,
                     "threads": args.threads}
    for option, name in (("pretrain_steps", "pretrain_steps"), ("finetune_steps", "finetune_steps"),
                         ("encoder_steps", "encoder_steps"), ("song_seconds", "song_seconds")):
        if getattr(args, option) is not None:
            changes[name] = getattr(args, option)
    for option, name in (("corpus_arg", "corpus_args"), ("encoder_arg", "encoder_args"),
                         ("preprocess_arg", "preprocess_args"), ("pretrain_arg", "pretrain_args"),
                         ("finetune_arg", "finetune_args")):
        changes[name] = (*getattr(settings, name), *getattr(args, option))
    return replace(settings, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("copy-singer", "cut-song"):
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
