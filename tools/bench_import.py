"""What the import benchmarks share (tools/bench_import_sovits.py, tools/bench_import_rvc.py): timing
``python -m ai_singer.importers ...`` in a fresh process, and the measurement table of their BENCHMARKS.md
sections."""
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

from tools.benchmarks_md import machine_description  # noqa: E402


def parse_arguments(description: str, section: str, source_help: str) -> argparse.Namespace:
    """The import benchmarks' command line: ``SOURCE [--repeats N] [--write-benchmarks]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("source", type=Path, help=source_help)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write-benchmarks", action="store_true", help=f"rewrite the '{section}' section")
    return parser.parse_args()


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


def best_of(label: str, arguments: list[str], repeats: int, pretrain_dir: Path | None = None,
            input_mb: float = 0.0) -> tuple[str, float, float, float, float]:
    """:func:`timed_import` ``repeats`` times; prints and returns a row (label, input MB, best wall seconds,
    largest peak RSS MB, MB written)."""
    runs = [timed_import(arguments, pretrain_dir) for _ in range(repeats)]
    row = (label, input_mb, min(r[0] for r in runs), max(r[1] for r in runs), runs[0][2])
    print(f"{label}: best of {repeats} {row[2]:.1f} s, peak RSS {row[3]:.0f} MB, wrote {row[4]:.0f} MB")
    return row


def measurements(rows: list[tuple[str, float, float, float, float]]) -> str:
    """The machine and date lines and the table of ``rows`` (from :func:`best_of`) for a BENCHMARKS.md section."""
    table = "\n".join(f"| {label} | {size:.0f} | {wall:.1f} | {peak:.0f} | {written:.0f} |"
                      for label, size, wall, peak, written in rows)
    load = os.getloadavg()[0]
    return f"""- Machine: {machine_description()}
- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average (1 min) {load:.1f} on {os.cpu_count()} CPUs
  (a shared machine: pessimistic).

| input | input MB | wall (s) | peak RSS MB | base written MB |
|---|---:|---:|---:|---:|
{table}"""
