"""The ``ai-singer`` command: one entry point for every stage.

    ai-singer preprocess [hydra overrides ...]    = python -m ai_singer.preprocess ...
    ai-singer train      [hydra overrides ...]    = python -m ai_singer.train ...
    ai-singer convert    [hydra overrides ...]    = python -m ai_singer.infer ...
    ai-singer extract-adapter [hydra overrides ...] = python -m ai_singer.extract ...
    ai-singer export singer=NAME [hydra overrides ...] = python -m ai_singer.onnx_export ...
    ai-singer concat A.wav B.wav ... -o OUT.wav [--crossfade SECONDS]
    ai-singer demo [--full [--steps N]] [options]   = python -m ai_singer.demo ...
    ai-singer singers [--singers-dir singers] [--pretrain-dir pretrain]   # installed bases and adapters
    ai-singer blend alice:0.6,bob:0.4 out=NAME [--singers-dir singers]   # a blend saved as a new singer
    ai-singer import KIND SRC DST ...             = python -m ai_singer.importers KIND SRC DST ...
    ai-singer ui [--host 127.0.0.1] [--port N] [--workdir DIR]   # the web interface (extra: ui)

The Hydra stages receive the remaining arguments unchanged (``--help``, ``--cfg job`` and ``-m`` work as
with ``python -m``); their defaults live in ``conf/`` only. Stage modules are imported by name when their
command runs, so ``convert`` and ``concat`` never load training code.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: Sub-command -> module whose ``main()`` (a Hydra entry point) runs it.
HYDRA_STAGES = {
    "preprocess": ("ai_singer.preprocess", "decode, slice, normalise and extract features of raw recordings"),
    "train": ("ai_singer.train", "pretrain a base (mode=pretrain) or fine-tune a singer adapter (mode=finetune)"),
    "convert": ("ai_singer.infer", "convert songs to a singer's voice and remix them (songs=PATH singer=NAME)"),
    "extract-adapter": ("ai_singer.extract", "turn a full fine-tuned singer model into a LoRA adapter on its base "
                                             "(base=DIR full=PATH out=singers/NAME rank=16)"),
    "export": ("ai_singer.onnx_export", "write a singer (base + adapter, merged) as ONNX for conversion with ONNX "
                                        "Runtime (singer=NAME; then convert engine=onnx or auto)"),
}


def _parser() -> argparse.ArgumentParser:
    from ai_singer.config import conf_file, conf_group

    parser = argparse.ArgumentParser(
        prog="ai-singer", description="Singing-voice conversion: one frozen base, a small adapter per singer.",
        epilog="Hydra stages take key=value overrides, e.g. `ai-singer convert songs=songs/ singer=alice "
               "transpose=auto`; `ai-singer convert --cfg job` prints the full config with its defaults.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in HYDRA_STAGES.items():
        stage = commands.add_parser(name, help=summary, add_help=False,
                                    description=f"{summary}. Arguments go to `python -m {module}` unchanged.")
        stage.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides (key=value ...)")
    commands.add_parser("import", add_help=False, help="turn files of other projects (a fairseq ContentVec "
                        "checkpoint, a so-vits-svc base) into ai_singer's formats; see `ai-singer import --help`")
    commands.add_parser("demo", add_help=False, help="convert the bundled example song (--full: the whole path on "
                        "a held-out synthetic singer); see `ai-singer demo --help`")
    singers = commands.add_parser("singers", help="list the installed bases and singer adapters, and which "
                                  "adapter fits which base",
                                  description="List pretrain/<base>/ and singers/<name>/, then the bundled ones "
                                              "a folder of the same name does not replace (from their YAML "
                                              "descriptions; weights are not read).")
    paths = conf_group("paths")  # the folders' defaults are conf/paths's, as for the stages
    singers.add_argument("--singers-dir", default=paths["singers"],
                         help=f"adapter folders (default: paths.singers of conf/, {paths['singers']})")
    singers.add_argument("--pretrain-dir", default=paths["pretrain"],
                         help=f"base folders (default: paths.pretrain of conf/, {paths['pretrain']})")
    ui = commands.add_parser("ui", help="the web interface: convert, fine-tune and manage singers in a browser "
                             "(pip install -e '.[ui]')",
                             description="Serve the web interface (Gradio) on this machine; defaults in conf/ui.yaml.")
    ui_conf = conf_file("ui")
    ui.add_argument("--host", default=None, help=f"address to listen on (default: {ui_conf['host']}, this machine "
                    "only; 0.0.0.0 exposes the page, which has no login, to the network)")
    ui.add_argument("--port", type=int, default=None, help=f"port (default: {ui_conf['port']}; 0: any free port)")
    ui.add_argument("--workdir", default=None, help="folder for the sessions' uploads and outputs (default: a "
                    "temporary folder, removed on exit)")
    ui.add_argument("--singers-dir", default=None, help=f"adapter folders (default: {paths['singers']})")
    ui.add_argument("--pretrain-dir", default=None, help=f"base folders (default: {paths['pretrain']})")
    ui.add_argument("--raw-dir", default=None, help=f"recordings folders the Train page may pick (default: "
                    f"{paths['raw']})")
    blend = commands.add_parser("blend", help="save a weighted blend of singers as a new singer (no training)",
                                description="Blend adapters of one base with weights (LoRA deltas summed with "
                                            "their weights, singer vectors interpolated) and save the result as "
                                            "singers/NAME, which records its parents, weights and base.")
    blend.add_argument("spec", help="NAME:WEIGHT,NAME:WEIGHT,... e.g. alice:0.6,bob:0.4 (weights > 0, normalised)")
    blend.add_argument("out", help="out=NAME: the new singer's folder name under --singers-dir")
    blend.add_argument("--singers-dir", default=paths["singers"],
                       help=f"adapter folders, read and written (default: paths.singers of conf/, {paths['singers']})")
    blend.add_argument("--overwrite", action="store_true", help="replace an existing singer NAME")
    prints = commands.add_parser("voice-print", help="take a singer's voice print again from its processed clips "
                                 "(singers fine-tuned before they kept one; refine.speaker_weight uses it)",
                                 description="Average the Whisper encoder's states over a singer's training clips "
                                             "and keep them in singers/NAME/voice_print.safetensors (the adapter "
                                             "itself is unchanged).")
    prints.add_argument("singer", help="the singer's folder name under --singers-dir")
    prints.add_argument("--data", required=True, help="the processed dataset it was fine-tuned on (manifest.jsonl)")
    prints.add_argument("--encoder", default=None, help="Whisper encoder (default: refine.encoder of conf/infer.yaml)")
    prints.add_argument("--singers-dir", default=paths["singers"],
                        help=f"adapter folders (default: paths.singers of conf/, {paths['singers']})")
    concat = commands.add_parser("concat", help="join audio files end to end with equal-power crossfades",
                                 description="Concatenate tracks; each is converted to the first track's sample "
                                             "rate and channel count.")
    concat.add_argument("tracks", nargs="+", help="audio files, in order")
    concat.add_argument("-o", "--output", required=True, help="output file (.wav or .flac)")
    concat.add_argument("--crossfade", type=float, default=None, metavar="SECONDS",
                        help="overlap between consecutive tracks (default: none)")
    concat.add_argument("--subtype", default=None, help="sample format written, e.g. PCM_16, PCM_24, FLOAT")
    return parser


def _run_hydra_stage(name: str, overrides: Sequence[str]) -> int:
    """Run a stage's Hydra ``main()`` as if it were ``python -m <module> <overrides>``; its exit code."""
    module = importlib.import_module(HYDRA_STAGES[name][0])
    saved = sys.argv
    sys.argv = [f"ai-singer {name}", *overrides]
    try:
        module.main()
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _run_concat(args: argparse.Namespace) -> int:
    from ai_singer.errors import UserError
    from ai_singer.mix import concat_tracks

    options = {}
    if args.crossfade is not None:
        options["crossfade_s"] = args.crossfade
    if args.subtype is not None:
        options["subtype"] = args.subtype
    try:
        result = concat_tracks(args.tracks, args.output, **options)
    except (UserError, ValueError) as error:
        print(f"concat: error: {error}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"concat: warning: {warning}", file=sys.stderr)
    print(f"wrote {result.path}: {result.seconds:.2f} s, {result.sample_rate} Hz, {result.channels} channel(s)")
    return 0


def _run_singers(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ai_singer.bundle import bundle_root
    from ai_singer.catalog import format_catalog, list_installed

    pretrain_dir, singers_dir = Path(args.pretrain_dir), Path(args.singers_dir)
    missing = [str(p) for p in (pretrain_dir, singers_dir) if not p.is_dir()]
    if len(missing) == 2 and bundle_root() is None:
        print(f"singers: error: neither {missing[0]} nor {missing[1]} is a folder (run in the project folder, or "
              "pass --pretrain-dir / --singers-dir)", file=sys.stderr)
        return 2
    bases, adapters = list_installed(pretrain_dir, singers_dir)
    print(format_catalog(bases, adapters, pretrain_dir, singers_dir))
    return 0


def _run_ui(args: argparse.Namespace) -> int:
    from ai_singer.errors import UserError, report

    try:
        from ai_singer.webui.app import UiSettings, launch

        settings = UiSettings.from_conf(host=args.host, port=args.port, workdir=args.workdir,
                                        singers_dir=args.singers_dir, pretrain_dir=args.pretrain_dir,
                                        raw_dir=args.raw_dir)
        print(f"ai-singer ui: serving on http://{settings.host}:{settings.port or 'a free port'} (Ctrl-C stops)",
              flush=True)
        if settings.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"ai-singer ui: warning: --host {settings.host} lets other machines reach the page, which has no "
                  "login: anyone who reaches it can use this machine's CPU/GPU and disk", file=sys.stderr, flush=True)
        launch(settings)
    except UserError as error:
        return report("ui", error)
    except KeyboardInterrupt:
        return 130
    return 0


def _run_blend(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ai_singer.errors import UserError
    from ai_singer.singer_spec import parse_singer_spec
    from ai_singer.values import plain_name

    try:
        spec = parse_singer_spec(args.spec, "spec")
        out = plain_name(args.out[len("out="):] if args.out.startswith("out=") else args.out, "out")
        from ai_singer.blend import write_blend
        from ai_singer.convert import singer_dir

        parents = [singer_dir(name, args.singers_dir) for name in spec.names]
        folder = write_blend(spec, parents, Path(args.singers_dir) / out, overwrite=args.overwrite)
    except UserError as error:
        print(f"blend: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {folder}: {spec.describe()}")
    return 0


def _run_voice_print(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ai_singer.config import conf_file
    from ai_singer.errors import UserError
    from ai_singer.values import plain_name
    from ai_singer.voice_print import add_voice_print

    folder = Path(args.singers_dir) / plain_name(args.singer, "singer")
    encoder = args.encoder or str(conf_file("infer")["refine"]["encoder"])
    try:
        add_voice_print(folder, args.data, encoder)
    except (UserError, ValueError) as error:
        print(f"voice-print: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {folder / 'voice_print.safetensors'} ({encoder})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ai-singer COMMAND ...``; returns the exit code (also used by ``python -m ai_singer``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HYDRA_STAGES:  # everything after the stage name is Hydra's, options included
        return _run_hydra_stage(argv[0], argv[1:])
    if argv and argv[0] == "demo":
        from ai_singer.demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "import":
        from ai_singer.importers.__main__ import main as import_main

        return import_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "singers":
        return _run_singers(args)
    if args.command == "ui":
        return _run_ui(args)
    if args.command == "blend":
        return _run_blend(args)
    if args.command == "voice-print":
        return _run_voice_print(args)
    return _run_concat(args)


if __name__ == "__main__":
    sys.exit(main())
