"""The demo: hear the bundled example singer, or run the whole path on a held-out synthetic singer.

    ai-singer demo                        # the example song in the example singer's voice (< 1 min on CPU)
    ai-singer demo --full [--steps 600]   # synth recordings -> preprocess -> fine-tune -> convert + remix
    python -m ai_singer.demo ...          # the same

Both run the project's real stages in this process through ``ai_singer.cli`` (exactly what ``ai-singer
preprocess|train|convert ARGS`` runs; each stage is printed as that command line). The bundled files
(written by ``python tools/build_bundle.py``; layout below, relative to the bundle root) are:

    pretrain/<base>/                 the base (its name is read from the adapter; pretrain/bundle.json names the
                                     default); its content encoder is the one its config.yaml records (Whisper
                                     base from a wheel dependency, or a bundled folder such as
                                     pretrain/content/synth-hubert)
    singers/example/                 the example singer's LoRA adapter
    data/examples/song01/            vocals.flac + accompaniment stems (pad.flac, drums.flac)

The bundle root is the one that ships with the package (:func:`ai_singer.bundle.bundle_root`: inside an
installed wheel, or the checkout of an editable install); ``--bundle DIR`` or ``AI_SINGER_BUNDLE`` change it.
Outputs go to the current folder (``outputs/demo``), so the demo runs from any folder.
``--full`` writes everything under ``outputs/demo_full/`` (its own raw/processed/runs/singers/output
folders, nothing of the user's is touched) and resumes when run again: the synthetic recordings that exist
are kept, preprocess skips unchanged files, and training continues from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ai_singer.errors import UserError

# ------------------------------------------------------------------------------------- bundle layout

#: Folders and files of the bundle, relative to its root (tools/build_bundle.py writes them).
PRETRAIN_DIR = "pretrain"
SINGERS_DIR = "singers"
EXAMPLE_SINGER = "example"
EXAMPLE_SONG_DIR = "data/examples/song01"
EXAMPLE_SONG_STEMS = ("vocals.flac", "pad.flac", "drums.flac")
ADAPTER_FILES = ("adapter.yaml", "adapter.safetensors")
BASE_FILES = ("config.yaml", "generator.safetensors")
BASE_TRAINING_FILES = ("discriminator.safetensors",)  # fine-tuning (--full) also needs the discriminator
#: How to rebuild a missing bundle (printed in the error).
REBUILD_COMMAND = "python tools/build_bundle.py"
#: Environment variable naming the bundle root.
BUNDLE_ENV = "AI_SINGER_BUNDLE"

#: ``--full`` defaults: the synthetic singer (index in the seed-0 corpus: s10_baritone, held out of the
#: bundled base, which heard s00-s09), how many phrases it records, and the fine-tuning steps (fits 15 min on
#: 2 CPU cores). The fine-tune's discriminator setting follows the base (trainer.discriminator=auto).
FULL_VOICE_INDEX = 10
FULL_CORPUS_SINGERS = 12
FULL_PHRASES = 8
FULL_PHRASE_SECONDS = 4.0
FULL_STEPS = 600
#: torch threads of the demo's stages. On a busy 2-core machine a small-model training step took 0.6 s
#: with one thread and 6 s with two (threads spin waiting for each other), so one is the safe default.
DEFAULT_THREADS = 1
#: Fine-tuning settings for a CPU: small batches of short crops, no validation passes, frequent
#: checkpoints (so an interrupted demo loses little).
FULL_TRAINER_OVERRIDES = ("trainer.batch_size=4", "trainer.max_frames=128", "trainer.num_workers=0",
                          "trainer.eval_every=0", "trainer.save_every=50", "trainer.log_every=25")


class BundleMissing(UserError, FileNotFoundError):
    """Bundled files the demo needs are missing; ``str()`` names each and says how to rebuild them."""

    def __init__(self, root: Path, missing: Sequence[str]):
        self.root = Path(root)
        self.missing = list(missing)
        listing = "\n".join(f"  {self.root / name}" for name in self.missing)
        super().__init__(self.root, f"the demo bundle is incomplete; missing:\n{listing}",
                         f"rebuild the bundled files with `{REBUILD_COMMAND}` (run in the repository root; it "
                         f"skips what exists), or point --bundle / {BUNDLE_ENV} at a complete bundle")

    def message(self) -> str:
        listing = "\n".join(f"  {self.root / name}" for name in self.missing)
        return (f"the demo bundle is incomplete; missing under {self.root}:\n{listing}\n"
                f"Rebuild the bundled files with `{REBUILD_COMMAND}` (run in the repository root; "
                f"it skips what exists), or point --bundle / {BUNDLE_ENV} at a complete bundle.")


@dataclass(frozen=True)
class Bundle:
    """Where the demo's inputs are (absolute paths)."""

    root: Path
    song_dir: Path
    singers_dir: Path
    pretrain_dir: Path
    base_dir: Path
    content_groups: dict[str, str]    # the base's content encoder as preprocess settings: the config group ...
    content_values: dict[str, object]  # ... and its values (a bundled folder as an absolute path)
    base_speakers: tuple[str, ...]


