"""How long importing a full-size so-vits-svc base takes (the "Import: so-vits-svc base" section of
BENCHMARKS.md).

    ~/.cache/fk-venv/bin/python tools/make_sovits_fixtures.py --full-size /tmp/sovits44k   # once, ~1.2 GB
    python tools/bench_import_sovits.py /tmp/sovits44k [--repeats 2] [--write-benchmarks]

Each run is the command a user types (``python -m ai_singer.importers sovits ...``) in a fresh process, into
a temporary folder: wall time and peak RSS, generator alone and generator + discriminator.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tools` is a folder of scripts, not installed

from tools.bench_import import best_of, measurements, parse_arguments  # noqa: E402
from tools.benchmarks_md import replace_section  # noqa: E402

SECTION = "Import: so-vits-svc base"


def main() -> None:
    args = parse_arguments(__doc__.split("\n\n")[0], SECTION, "folder with G_0.pth, D_0.pth, config.json (full size)")
    src = args.source
    g_mb = (src / "G_0.pth").stat().st_size / 1e6
    d_mb = (src / "D_0.pth").stat().st_size / 1e6
    generator = ["sovits", str(src / "G_0.pth"), "--config", str(src / "config.json")]
    rows = [best_of("G_0.pth", generator, args.repeats, input_mb=g_mb),
            best_of("G_0.pth + D_0.pth", [*generator, "--discriminator", str(src / "D_0.pth")], args.repeats,
                    input_mb=g_mb + d_mb)]
    body = f"""Wall time of `python -m ai_singer.importers sovits` (a fresh process: Python start-up and imports
included, best of {args.repeats}) on so-vits-svc-fork's full-size 44.1 kHz model (its `so-vits-svc-4.0v1.json`
template, 200 speakers) with random weights, saved as its training saves checkpoints (AdamW state included),
made by `tools/make_sovits_fixtures.py --full-size`; measured with `tools/bench_import_sovits.py`.

{measurements(rows)}

The base keeps the generator (without the F0 decoder and the optimiser state) and, when given, the
discriminator, in float32 safetensors; the time goes to unpickling the checkpoints (`weights_only=True`),
writing the safetensors and hashing them."""
    print(body)
    if args.write_benchmarks:
        replace_section(REPO / "BENCHMARKS.md", SECTION, body)


if __name__ == "__main__":
    main()
