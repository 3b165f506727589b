"""Time ``ai-singer import contentvec`` on a checkpoint of ContentVec's real size; writes its BENCHMARKS.md section.

    .venv/bin/python tools/bench_import_contentvec.py [--repeats 2] [--no-write]

The checkpoint is random, in fairseq's format with the shapes of ContentVec's ``checkpoint_best_legacy_500.pt``
and ``hubert_base_ls960.pt`` (tools/fairseq_hubert_checkpoint.py, preset ``base``: 379 MB), written to a
temporary folder. Timed: the whole import (safe load, key map and checks, sha256 of source and output,
atomic write of the Hugging Face folder), the best of ``--repeats`` runs, then one load of the result by
``content=hubert``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_singer.features.content import load_content_encoder  # noqa: E402
from ai_singer.importers.contentvec import import_contentvec  # noqa: E402
from tools import fairseq_hubert_checkpoint as checkpoints  # noqa: E402
from tools.benchmarks_md import machine_description, replace_section  # noqa: E402

SECTION = "Import: fairseq ContentVec/HuBERT"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of updating BENCHMARKS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "checkpoint_best_legacy_500.pt", Path(tmp) / "contentvec"
        checkpoints.write_checkpoint(source, checkpoints.BASE, n_clusters=500)
        load_before = os.getloadavg()[0]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            import_contentvec(source, out, overwrite=True)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_content_encoder("hubert", out, layer=9, final_proj=True, device="cpu")
        load_seconds = time.perf_counter() - start
        sizes = {path.name: path.stat().st_size for path in [source, *sorted(out.iterdir())]}
    body = "\n".join([
        f"- Machine: {machine_description()}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; 1-minute load average "
        f"{load_before:.1f} (other jobs shared the CPUs)",
        "- Command: `.venv/bin/python tools/bench_import_contentvec.py`",
        "",
        "| what | value |",
        "|---|---|",
        f"| source (random, ContentVec legacy shapes: 12 x 768, final_proj 768->256) | "
        f"{sizes[source.name] / 1e6:.0f} MB |",
        f"| import, best of {args.repeats} (load, map, check, hash, write) | {min(times):.1f} s |",
        f"| output model.safetensors | {sizes['model.safetensors'] / 1e6:.0f} MB |",
        f"| first load by content=hubert (layer 9 + final_proj) | {load_seconds:.1f} s |",
        "",
        "Equivalence of a full-size conversion with an independent restatement of fairseq's forward is checked "
        "by `pytest -m slow tests/test_import_contentvec.py` (asserts max abs difference <= 1e-4 on 1 s of audio "
        "for layer 9 + final_proj and layer 12; 3e-6 when measured on 2026-11-30).",
    ])
    if args.no_write:
        print(body)
    else:
        replace_section(REPO / "BENCHMARKS.md", SECTION, body)
        print(f"updated BENCHMARKS.md ## {SECTION}:\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
