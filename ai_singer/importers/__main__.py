"""``python -m ai_singer.importers KIND ...`` (= ``ai-singer import KIND ...``): one sub-command per kind of
foreign file, each in its own module.

    python -m ai_singer.importers contentvec SRC.pt DST_FOLDER    # fairseq HuBERT/ContentVec -> HF folder
    python -m ai_singer.importers sovits G_0.pth --config config.json --name NAME   # so-vits-svc base
    python -m ai_singer.importers rvc f0G40k.pth --discriminator f0D40k.pth --name NAME   # RVC base

A module registered in :data:`IMPORTERS` provides ``add_arguments(parser)`` and ``run(args) -> int``. A
user mistake (:class:`~ai_singer.errors.UserError`: a missing, damaged, foreign or mismatched file, an
existing output) ends as one line on stderr, ``import KIND: error: ...``, with exit code 2, and nothing
written.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ai_singer.errors import is_user_error, report

#: Sub-command -> (module, one-line summary). Add a kind by adding its module here.
IMPORTERS: dict[str, tuple[str, str]] = {
    "contentvec": ("ai_singer.importers.contentvec",
                   "fairseq HuBERT/ContentVec checkpoint (checkpoint_best_legacy_500.pt, hubert_base.pt) -> the "
                   "Hugging Face folder content=hubert reads"),
    "sovits": ("ai_singer.importers.sovits",
               "so-vits-svc 4.0/4.1 or so-vits-svc-fork generator (+ discriminator) and config.json -> a base "
               "in pretrain/<name>/"),
    "rvc": ("ai_singer.importers.rvc",
            "RVC v1/v2 base (f0G40k.pth, + f0D40k.pth) or exported singer model (NAME.pth, with --base) -> a base "
            "in pretrain/<name>/"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-singer import",
                                     description="Turn weights made by other projects into ai_singer's formats. "
                                                 "Files are read without running anything they contain.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for name, (module, summary) in IMPORTERS.items():
        sub = kinds.add_parser(name, help=summary, description=summary)
        importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen importer; returns the exit code."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return importlib.import_module(IMPORTERS[args.kind][0]).run(args)
    except Exception as error:
        if is_user_error(error):
            return report(f"import {args.kind}", error)
        raise


if __name__ == "__main__":
    sys.exit(main())
