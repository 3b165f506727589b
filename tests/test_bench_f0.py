"""tools/bench_f0.py's F0 metrics on hand-made tracks (the numbers BENCHMARKS.md "F0" is made of)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from tools.bench_f0 import f0_accuracy, pool, rates  # noqa: E402


def test_each_kind_of_error_lands_in_its_own_rate():
    truth = np.array([0, 0, 200, 200, 200, 200, 200, 200, 200, 200], dtype=float)
    estimate = np.array([
        0, 300,                # unvoiced right, then a false alarm
        0,                     # a voiced frame missed
        400, 100,              # octave up, octave down
        200 * 2 ** (30 / 1200),  # 30 cents off: correct
        200, 200,              # exact
        300,                   # a fifth off: gross, not octave
        200 * 2 ** (-10 / 1200),
    ])
    r = rates(f0_accuracy(estimate, truth))
    assert r["rpa"] == pytest.approx(4 / 8)        # 4 of 8 voiced frames within 50 cents
    assert r["rca"] == pytest.approx(6 / 8)        # + the two octave errors
    assert r["gross"] == pytest.approx(3 / 7)      # 7 frames voiced in both: 2 octaves + the fifth
    assert r["octave"] == pytest.approx(2 / 7)
    assert r["recall"] == pytest.approx(7 / 8)
    assert r["false_alarm"] == pytest.approx(1 / 2)
    assert r["median_cents"] == pytest.approx(5.0)  # |errors| 30, 0, 0, 10


def test_pooling_weights_cases_by_frames():
    good = f0_accuracy(np.full(30, 100.0), np.full(30, 100.0))
    bad = f0_accuracy(np.full(10, 200.0), np.full(10, 100.0))
    r = rates(pool([good, bad]))
    assert r["rpa"] == pytest.approx(0.75) and r["octave"] == pytest.approx(0.25)
    assert np.isnan(r["false_alarm"])  # no unvoiced frame at all
