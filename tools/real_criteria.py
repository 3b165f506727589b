"""The bars a real-voice conversion must clear (the real-voice issue's "done when"), checked on one
``tools/eval_real.py`` report, so that a run says which criteria hold instead of leaving the reader to compare
numbers by hand.

Per source → target pair (self-conversions have no source voice to compare with and are not judged):

- speaker: the converted phrase is more similar to the target than the source phrase was (SECS) on at least
  :data:`CLOSER_SHARE` of the phrases;
- nearest: the target is the nearest known voice on more than half of the phrases (top-1 share);
- words: CER of the conversion at most :data:`CER_POINTS` above the source recording's own (pooled CER, both
  against the same reference text);
- quality: DNSMOS OVRL at most :data:`DNSMOS_DROP` below the source's;
- pitch: median |F0 error| against the intended contour at most :data:`F0_CENTS`.

The two shares (speaker, nearest) are shown with their phrase counts and a 95 % Wilson interval: on 12-18 phrases
one phrase is 6-8 points, and the interval says how far a share may move on another set of phrases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

CLOSER_SHARE = 0.9
TOP1_SHARE = 0.5      # "most phrases": strictly more than this share
CER_POINTS = 0.10
DNSMOS_DROP = 0.3
F0_CENTS = 20.0


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float | None      # the measured figure (None: not measurable in this report)
    shown: str               # the value as the report prints it ("n/a" when None)
    bar: str                 # what it must be, in words
    passed: bool | None      # None when value is None


def _check(name: str, value: float | None, show: Callable[[float], str], bar: str,
           ok: Callable[[float], bool]) -> Criterion:
    if value is None:
        return Criterion(name, None, "n/a", bar, None)
    return Criterion(name, value, show(value), bar, bool(ok(value)))


def closer_counts(phrases: list[dict]) -> tuple[int, int]:
    """(phrases whose conversion is more similar to the target than the source phrase (SECS), phrases with both)."""
    pairs = [(p["secs"]["converted"], p["secs"]["source"]) for p in phrases
             if p.get("secs", {}).get("converted") is not None and p.get("secs", {}).get("source") is not None]
    return sum(converted > source for converted, source in pairs), len(pairs)


def closer_share(phrases: list[dict]) -> float | None:
    """Share of phrases whose conversion is more similar to the target than the source phrase (SECS)."""
    closer, total = closer_counts(phrases)
    return closer / total if total else None


def nearest_counts(phrases: list[dict]) -> tuple[int, int]:
    """(phrases where the target is the nearest known voice, phrases ranked)."""
    ranks = [p["target_rank"] for p in phrases if p.get("target_rank")]
    return sum(rank == 1 for rank in ranks), len(ranks)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share ``successes / total`` (95 % at the default ``z``); (0, 1) for none."""
    if total <= 0:
        return 0.0, 1.0
    share = successes / total
    denominator = 1.0 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def share_shown(share: float, counts: tuple[int, int]) -> str:
    """``89% (16/18; 95% interval 67%–97%)``, or the share alone when the counts do not give it."""
    hits, total = counts
    if not total or abs(hits / total - share) > 1e-9:
        return f"{share:.0%}"
    low, high = wilson_interval(hits, total)
    return f"{share:.0%} ({hits}/{total}; 95% interval {low:.0%}–{high:.0%})"


def pair_criteria(pair: dict) -> list[Criterion]:
    """The criteria of one source → target pair of an eval_real report (``pair['summary']``, ``pair['phrases']``)."""
    s = pair["summary"]

    def known(key: str) -> float | None:
        value = s.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    def difference(a: str, b: str) -> float | None:
        return None if known(a) is None or known(b) is None else known(a) - known(b)


    closer, nearest = closer_counts(pair["phrases"]), nearest_counts(pair["phrases"])
    return [
        _check("speaker", closer_share(pair["phrases"]), lambda v: share_shown(v, closer),
               f">= {CLOSER_SHARE:.0%} of phrases closer to the target than the source", lambda v: v >= CLOSER_SHARE),
        _check("nearest", s.get("target_top1_fraction"), lambda v: share_shown(v, nearest),
               f"target nearest on > {TOP1_SHARE:.0%} of phrases", lambda v: v > TOP1_SHARE),
        _check("words", difference("cer_converted", "cer_source"), lambda v: f"{v * 100:+.1f} points",
               f"CER <= source's + {CER_POINTS * 100:.0f} points", lambda v: v <= CER_POINTS + 1e-9),
        _check("quality", difference("dnsmos_ovrl_converted", "dnsmos_ovrl_source"), lambda v: f"{v:+.2f}",
               f"DNSMOS OVRL >= source's - {DNSMOS_DROP}", lambda v: v >= -DNSMOS_DROP - 1e-9),
        _check("pitch", s.get("f0_median_abs_cents"), lambda v: f"{v:.1f} cents",
               f"F0 median error <= {F0_CENTS:g} cents", lambda v: v <= F0_CENTS),
    ]


def markdown(document: dict) -> list[str]:
    """A "Criteria" section (lines) for the report's source → target pairs; [] when it has none."""
    pairs = [pair for pair in document["pairs"] if not pair["self"]]
    if not pairs:
        return []
    lines = ["## Criteria", "", "| source → target | criterion | measured | bar | holds |", "|---|---|---:|---|---|"]
    verdicts = []
    for pair in pairs:
        for criterion in pair_criteria(pair):
            verdicts.append(criterion.passed)
            holds = {True: "yes", False: "**no**", None: "n/a"}[criterion.passed]
            lines.append(f"| {pair['source']} → {pair['target']} | {criterion.name} | {criterion.shown} | "
                         f"{criterion.bar} | {holds} |")
    failed = sum(v is False for v in verdicts)
    lines += ["", f"{len(verdicts) - failed - sum(v is None for v in verdicts)} of {len(verdicts)} hold"
              + (f"; {failed} fail." if failed else "."), ""]
    return lines
