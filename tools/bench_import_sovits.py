"""How long importing a full-size so-vits-svc base takes (the "Import: so-vits-svc base" section of
BENCHMARKS.md).

    ~/.cache/fk-venv/bin/python tools/make_sovits_fixtures.py --full-size /tmp/sovits44k   # once, ~1.2 GB
    python tools/bench_import_sovits.py /tmp/sovits44k [--repeats 2] [--write-benchmarks]

Each run is the command a user types (``python -m ai_singer.importers sovits ...``) in a fresh process, into
a temporary folder: wall time and peak RSS, generator alone and generator + discriminator.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tools` is a folder of scripts, not installed

from tools.benchmarks_md import machine_description, replace_section  # noqa: E402

SECTION = "Import: so-vits-svc base"


def run_import(source: Path, with_discriminator: bool) -> tuple[float, float, float]:
    """One so-vits-svc import in a fresh process: (wall seconds, peak RSS MB, MB written)."""
    arguments = ["sovits", str(source / "G_0.pth"), "--config", str(source / "config.json")]
    if with_discriminator:
        arguments += ["--discriminator", str(source / "D_0.pth")]
    return timed_import(arguments)


def timed_import(arguments: list[str], pretrain_dir: Path | None = None) -> tuple[float, float, float]:
    """``python -m ai_singer.importers *arguments --name bench --pretrain-dir DIR`` in a fresh process (DIR a
    temporary folder unless given): (wall seconds, peak RSS MB, MB written)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = str(pretrain_dir or tmp)
        command = [sys.executable, "-m", "ai_singer.importers", *arguments, "--name", "bench", "--pretrain-dir", tmp,
                   "--overwrite"]
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                 stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS (not the largest child's so far)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise subprocess.CalledProcessError(child.returncode, command)
        peak = usage.ru_maxrss / 1024
        written = sum(f.stat().st_size for f in (Path(tmp) / "bench").iterdir()) / 1e6
    return wall, peak, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder with G_0.pth, D_0.pth, config.json (full size)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write-benchmarks", action="store_true", help=f"rewrite the '{SECTION}' section")
    args = parser.parse_args()
    rows = []
    for with_d in (False, True):
        runs = [run_import(args.source, with_d) for _ in range(args.repeats)]
        wall = min(r[0] for r in runs)
        rows.append((with_d, wall, max(r[1] for r in runs), runs[0][2]))
        print(f"discriminator={with_d}: best of {args.repeats} {wall:.1f} s, peak RSS {rows[-1][2]:.0f} MB, "
              f"wrote {rows[-1][3]:.0f} MB")
    g_mb = (args.source / "G_0.pth").stat().st_size / 1e6
    d_mb = (args.source / "D_0.pth").stat().st_size / 1e6
    load = os.getloadavg()[0]
    table = "\n".join(
        f"| {'G_0.pth + D_0.pth' if with_d else 'G_0.pth'} | {g_mb + (d_mb if with_d else 0):.0f} | {wall:.1f} | "
        f"{peak:.0f} | {written:.0f} |" for with_d, wall, peak, written in rows)
    body = f"""Wall time of `python -m ai_singer.importers sovits` (a fresh process: Python start-up and imports
included, best of {args.repeats}) on so-vits-svc-fork's full-size 44.1 kHz model (its `so-vits-svc-4.0v1.json`
template, 200 speakers) with random weights, saved as its training saves checkpoints (AdamW state included),
made by `tools/make_sovits_fixtures.py --full-size`; measured with `tools/bench_import_sovits.py`.

- Machine: {machine_description()}
- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average (1 min) {load:.1f} on {os.cpu_count()} CPUs
  (a shared machine: pessimistic).

| input | input MB | wall (s) | peak RSS MB | base written MB |
|---|---:|---:|---:|---:|
{table}

The base keeps the generator (without the F0 decoder and the optimiser state) and, when given, the
discriminator, in float32 safetensors; the time goes to unpickling the checkpoints (`weights_only=True`),
writing the safetensors and hashing them."""
    print(body)
    if args.write_benchmarks:
        replace_section(REPO / "BENCHMARKS.md", SECTION, body)


if __name__ == "__main__":
    main()
