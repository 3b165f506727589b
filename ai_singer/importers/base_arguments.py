"""The command-line arguments every base importer shares: where the imported base is written and which
content encoder it records (defaults from ``conf/``)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_base_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--name``, ``--pretrain-dir``, ``--content-path`` and ``--overwrite`` (the folder defaults: conf/)."""
    from ai_singer.config import conf_group

    paths, hubert = conf_group("paths"), conf_group("content", "hubert")
    parser.add_argument("--name", required=True, help="the base's name: written to <pretrain-dir>/<name>/")
    parser.add_argument("--pretrain-dir", type=Path, default=Path(paths["pretrain"]),
                        help=f"where bases live (default: paths.pretrain of conf/, {paths['pretrain']})")
    parser.add_argument("--content-path", default=hubert["path"],
                        help="the ContentVec/HuBERT folder (Hugging Face format, e.g. written by `ai-singer import "
                             "contentvec hubert_base.pt ...`) recorded as the base's content encoder (default: "
                             f"content/hubert's path in conf/, {hubert['path']})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing base of that name")
