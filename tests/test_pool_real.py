"""tools/pool_real.py: the real-voice criteria judged on the phrases of several runs (adapter seeds) at once."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from test_real_metrics import fake_document

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from tools import pool_real, real_criteria  # noqa: E402


def _run(tmp_path: Path, name: str, document: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def test_pooled_shares_and_cer_count_every_run_phrase_and_keep_each_run_beside(tmp_path, capsys):
    one, two = fake_document("seed 0"), fake_document("seed 1")
    two["pairs"][0]["phrases"][1]["secs"]["converted"] = 0.5  # run 1: one of its two phrases farther than the source
    two["pairs"][0]["phrases"][1]["target_rank"] = 2
    two["pairs"][0]["phrases"][1]["cer"]["converted"] = {"cer": 0.5, "edits": 4, "chars": 8}
    two["pairs"][0]["summary"]["f0_median_abs_cents"] = 25.0  # the worst run's pitch is the pooled one
    paths = [_run(tmp_path, "s0", one), _run(tmp_path, "s1", two)]
    out = tmp_path / "pooled" / "pooled.json"
    assert pool_real.main([*map(str, paths), "--out", str(out)]) == 0

    pooled = json.loads(out.read_text())
    cross = next(p for p in pooled["pairs"] if not p["self"])
    assert len(cross["phrases"]) == 4 and [r["run"] for r in cross["phrases"]] == [0, 0, 1, 1]
    assert real_criteria.closer_counts(cross["phrases"]) == (3, 4)
    assert cross["summary"]["target_top1_fraction"] == pytest.approx(0.75)
    assert cross["summary"]["cer_converted"] == pytest.approx((1 + 1 + 1 + 4) / 32)  # edits over characters
    assert cross["summary"]["f0_median_abs_cents"] == 25.0
    criteria = {c.name: c for c in real_criteria.pair_criteria(cross)}
    assert criteria["speaker"].passed is False and criteria["speaker"].shown.startswith("75% (3/4;")
    assert criteria["pitch"].passed is False  # 25 cents in one run: the bar fails for the pool

    report = out.with_suffix(".md").read_text()
    assert "| it_carlo_m → fr_june_f | 0 | 2/2 | 2/2 |" in report  # each run's own line stays
    assert "| it_carlo_m → fr_june_f | 1 | 1/2 | 1/2 |" in report
    assert "| it_carlo_m → fr_june_f | **pooled** | 3/4 | 3/4 |" in report
    assert "| fr_june_f (self) | **pooled** | 2/2 |" in report
    assert "## Criteria" in report and "| it_carlo_m → fr_june_f | speaker | 75% (3/4;" in report
    assert str(paths[1]) in report and "seed 1" in report


@pytest.mark.parametrize("change, message", [
    (lambda d: d["settings"].update(role="validation"), "measured on the validation voices"),
    (lambda d: d["base"].update(sha256="ffffffffffff0"), "another base than"),
    (lambda d: d["pairs"].pop(1), "missing fr_june_f -> fr_june_f (self)"),
])
def test_reports_of_other_voices_bases_or_pairs_are_refused_naming_the_report(tmp_path, capsys, change, message):
    other = copy.deepcopy(fake_document("seed 1"))
    change(other)
    paths = [_run(tmp_path, "s0", fake_document("seed 0")), _run(tmp_path, "s1", other)]
    assert pool_real.main([*map(str, paths), "--out", str(tmp_path / "p.json")]) == 2
    error = capsys.readouterr().err
    assert str(paths[1]) in error and message in error
    assert not (tmp_path / "p.json").exists()


def test_an_unreadable_report_is_named(tmp_path, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    assert pool_real.main([str(bad), "--out", str(tmp_path / "p.json")]) == 2
    assert f"{bad}: not valid JSON" in capsys.readouterr().err
