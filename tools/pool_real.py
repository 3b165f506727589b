"""Pool several ``tools/eval_real.py`` reports of the same pairs (e.g. adapters trained with other seeds) and judge
the real-voice criteria on all their phrases together.

    .venv/bin/python tools/pool_real.py runs/eval/seed0.json runs/eval/seed1.json runs/eval/seed2.json \\
        --out runs/eval/pooled.json

One adapter seed gives 12-18 phrases per pair, and a share of 16 of 18 is only known to within about +-15 points
(95 % Wilson interval 67-97 %): whether a default clears the 90 % speaker bar can hang on the draw of one
adapter's training. Pooling the same pairs measured through adapters of several seeds answers with the spread of
training in it, and the per-run figures stay beside the pooled ones, so no run can hide in the pool.
The pooled shares' 95 % intervals count each run's phrase as a draw of its own; when every run converts the same
phrases (seeds of one corpus), they say how far a share may move with another adapter, not with other phrases.

What pools exactly, from the phrase rows every report keeps: the two shares (phrases closer to the target than the
source; the target nearest), CER (edits over characters), the mean SECS and DNSMOS. The F0 median error is pooled
over frames inside eval_real and the frames are not in the report, so the pooled pitch figure is the *worst*
run's (the bar then holds only if it holds in every run). Every report must come from the same role (held-out or
validation) and base, and hold the same pairs; a pair missing from one report is an error naming that report.
Writes ``--out`` (JSON) and the same name with ``.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `ai_singer` importable

from ai_singer.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from tools import real_criteria  # noqa: E402
from tools.eval_conversion import EvalError, fmt, json_safe, read_json  # noqa: E402
from tools.eval_real import phrase_summary  # noqa: E402


def read_report(path: Path) -> dict:
    """One eval_real report (JSON); EvalError naming the file when it is missing, unreadable or not one."""
    document = read_json(path, "a report of tools/eval_real.py --out")
    if not isinstance(document, dict) or not isinstance(document.get("pairs"), list):
        raise EvalError(f"{path}: not a tools/eval_real.py report (no 'pairs' list)")
    return document


def pair_key(pair: dict) -> tuple[str, str, bool]:
    return pair["source"], pair["target"], bool(pair["self"])


def pair_name(key: tuple[str, str, bool]) -> str:
    return f"{key[0]} -> {key[1]}" + (" (self)" if key[2] else "")


def pooled_summary(summaries: list[dict], phrases: list[dict]) -> dict:
    """The summary of ``phrases`` (every run's rows of one pair) as eval_real writes one
    (:func:`tools.eval_real.phrase_summary`), with the worst of the runs' ``summaries``' F0 median error (see the
    module's docstring)."""
    errors = [s.get("f0_median_abs_cents") for s in summaries]
    errors = [e for e in errors if e is not None and np.isfinite(e)]
    return {**phrase_summary(phrases), "f0_median_abs_cents": float(max(errors)) if errors else float("nan")}


def pool(documents: list[dict], paths: list[Path]) -> dict:
    """One report whose pairs hold every run's phrases (each row tagged with its ``run`` index), a pooled summary,
    each run's own summary (``run_summaries``) and adapter; ``runs``: each report's path, label, date and command."""
    if not documents:
        raise EvalError("no report to pool")
    first, first_path = documents[0], paths[0]
    role = first.get("settings", {}).get("role", "heldout")
    base = first.get("base", {}).get("sha256")
    keys = [pair_key(p) for p in first["pairs"]]
    for document, path in zip(documents[1:], paths[1:]):
        other_role = document.get("settings", {}).get("role", "heldout")
        if other_role != role:
            raise EvalError(f"{path}: measured on the {other_role} voices, {first_path} on the {role} ones")
        if document.get("base", {}).get("sha256") != base:
            raise EvalError(f"{path}: another base than {first_path} (sha256 "
                            f"{str(document.get('base', {}).get('sha256'))[:12]} against {str(base)[:12]})")
        have = {pair_key(p) for p in document["pairs"]}
        missing = [k for k in keys if k not in have]
        extra = sorted(have - set(keys))
        if missing or extra:
            raise EvalError(f"{path}: not the pairs of {first_path}"
                            + (f"; missing {', '.join(map(pair_name, missing))}" if missing else "")
                            + (f"; extra {', '.join(map(pair_name, extra))}" if extra else ""))
    pairs = []
    for key in keys:
        runs = [next(p for p in document["pairs"] if pair_key(p) == key) for document in documents]
        phrases = [dict(row, run=index) for index, pair in enumerate(runs) for row in pair["phrases"]]
        pairs.append({"source": key[0], "target": key[1], "self": key[2],
                      "transpose_semitones": runs[0].get("transpose_semitones", 0.0),
                      "adapters": [pair.get("adapter") for pair in runs],
                      "summary": pooled_summary([pair["summary"] for pair in runs], phrases),
                      "run_summaries": [pair["summary"] for pair in runs], "phrases": phrases})
    return {"format_version": 1, "kind": "pooled eval_real reports", "settings": {"role": role},
            "base": first.get("base", {}),
            "runs": [{"path": str(path), "label": document.get("label"), "created": document.get("created"),
                      "command": document.get("command")} for document, path in zip(documents, paths)],
            "pairs": pairs}


def _run_line(name: str, summary: dict, phrases: list[dict]) -> str:
    closer, nearest = real_criteria.closer_counts(phrases), real_criteria.nearest_counts(phrases)
    return (f"| {name} | {closer[0]}/{closer[1]} | {nearest[0]}/{nearest[1]} | "
            f"{fmt(summary['secs_converted'], 3)} / {fmt(summary['secs_source'], 3)} | "
            f"{fmt(summary['cer_converted'])} / {fmt(summary['cer_source'])} | "
            f"{fmt(summary['dnsmos_ovrl_converted'])} / {fmt(summary['dnsmos_ovrl_source'])} | "
            f"{fmt(summary['f0_median_abs_cents'], 1)} |")


def markdown(pooled: dict) -> str:
    """Per pair, one line per run and the pooled line; then the criteria on the pooled phrases."""
    lines = [f"# Pooled real-voice conversions ({len(pooled['runs'])} reports, {pooled['settings']['role']} voices)",
             "", *[f"- run {i}: `{run['path']}` ({run['label']}, {run['created']})"
                   for i, run in enumerate(pooled["runs"])], "",
             "| pair | run | closer than the source | target nearest | SECS conv / src | CER conv / src | "
             "DNSMOS OVRL conv / src | F0 median (cents) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for pair in pooled["pairs"]:
        name = pair["target"] + " (self)" if pair["self"] else f"{pair['source']} → {pair['target']}"
        for index, summary in enumerate(pair["run_summaries"]):
            rows = [r for r in pair["phrases"] if r["run"] == index]
            lines.append(f"| {name} " + _run_line(str(index), summary, rows))
        lines.append(f"| {name} " + _run_line("**pooled**", pair["summary"], pair["phrases"]))
    lines += ["", "F0 of the pooled line: the worst run's (frames are not pooled). The intervals below count each run's "
              "phrase as a draw of its own: over runs of the same phrases they cover another adapter, not other phrases.", "",
              *real_criteria.markdown(pooled)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="tools/eval_real.py JSON reports of the same pairs")
    parser.add_argument("--out", type=Path, required=True, help="pooled JSON report (+ .md beside)")
    args = parser.parse_args(argv)
    try:
        pooled = pool([read_report(path) for path in args.reports], list(args.reports))
    except EvalError as error:
        print(f"pool_real: {error}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, json_safe(pooled))
    atomic_write_text(args.out.with_suffix(".md"), markdown(pooled))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
