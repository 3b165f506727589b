"""BENCHMARKS.md for the benchmark scripts: the machine line and replacing one ``## Section`` in place.

Each ``tools/bench_*.py`` (and ``tools/eval_conversion.py --bench``) owns one section of BENCHMARKS.md and
rewrites only that one, keeping every other section as it is.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

from ai_singer.atomic import atomic_write_text


def cpu_model() -> str:
    """The CPU's model name from ``lscpu`` (``platform.processor()`` where lscpu is missing)."""
    model = platform.processor() or platform.machine() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return model
    found = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    return found.group(1).strip() if found else model


def machine_description(threads: int | None = None) -> str:
    """One line naming the CPU, CPU count, GPU (if any), torch and its intra-op threads, Python and OS;
    ``threads`` defaults to ``torch.get_num_threads()``."""
    import torch

    threads = torch.get_num_threads() if threads is None else threads
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}, {os.cpu_count()} CPUs (nproc), {gpu}, torch {torch.__version__} with {threads} "
            f"intra-op threads, Python {platform.python_version()}, {platform.system()}")


def replace_section(path: Path, title: str, body: str) -> None:
    """Replace the ``## {title}`` section of the markdown file ``path`` with ``body`` (or append the section
    when there is none; create the file when it is missing); every other section is kept. Atomic."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text.rstrip("\n") + "\n")
