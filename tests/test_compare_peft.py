"""tools/compare_peft.py: one method's cost row on a tiny base (and its adapter loads), the commands of the
real-voice runs (per method, seed and step count), the summary of an eval_real report and the tables."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from test_infer import make_base  # noqa: E402

from ai_singer import checkpoint as ckpt  # noqa: E402
from tools import compare_peft  # noqa: E402


def test_cost_of_one_method_on_a_tiny_base(tmp_path):
    torch.set_num_threads(1)
    base_dir = make_base(tmp_path)
    row = compare_peft.measure_method(base_dir, "qlora", steps=1, warmup=0, batch_size=1, frames=16,
                                      discriminator_mode="off", adapter_dir=tmp_path / "singers" / "qlora")
    assert row["method"] == "qlora" and row["trainable_params"] > 0 and row["step_s"] > 0
    assert row["frozen_weights_mb"] < 0.4 * row["float_generator_mb"]  # the int8 base
    adapter = ckpt.load_adapter(tmp_path / "singers" / "qlora")
    assert adapter.method == "qlora" and adapter.base_sha256 == ckpt.load_base(base_dir).sha256
    assert 0 < row["artifact_mb"] < row["float_generator_mb"]
    table = compare_peft.cost_table([row], {"qlora": 0.25})
    assert "| qlora | " in table and "0.250 |" in table


def test_real_voice_runs_are_one_fine_tune_and_one_measure_per_method_seed_and_steps(tmp_path, capsys):
    args = compare_peft.parse_args(["--real", "--dry-run", "--methods", "lora", "diff", "--seeds", "0", "1",
                                    "--steps", "1500", "500", "--work", str(tmp_path), "--base", "pretrain/x",
                                    "--record", str(tmp_path / "record.json")])
    assert compare_peft.run_real(args) == []
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
    assert len(commands) == 2 * 2 * 2 * 2
    assert "--prepare" in commands[0] and "--peft lora --steps 500 --train-arg seed=0" in commands[0]
    assert "diff-seed1-1500.json" in commands[-1] and "--prepare" not in commands[-1]
    args.processed = tmp_path / "processed"  # already preprocessed: the fine-tunes read it as it is
    prepare, _, _ = compare_peft.real_commands(args, "lora", 0, 500)
    assert prepare[-3:] == ["--processed", str(tmp_path / "processed"), "--no-preprocess"]


def test_real_summary_and_table():
    summary = {"secs_converted": 0.7, "secs_source": 0.6, "cer_converted": 0.5, "f0_median_abs_cents": 20.0}
    document = {"pairs": [{"self": False, "summary": summary},
                          {"self": False, "summary": {**summary, "secs_converted": 0.8, "cer_converted": float("nan")}},
                          {"self": True, "summary": {**summary, "mcd_db": 4.0}}]}
    got = compare_peft.real_summary(document)
    assert got["secs_converted"] == 0.75 and got["cer_converted"] == 0.5 and got["self_mcd_db"] == 4.0
    table = compare_peft.real_table([{"method": "lora", "seed": 0, "steps": 500, **got}])
    assert "| lora | 500 | 0 | 0.750 / 0.600 | 0.50 | 20.0 | 4.00 |" in table


def test_one_table_holds_each_methods_cost_and_its_real_metrics_averaged_over_seeds():
    cost = [{"method": "lora", "trainable_params": 1000, "artifact_mb": 0.5, "step_s": 0.3, "peak_rss_mb": 600.0},
            {"method": "ia3", "trainable_params": 10, "artifact_mb": 0.01, "step_s": 0.2, "peak_rss_mb": 590.0}]
    metrics = {"secs_source": 0.6, "f0_median_abs_cents": 6.0, "self_mcd_db": 3.0}
    real = [{"method": "lora", "seed": 0, "steps": 500, "secs_converted": 0.8, "cer_converted": 0.3, **metrics},
            {"method": "lora", "seed": 1, "steps": 500, "secs_converted": 0.7, "cer_converted": 0.5, **metrics},
            {"method": "lora", "seed": 0, "steps": 1500, "secs_converted": 0.9, "cer_converted": 0.2, **metrics}]
    table = compare_peft.combined_table(cost, real)
    lines = table.splitlines()
    assert "SECS conv @500" in lines[0] and "CER @1500" in lines[0]
    lora = next(line for line in lines if line.startswith("| lora |"))
    assert "| 1,000 | 0.500 | 0.30 | 600 | 0.750 | 0.40 | 6.0 | 3.00 | 0.900 | 0.20 |" in lora
    assert lora.endswith("| 2 @500, 1 @1500 |")
    ia3 = next(line for line in lines if line.startswith("| ia3 |"))  # costed, not yet measured on real voices
    assert ia3.endswith("| - | - | - | - | - | - | - | - | 0 @500, 0 @1500 |")


def test_collect_runs_nothing_and_tables_only_the_reports_that_exist(tmp_path, capsys):
    args = compare_peft.parse_args(["--real", "--collect", "--methods", "lora", "diff", "--seeds", "0",
                                    "--steps", "500", "--work", str(tmp_path), "--base", "pretrain/x",
                                    "--record", str(tmp_path / "record.json")])
    _, _, out = compare_peft.real_commands(args, "lora", 0, 500)
    out.parent.mkdir(parents=True)
    summary = {"secs_converted": 0.7, "secs_source": 0.6, "cer_converted": 0.5, "f0_median_abs_cents": 20.0}
    out.write_text(json.dumps({"pairs": [{"self": False, "summary": summary}]}))
    rows = compare_peft.run_real(args)
    assert [(r["method"], r["seed"], r["steps"]) for r in rows] == [("lora", 0, 500)]
    printed = capsys.readouterr().out
    assert "not measured yet" in printed and "diff-seed0-500.json" in printed and "+ " not in printed


def test_a_run_kept_in_the_tracked_record_counts_as_measured_when_its_report_is_gone(tmp_path, capsys):
    record = tmp_path / "record.json"
    args = compare_peft.parse_args(["--real", "--collect", "--methods", "lora", "--seeds", "0", "1",
                                    "--steps", "500", "--work", str(tmp_path / "work"), "--base", "pretrain/x",
                                    "--record", str(record)])
    _, _, out = compare_peft.real_commands(args, "lora", 0, 500)
    out.parent.mkdir(parents=True)
    summary = {"secs_converted": 0.7, "secs_source": 0.6, "cer_converted": 0.5, "f0_median_abs_cents": 20.0}
    out.write_text(json.dumps({"created": "2026-12-01 10:00 UTC", "pairs": [{"self": False, "summary": summary}]}))
    compare_peft.run_real(args)  # the report found is written to the record
    kept = json.loads(record.read_text())["runs"]
    assert [(r["base"], r["method"], r["seed"], r["steps"], r["measured"]) for r in kept] == [
        ("x", "lora", 0, 500, "2026-12-01")]
    out.unlink()  # a new machine: runs/ is gone, the record is committed
    capsys.readouterr()
    rows = compare_peft.run_real(args)
    assert [(r["method"], r["seed"], r["secs_converted"]) for r in rows] == [("lora", 0, 0.7)]
    printed = capsys.readouterr().out
    assert "kept from" in printed and "lora-seed1-500.json: not measured yet" in printed
    other = compare_peft.parse_args(["--real", "--collect", "--methods", "lora", "--seeds", "0", "--steps", "500",
                                     "--work", str(tmp_path / "work"), "--base", "pretrain/y", "--record", str(record)])
    assert compare_peft.run_real(other) == []  # another base's runs are not this one's


def test_a_record_of_an_unknown_format_is_refused_with_its_path(tmp_path):
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"format": 99, "runs": []}))
    with pytest.raises(SystemExit, match="format 99") as refused:
        compare_peft.read_record(record)
    assert str(record) in str(refused.value)


def test_cost_rows_can_come_from_an_earlier_run_of_the_same_base_only(tmp_path):
    earlier = tmp_path / "cost.json"
    row = {"method": "lora", "trainable_params": 1000, "artifact_mb": 0.5, "step_s": 0.3, "peak_rss_mb": 600.0}
    earlier.write_text(json.dumps({"command": "tools/compare_peft.py --base pretrain/x", "created": "2026-12-01",
                                   "machine": "m", "load_average": "1 / 1 / 1", "settings": {"base": "pretrain/x"},
                                   "cost": [row], "inference": {"lora": 0.2}, "qlora_quality": None}))
    got = compare_peft.cost_document(earlier, Path("pretrain/x"))
    assert got["cost"] == [row] and got["inference"] == {"lora": 0.2} and got["created"] == "2026-12-01"
    with pytest.raises(SystemExit, match="of base 'x', not 'y'"):
        compare_peft.cost_document(earlier, Path("pretrain/y"))
    with pytest.raises(SystemExit, match="no such file"):
        compare_peft.cost_document(tmp_path / "missing.json", Path("pretrain/x"))


def _write_rows(record: str, seed: int, count: int) -> None:
    for steps in range(count):
        compare_peft.write_record(Path(record), [{"base": "x", "method": "lora", "seed": seed, "steps": steps}])


def test_rows_written_by_two_processes_at_once_are_all_kept(tmp_path):
    import multiprocessing

    record = tmp_path / "results" / "record.json"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_rows, args=(str(record), seed, 25)) for seed in (0, 1)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    kept = {(row["seed"], row["steps"]) for row in compare_peft.read_record(record)}
    assert kept == {(seed, steps) for seed in (0, 1) for steps in range(25)}