def default_bundle_root() -> Path:
    """``$AI_SINGER_BUNDLE`` if set, else the bundle that ships with the package (in an installed wheel, or
    the checkout of an editable install)."""
    from ai_singer.bundle import PACKAGE_BUNDLE_DIR, bundle_root

    env = os.environ.get(BUNDLE_ENV)
    if env:
        return Path(env).resolve()
    root = bundle_root()
    return root.resolve() if root is not None else Path(__file__).resolve().parent / PACKAGE_BUNDLE_DIR


def _read_yaml(path: Path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _local_encoder(root: Path, base_config: dict) -> Path | None:
    """The base's content encoder folder inside the bundle (a relative recorded path), None for a wheel's model
    (``wheel:base``) or a path outside it."""
    from ai_singer.features.whisper_models import is_wheel_path

    path = (base_config.get("content_encoder") or {}).get("path")
    if not path or is_wheel_path(str(path)) or Path(str(path)).is_absolute():
        return None
    return root / str(path)


def find_bundle(root: str | os.PathLike | None = None, singer: str | None = EXAMPLE_SINGER,
                song_dir: str | os.PathLike | None = None, base: str | None = None,
                for_training: bool = False) -> Bundle:
    """Check that the bundle under ``root`` has what the demo needs and return where it is.

    ``singer``: the adapter whose base is used (``None``: no adapter needed, the base is ``base`` or the
    only base under ``pretrain/``); ``for_training``: the base's discriminator is needed too (fine-tuning).
    Raises :class:`BundleMissing` listing every missing file.
    """
    root = Path(root).resolve() if root is not None else default_bundle_root()
    song = Path(song_dir).resolve() if song_dir is not None else root / EXAMPLE_SONG_DIR
    missing: list[str] = []

    def need(folder: Path, names: Sequence[str]) -> None:
        for name in names:
            if not (folder / name).is_file():
                missing.append(os.path.relpath(folder / name, root))

    if song_dir is None:
        need(song, EXAMPLE_SONG_STEMS)
    elif not song.exists():
        missing.append(str(song))  # a song of the user's: the convert stage checks what is inside
    base_name = base
    if singer is not None:
        adapter_dir = root / SINGERS_DIR / singer
        need(adapter_dir, ADAPTER_FILES)
        if (adapter_dir / ADAPTER_FILES[0]).is_file() and base_name is None:
            base_name = _read_yaml(adapter_dir / ADAPTER_FILES[0]).get("base_name") or None
    if base_name is None:
        from ai_singer.bundle import read_index

        bases = sorted(p.name for p in (root / PRETRAIN_DIR).glob("*") if (p / BASE_FILES[0]).is_file())
        base_name = read_index(root).get("base") or (bases[0] if len(bases) == 1 else None)
    if base_name is None:
        missing.append(f"{PRETRAIN_DIR}/bundle.json (names the default base of: {', '.join(bases) or 'no bases'})")
        raise BundleMissing(root, missing)
    base_dir = root / PRETRAIN_DIR / base_name
    need(base_dir, BASE_FILES)
    if for_training and (base_dir / BASE_TRAINING_FILES[0]).is_file():
        need(base_dir, BASE_TRAINING_FILES)
    base_config = _read_yaml(base_dir / BASE_FILES[0]) if (base_dir / BASE_FILES[0]).is_file() else {}
    encoder_dir = _local_encoder(root, base_config)
    if encoder_dir is not None:
        need(encoder_dir, ("config.json",))
    if missing:
        raise BundleMissing(root, missing)
    from ai_singer.features.content import preprocess_content_settings

    groups, values = preprocess_content_settings(base_config.get("content_encoder"))
    if encoder_dir is not None:
        values["content.path"] = str(encoder_dir)
    return Bundle(root=root, song_dir=song, singers_dir=root / SINGERS_DIR, pretrain_dir=root / PRETRAIN_DIR,
                  base_dir=base_dir, content_groups=groups, content_values=values,
                  base_speakers=tuple(base_config.get("speakers") or ()))


def content_overrides(bundle: Bundle, with_group: bool = False) -> list[str]:
    """The base's content-encoder settings as stage overrides (a bundled folder as an absolute path, so any
    working folder works). ``with_group``: with the config group too (preprocess must be told the encoder;
    conversion starts from the one the base records and only needs the path)."""
    from ai_singer.features.content import as_overrides

    return as_overrides({**(bundle.content_groups if with_group else {}), **bundle.content_values})


# --------------------------------------------------------------------------------------------- stages

def _shell_join(words: Sequence[str]) -> str:
    import shlex

    return shlex.join([str(word) for word in words])


def merge_overrides(*groups: Sequence[str]) -> list[str]:
    """Hydra overrides in order, a later ``key=value`` replacing an earlier one for the same key (Hydra
    refuses two values for one key), so user-given ``--*-arg`` options win over the demo's settings."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            key = item.split("=", 1)[0].lstrip("+~")
            merged.pop(key, None)
            merged[key] = item
    return list(merged.values())


def run_stage(stage: str, overrides: Sequence[str], echo: Callable[[str], None] = print) -> int:
    """Run ``ai-singer <stage> <overrides>`` in this process (the real Hydra stage); its exit code."""
    from ai_singer import cli

    overrides = merge_overrides(overrides)
    echo(f"$ {_shell_join(['ai-singer', stage, *overrides])}")
    return cli.main([stage, *overrides])


def _song_outputs(output_dir: Path) -> dict[str, str]:
    """The first converted (or already converted) song's files from ``<output>/batch_report.json`` ({} if none)."""
    report = output_dir / "batch_report.json"
    if not report.is_file():
        return {}
    songs = json.loads(report.read_text(encoding="utf-8")).get("songs") or []
    ok = [song for song in songs if song.get("status") in ("ok", "skipped")]
    return dict(ok[0]["outputs"]) if ok else {}


def convert_overrides(bundle: Bundle, singer: str, singers_dir: Path, output_dir: Path,
                      extra: Sequence[str] = ()) -> list[str]:
    """The convert stage's arguments: the example song, the singer, the bundle's base and encoder."""
    return [f"songs={bundle.song_dir}", f"singer={singer}", f"paths.singers={singers_dir}",
            f"paths.pretrain={bundle.pretrain_dir}", f"paths.output={output_dir}", *content_overrides(bundle),
            "transpose=auto", *extra]


def _print_outputs(outputs: dict[str, str], echo: Callable[[str], None]) -> None:
    for label, key in (("converted vocal", "vocals"), ("mix", "mix"), ("report", "report")):
        if key in outputs:
            echo(f"  {label + ':':17}{outputs[key]}")


def run_quick(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """``ai-singer demo``: convert the bundled song with the bundled singer; 0 on success."""
    started = time.perf_counter()
    bundle = find_bundle(args.bundle, singer=args.singer, song_dir=args.song)
    output_dir = Path(args.out or "outputs/demo").resolve()
    echo(f"demo: converting {bundle.song_dir} into the voice of singer {args.singer!r} "
         f"(base {bundle.base_dir.name}, bundle {bundle.root})")
    code = run_stage("convert", convert_overrides(bundle, args.singer, bundle.singers_dir, output_dir,
                                                  args.convert_arg), echo)
    outputs = _song_outputs(output_dir)
    if code != 0 or not outputs:
        echo(f"demo: the conversion failed (exit {code}); see the messages above")
        return code or 1
    echo(f"demo: done in {time.perf_counter() - started:.1f} s; outputs in {output_dir}")
    _print_outputs(outputs, echo)
    return 0


# ------------------------------------------------------------------------------------------ --full

def _synth_module():
    """``tools.synth.corpus`` (the synthetic singer generator) from the bundle: the checkout's ``tools/``, or
    the copy an installed wheel carries."""
    from ai_singer.bundle import bundled

    synth = bundled("tools/synth/corpus.py")
    if synth is None:
        raise FileNotFoundError("tools/synth/corpus.py: demo --full generates its singer with the repository's "
                                "tools/synth, which this installation does not carry; run it from a git checkout "
                                "of ai_singer or a wheel built from one")
    repo = synth.parents[2]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from tools.synth import corpus

    return corpus


def synth_recordings(corpus_dir: Path, voice_index: int, phrases: int, seed: int = 0,
                     seconds: float = FULL_PHRASE_SECONDS, corpus_singers: int = FULL_CORPUS_SINGERS
                     ) -> tuple[str, list[Path]]:
    """Render ``phrases`` raw phrases of synthetic singer ``voice_index`` (the same voice and phrases as
    ``tools/synth_corpus.py --seed SEED`` gives that singer) into ``<corpus_dir>/raw/<singer>/``.
    Phrases already on disk are kept. Returns (singer name, wav paths)."""
    corpus = _synth_module()
    settings = corpus.CorpusSettings(out=Path(corpus_dir), singers=max(corpus_singers, voice_index + 1),
                                     phrases_per_singer=phrases, seconds=seconds, seed=seed, progress=False)
    settings.validate()
    singers = corpus.make_singers(settings)
    singer = singers[voice_index]
    paths = []
    for index in range(phrases):
        stem = Path(corpus_dir) / "raw" / singer.name / f"p{index:03d}"
        wav = stem.with_name(stem.name + ".wav")
        if not wav.is_file():
            corpus.run_job(settings, singers, ("raw", voice_index, index))
        paths.append(wav)
    return singer.name, paths


def run_full(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """``ai-singer demo --full``: the whole path on a held-out synthetic singer; 0 on success."""
    started = time.perf_counter()
    bundle = find_bundle(args.bundle, singer=None, song_dir=args.song, base=args.base, for_training=True)
    out = Path(args.out or "outputs/demo_full").resolve()
    paths = {"raw": out / "recordings" / "raw", "processed": out / "processed", "runs": out / "runs",
             "singers": out / "singers", "output": out / "converted"}
    common = [f"paths.{key}={value}" for key, value in paths.items()]
    n_stages = 4

    def stage_header(index: int, text: str) -> float:
        echo(f"\n[{index}/{n_stages}] {text}")
        return time.perf_counter()

    t0 = stage_header(1, f"synthetic recordings: {args.phrases} phrases of synthetic singer #{args.voice}")
    singer, wavs = synth_recordings(out / "recordings", args.voice, args.phrases, seed=args.seed)
    if singer in bundle.base_speakers:
        echo(f"  warning: the base {bundle.base_dir.name} was trained on {singer}; pick a held-out --voice "
             f"to see the adapter learn a new voice")
    echo(f"  {singer}: {len(wavs)} recordings in {wavs[0].parent} ({time.perf_counter() - t0:.1f} s)")

    t0 = stage_header(2, f"preprocess {singer}'s recordings")
    code = run_stage("preprocess", [*common, *content_overrides(bundle, with_group=True), *args.preprocess_arg], echo)
    if code != 0:
        return _stage_failed("preprocess", code, echo)
    echo(f"  processed dataset in {paths['processed']} ({time.perf_counter() - t0:.1f} s)")

    t0 = stage_header(3, f"fine-tune a LoRA adapter for {singer} on the frozen base {bundle.base_dir.name} "
                         f"({args.steps} steps)")
    code = run_stage("train", ["mode=finetune", f"singer={singer}", f"base={bundle.base_dir}", "peft=lora",
                               *common, f"trainer.max_steps={args.steps}", *FULL_TRAINER_OVERRIDES,
                               *args.train_arg], echo)
    if code != 0 or not (paths["singers"] / singer / ADAPTER_FILES[0]).is_file():
        return _stage_failed("train", code or 1, echo)
    echo(f"  adapter in {paths['singers'] / singer}, training state in {paths['runs'] / singer} "
         f"({time.perf_counter() - t0:.1f} s)")

    t0 = stage_header(4, f"convert {bundle.song_dir.name} into {singer}'s voice and remix")
    code = run_stage("convert", convert_overrides(bundle, singer, paths["singers"], paths["output"],
                                                  args.convert_arg), echo)
    outputs = _song_outputs(paths["output"])
    if code != 0 or not outputs:
        return _stage_failed("convert", code or 1, echo)
    echo(f"  ({time.perf_counter() - t0:.1f} s)")
    echo(f"\ndemo --full: done in {time.perf_counter() - started:.1f} s; everything is under {out}")
    _print_outputs(outputs, echo)
    return 0


def _stage_failed(stage: str, code: int, echo: Callable[[str], None]) -> int:
    echo(f"demo --full: the {stage} stage failed (exit {code}); see the messages above. Run the same command "
         f"again to resume once it is fixed.")
    return code


# --------------------------------------------------------------------------------------------- entry

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai-singer demo",
        description="Convert the bundled example song into the bundled example singer's voice (default), or "
                    "run the whole path on a held-out synthetic singer (--full).")
    parser.add_argument("--full", action="store_true",
                        help="synthesise a held-out singer's recordings, preprocess them, fine-tune an adapter "
                             "on the bundled base, convert the example song and remix (outputs/demo_full/)")
    parser.add_argument("--steps", type=int, default=FULL_STEPS,
                        help=f"--full: fine-tuning steps (default {FULL_STEPS}: the whole --full run takes about 5 min on "
                             "2 busy CPU cores)")
    parser.add_argument("--voice", type=int, default=FULL_VOICE_INDEX,
                        help=f"--full: which synthetic singer (index in the corpus; default {FULL_VOICE_INDEX}, "
                             "held out of the bundled base)")
    parser.add_argument("--phrases", type=int, default=FULL_PHRASES,
                        help=f"--full: phrases the singer records, {FULL_PHRASE_SECONDS:g} s each "
                             f"(default {FULL_PHRASES})")
    parser.add_argument("--seed", type=int, default=0, help="--full: seed of the synthetic corpus (default 0)")
    parser.add_argument("--singer", default=EXAMPLE_SINGER,
                        help=f"adapter under <bundle>/singers/ to use (default {EXAMPLE_SINGER!r})")
    parser.add_argument("--base", default=None, help="--full: base name under <bundle>/pretrain/ (default: the "
                                                     "only base there)")
    parser.add_argument("--song", default=None, help=f"song folder to convert (default <bundle>/{EXAMPLE_SONG_DIR})")
    parser.add_argument("--bundle", default=None,
                        help=f"bundle root (default ${BUNDLE_ENV}, else the files that ship with ai_singer)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch CPU threads (default {DEFAULT_THREADS}; more helps only on an otherwise idle "
                             "machine)")
    parser.add_argument("--out", default=None,
                        help="output folder (default outputs/demo, or outputs/demo_full with --full)")
    for stage in ("preprocess", "train", "convert"):
        parser.add_argument(f"--{stage}-arg", action="append", default=[], metavar="KEY=VALUE",
                            help=f"extra override for the {stage} stage (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``ai-singer demo [options]``; returns the exit code (2: the bundle is incomplete or a bad option)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.steps < 1 or args.phrases < 1 or args.voice < 0 or args.threads < 1:
        print("demo: error: --steps, --phrases and --threads must be >= 1 and --voice >= 0", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    try:
        return run_full(args) if args.full else run_quick(args)
    except UserError as error:  # BundleMissing, or a stage's error raised in this process
        print(f"demo: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
