"""BENCHMARKS.md sections: each benchmark rewrites its own section and leaves the others alone."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from tools.benchmarks_md import machine_description, replace_section  # noqa: E402


def test_replace_section_keeps_the_other_sections(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    replace_section(path, "Inference", "old inference\n")  # created when missing
    assert path.read_text() == "# Benchmarks\n\n## Inference\n\nold inference\n"
    replace_section(path, "Preprocess", "preprocess figures")  # appended
    replace_section(path, "Inference", "new inference")  # replaced in place, not appended
    assert path.read_text() == ("# Benchmarks\n\n## Inference\n\nnew inference\n\n"
                                "## Preprocess\n\npreprocess figures\n")


def test_a_title_with_regex_characters_is_matched_literally(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Conversion quality (v1)\n\nold\n\n## Training\n\nkept\n")
    replace_section(path, "Conversion quality (v1)", "new")
    assert path.read_text() == "# Benchmarks\n\n## Conversion quality (v1)\n\nnew\n\n## Training\n\nkept\n"


def test_machine_description_names_cpus_threads_and_torch():
    import torch

    line = machine_description(threads=3)
    assert "CPUs (nproc)" in line and "with 3 intra-op threads" in line and torch.__version__ in line
