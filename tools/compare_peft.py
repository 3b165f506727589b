"""Compare every PEFT method of ``conf/peft/`` on one base: what it costs, and (``--real``) how it sounds.

    .venv/bin/python tools/compare_peft.py --base pretrain/real-ddsp-words --out runs/peft/compare.json [--bench]
    .venv/bin/python tools/compare_peft.py --base pretrain/real-small --real --steps 500 1500 --seeds 0 1 \\
        --out runs/peft/real.json --bench                                          # hours on a CPU

Cost (always; synthetic batches on the given base, each method in its own process so peak RSS is its own):
trainable parameters, the artifact as saved (``adapter.safetensors``: the method's tensors + singer vector),
seconds per optimiser step after warm-up (``trainer.discriminator=off`` by default: mel + KL, so the
generator's cost is not hidden behind the discriminator's), peak RSS, the generator's weights as held in memory
(qlora: the int8 base), and seconds of model time per second of audio when converting the bundled example
vocal with the method's (fresh) adapter through the real Converter (merged where the method merges).
qlora's quality cost: the bundled example singer's LoRA converted on the int8 base against the same LoRA on
the float base (mel-cepstral distortion between the two conversions, dB).

``--real``: for each method, seed and step count, fine-tune adapters of the held-out voices of ``--corpus``
(``tools/eval_real.py --prepare --peft M``; a larger step count resumes the run) and measure them
(``tools/eval_real.py``): speaker similarity (SECS), CER and F0 error of the cross conversions, MCD of the
self-conversions. Rows not measured are not written (``--bench`` says which were). Each run's summary is also
kept in the tracked record ``docs/results/peft_real_runs.json`` (``--record``), which ``--resume`` and
``--collect`` read, so a grid spread over sessions and machines adds up; ``--cost-from JSON`` tables the cost
rows of an earlier run instead of measuring them again.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `ai_singer` importable

REPO = Path(__file__).resolve().parents[1]
SECTION = "PEFT methods compared"
EXAMPLE_VOCAL = REPO / "data" / "examples" / "song01" / "vocals.flac"
EXAMPLE_SINGER = REPO / "singers" / "example"
RECORD = REPO / "docs" / "results" / "peft_real_runs.json"
RECORD_FORMAT = 1
RECORD_WHAT = ("tools/compare_peft.py --real: the summary of every real-voice run (eval_real.py on the held-out "
               "voices; cross pairs averaged, self-conversion MCD averaged), one per base, method, seed and steps")


def methods() -> list[str]:
    from ai_singer.adapters import PEFT_METHODS

    return list(PEFT_METHODS)


# ------------------------------------------------------------------------------------- one method (cost)

def measure_method(base_dir: Path, method: str, steps: int, warmup: int, batch_size: int, frames: int,
                   discriminator_mode: str, adapter_dir: Path) -> dict:
    """Fine-tune ``method`` for ``warmup + steps`` synthetic steps on the base at ``base_dir``; save the
    adapter at ``adapter_dir`` (for the conversion timing) and return the cost row."""
    import torch
    from safetensors.torch import save_file

    from ai_singer import checkpoint, int8
    from ai_singer.adapters import adapter_state_dict, prepare_for_finetune
    from ai_singer.config import load_settings
    from ai_singer.model.discriminator import Discriminator
    from ai_singer.model.synthesizer import SingerVAE, SingerVAEConfig
    from ai_singer.train import GeneratorForTraining, StepRunner, make_optimisation
    from tools.bench_train import optimizer_state_bytes, synthetic_batch

    torch.manual_seed(0)
    cfg = load_settings("train", ["mode=finetune", "singer=peft_compare", f"base={base_dir}", f"peft={method}",
                                  f"trainer.discriminator={discriminator_mode}"])
    base = checkpoint.load_base(base_dir, with_discriminator=discriminator_mode != "off")
    config = SingerVAEConfig.from_dict(base.model_config)
    model = SingerVAE(config)
    checkpoint.load_state_strict(model, base.generator_state)
    float_bytes = int8.weight_bytes(model)
    singer = model.embed_speaker(torch.arange(config.n_speakers)).mean(0).detach()
    prepare_for_finetune(model, cfg.peft)
    generator = GeneratorForTraining(model, singer_embedding=singer)
    discriminator = None
    if discriminator_mode != "off":
        discriminator = Discriminator.from_config(config)
        checkpoint.load_state_strict(discriminator, base.discriminator_state)
        discriminator.requires_grad_(discriminator_mode == "train")
    optimisation = make_optimisation(generator, discriminator, cfg.trainer)
    runner = StepRunner(generator, discriminator, optimisation, config, cfg.audio, cfg.loss, cfg.trainer,
                        torch.device("cpu"))
    batch = synthetic_batch(config, batch_size, frames)
    for step in range(warmup):
        runner.train_step(batch, step)
    started = time.perf_counter()
    for step in range(warmup, warmup + steps):
        runner.train_step(batch, step)
    step_s = (time.perf_counter() - started) / steps
    trainable = sum(p.numel() for p in generator.parameters() if p.requires_grad)
    trainable_bytes = sum(p.numel() * p.element_size() for p in generator.parameters() if p.requires_grad)
    tensors = {**adapter_state_dict(model), "singer_embedding": generator.singer_embedding.detach()}
    adapter_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.save_adapter(adapter_dir, tensors, {"singer": adapter_dir.name, "method": method,
                                                   "peft": cfg.peft.to_dict(), "base_sha256": base.sha256,
                                                   "base_name": base_dir.name, "steps": warmup + steps})
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "adapter.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(artifact))
        artifact_bytes = artifact.stat().st_size
    return {
        "method": method, "base": str(base_dir), "discriminator": discriminator_mode, "batch_size": batch_size,
        "frames": frames, "steps": steps, "step_s": round(step_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": trainable,
        "generator_optimizer_state_mb": round(optimizer_state_bytes(optimisation.generator) / 2**20, 2),
        "artifact_mb": round(artifact_bytes / 2**20, 4),
        "frozen_weights_mb": round(max(0, int8.weight_bytes(model) - trainable_bytes) / 2**20, 2),
        "float_generator_mb": round(float_bytes / 2**20, 2),
    }


# ---------------------------------------------------------------------------------- conversions (main process)

def convert_with(base_dir: Path, singers_dir: Path, singers: list[str], seconds: float, repeats: int = 2
                 ) -> dict[str, tuple[object, float]]:
    """Convert the first ``seconds`` of the bundled example vocal with each of ``singers`` through one
    Converter (after a warm-up conversion); per singer (the VocalConversion, the least model seconds per
    second of audio over ``repeats`` conversions)."""
    import numpy as np
    import soundfile as sf

    from ai_singer.config import load_settings
    from ai_singer.convert import Converter

    audio, sr = sf.read(str(EXAMPLE_VOCAL), dtype="float32", always_2d=True)
    mono = np.ascontiguousarray(audio[: int(seconds * sr)].mean(axis=1))
    settings = load_settings("infer", ["noise_scale=0", "f0.method=dio", "refine.steps=0"])
    converter = Converter(base_dir, None, settings, singers_dir, device="cpu")
    converter.convert_vocal(mono, sr, singers[0])  # warm-up: first-call costs belong to no method
    results = {}
    for singer in singers:
        runs = [converter.convert_vocal(mono, sr, singer) for _ in range(repeats)]
        results[singer] = (runs[-1], min(r.timings["model_s"] for r in runs) / (mono.shape[0] / sr))
    return results


def qlora_quality(base_dir: Path, work: Path, seconds: float) -> dict:
    """The example singer's LoRA converted on the int8 base vs on the float base (qlora's rounding cost)."""
    import shutil

    import yaml

    from ai_singer import metrics

    singers = work / "quality"
    shutil.rmtree(singers, ignore_errors=True)
    shutil.copytree(EXAMPLE_SINGER, singers / "float")
    shutil.copytree(EXAMPLE_SINGER, singers / "int8")
    config = yaml.safe_load((singers / "int8" / "adapter.yaml").read_text())
    config["method"] = config["peft"]["method"] = "qlora"
    (singers / "int8" / "adapter.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    converted = convert_with(base_dir, singers, ["float", "int8"], seconds, repeats=1)
    float_result, int8_result = converted["float"][0], converted["int8"][0]
    sr = float_result.sample_rate
    mcd = metrics.mel_cepstral_distortion(float_result.audio, int8_result.audio, sr)
    rel = float(((float_result.audio - int8_result.audio) ** 2).sum() ** 0.5 / max(1e-12, (float_result.audio ** 2)
                                                                                    .sum() ** 0.5))
    return {"singer": "example (LoRA trained on the float base)", "seconds": seconds,
            "mcd_int8_vs_float_db": round(float(mcd.mcd_db), 3), "mcd_frames": mcd.frames,
            "relative_l2": round(rel, 4)}


# ------------------------------------------------------------------------------------------- real voices

def real_commands(args: argparse.Namespace, method: str, seed: int, steps: int) -> tuple[list[str], list[str], Path]:
    """The eval_real.py commands that fine-tune (resuming) and measure ``method`` / ``seed`` at ``steps``."""
    tag = f"{method}-seed{seed}"
    root = args.work / "real" / args.base.name / tag
    out = args.work / "real" / args.base.name / f"{tag}-{steps}.json"
    python, tool = sys.executable, str(REPO / "tools" / "eval_real.py")
    common = ["--corpus", str(args.corpus), "--base", str(args.base), "--singers-dir", str(root / "singers"),
              "--runs-dir", str(root / "runs")]
    prepare = [python, tool, "--prepare", *common, "--peft", method, "--steps", str(steps),
               "--train-arg", f"seed={seed}",
               *(["--processed", str(args.processed), "--no-preprocess"] if args.processed else [])]
    measure = [python, tool, *common, "--out", str(out), "--label", f"{args.base.name} + {method} {steps} seed {seed}",
               *(["--quick"] if args.quick else [])]
    return prepare, measure, out


def real_summary(document: dict) -> dict:
    """Means over the report's cross pairs (SECS, CER, F0) and self-conversions (MCD)."""
    def mean(values):
        values = [v for v in values if v is not None and math.isfinite(v)]
        return round(sum(values) / len(values), 4) if values else None

    cross = [p["summary"] for p in document["pairs"] if not p["self"]]
    selfs = [p["summary"] for p in document["pairs"] if p["self"]]
    return {"secs_converted": mean(s["secs_converted"] for s in cross),
            "secs_source": mean(s["secs_source"] for s in cross),
            "cer_converted": mean(s["cer_converted"] for s in cross),
            "f0_median_abs_cents": mean(s["f0_median_abs_cents"] for s in cross),
            "self_mcd_db": mean(s.get("mcd_db") for s in selfs),
            "self_secs": mean(s["secs_converted"] for s in selfs)}


def read_record(path: Path) -> list[dict]:
    """The runs kept in the tracked record at ``path`` (empty when it does not exist yet)."""
    if not path.exists():
        return []
    document = json.loads(path.read_text())
    if document.get("format") != RECORD_FORMAT:
        raise SystemExit(f"{path}: record format {document.get('format')!r}, this tool reads {RECORD_FORMAT}: "
                         "convert it or point --record elsewhere")
    return list(document["runs"])


def record_key(row: dict) -> tuple:
    return row["base"], row["method"], row["seed"], row["steps"]


def write_record(path: Path, rows: list[dict]) -> None:
    """Keep ``rows`` in the record at ``path`` (atomically, under a lock on ``<path>.lock``: two runs finishing
    together each read the record and write it back): a row replaces the one with the same base, method, seed
    and steps; the others stay."""
    from ai_singer.atomic import atomic_write_json, file_lock

    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        runs = {record_key(r): r for r in read_record(path)}
        runs.update({record_key(r): r for r in rows})
        atomic_write_json(path, {"format": RECORD_FORMAT, "what": RECORD_WHAT,
                                 "runs": sorted(runs.values(), key=lambda r: (r["base"], r["method"], r["seed"],
                                                                               r["steps"]))})


def run_real(args: argparse.Namespace) -> list[dict]:
    """Fine-tune and measure every method / seed / step count not measured yet; the rows of all of them.

    A run counts as measured when its eval_real report is in ``--work`` or (``--resume``/``--collect``) when the
    tracked record (``--record``) holds it: reports live in ``runs/``, which a new machine does not have, the
    record is committed. Each new or found report's row is written to the record."""
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    base = args.base.name
    recorded = {record_key(r): r for r in read_record(args.record)} if (args.resume or args.collect) else {}
    for method in args.methods:
        for seed in args.seeds:
            for steps in sorted(args.steps):
                prepare, measure, out = real_commands(args, method, seed, steps)
                done = (args.resume or args.collect) and out.exists()
                kept = recorded.get((base, method, seed, steps))
                if done:
                    print(f"= {out} exists: kept", flush=True)
                elif kept is not None:
                    print(f"= {method} seed {seed} @{steps}: kept from {args.record} ({kept.get('source', 'report')})",
                          flush=True)
                    rows.append(kept)
                    continue
                elif args.collect:
                    print(f"- {out}: not measured yet (--collect runs nothing)", flush=True)
                    continue
                for command in () if done else (prepare, measure):
                    print("+ " + shlex.join(command), flush=True)
                    if args.dry_run:
                        continue
                    code = subprocess.run(command, env=env, cwd=REPO).returncode
                    if code != 0:
                        raise SystemExit(f"{method} seed {seed} at {steps} steps: exit {code}")
                if not args.dry_run:
                    document = json.loads(out.read_text())
                    row = {"base": base, "method": method, "seed": seed, "steps": steps,
                           "measured": document.get("created", "")[:10] or datetime.date.today().isoformat(),
                           "source": f"tools/eval_real.py report {out.name}", **real_summary(document)}
                    rows.append(row)
                    write_record(args.record, [row])
    return rows


def cost_document(path: Path, base: Path) -> dict:
    """The cost part of an earlier run's --out JSON at ``path`` (refused when it measured another base)."""
    if not path.exists():
        raise SystemExit(f"--cost-from {path}: no such file (an earlier `tools/compare_peft.py --out` JSON)")
    earlier = json.loads(path.read_text())
    measured = Path(earlier.get("settings", {}).get("base", "")).name
    if measured != base.name:
        raise SystemExit(f"--cost-from {path}: its cost rows are of base {measured!r}, not {base.name!r}")
    if not earlier.get("cost"):
        raise SystemExit(f"--cost-from {path}: it holds no cost rows (made with --no-cost?)")
    keys = ("command", "created", "machine", "load_average", "settings", "cost", "inference", "qlora_quality")
    return {key: earlier.get(key) for key in keys}


# ------------------------------------------------------------------------------------------------ report

def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cost_table(rows: list[dict], inference: dict) -> str:
    lines = ["| method | trainable params | artifact MB | s/step | peak RSS MB | weights held MB | model s per s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed = inference.get(r["method"])
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['artifact_mb']:.3f} | {r['step_s']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['frozen_weights_mb']:.1f} | {fmt(speed, 3)} |")
    return "\n".join(lines)


def real_table(rows: list[dict]) -> str:
    lines = ["| method | steps | seed | SECS conv / src | CER conv | F0 median (cents) | self MCD (dB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['seed']} | {fmt(r['secs_converted'], 3)} / "
                     f"{fmt(r['secs_source'], 3)} | {fmt(r['cer_converted'])} | {fmt(r['f0_median_abs_cents'], 1)} | "
                     f"{fmt(r['self_mcd_db'])} |")
    return "\n".join(lines)


def mean_over_seeds(rows: list[dict], method: str, steps: int, key: str) -> tuple[float | None, int]:
    """The mean of ``key`` over the seeds measured for ``method`` at ``steps``, and how many seeds that is."""
    values = [r[key] for r in rows if r["method"] == method and r["steps"] == steps and r.get(key) is not None]
    return (sum(values) / len(values), len(values)) if values else (None, 0)


def combined_table(cost: list[dict], real: list[dict]) -> str:
    """One row per method: what it costs (synthetic steps on the base) and how it sounds on the held-out real
    voices at each step count (means over the seeds measured; their number in the last column)."""
    steps = sorted({r["steps"] for r in real})
    methods_seen = list(dict.fromkeys([r["method"] for r in cost] + [r["method"] for r in real]))
    by_cost = {r["method"]: r for r in cost}
    head = "| method | trainable params | artifact MB | s/step | peak RSS MB |"
    rule = "|---|---:|---:|---:|---:|"
    for n in steps:
        head += f" SECS conv @{n} | CER @{n} | F0 cents @{n} | self MCD dB @{n} |"
        rule += "---:|---:|---:|---:|"
    head += " seeds |"
    rule += "---|"
    lines = [head, rule]
    for method in methods_seen:
        c = by_cost.get(method)
        line = (f"| {method} | {c['trainable_params']:,} | {c['artifact_mb']:.3f} | {c['step_s']:.2f} | "
                f"{c['peak_rss_mb']:.0f} |" if c else f"| {method} | - | - | - | - |")
        counts = []
        for n in steps:
            for key, digits in (("secs_converted", 3), ("cer_converted", 2), ("f0_median_abs_cents", 1),
                                ("self_mcd_db", 2)):
                value, count = mean_over_seeds(real, method, n, key)
                line += f" {fmt(value, digits)} |"
                if key == "secs_converted":
                    counts.append(f"{count} @{n}")
        lines.append(line + f" {', '.join(counts)} |")
    return "\n".join(lines)


def report(document: dict) -> str:
    parts = [f"Measured with `{document['command']}` on {document['created']}.",
             f"- Machine: {document['machine']}. Load average {document['load_average']} (1/5/15 min) before the run.",
             f"- Cost: {document['settings']['steps']} synthetic steps after {document['settings']['warmup']} warm-up, "
             f"batch {document['settings']['batch_size']} x {document['settings']['frames']} frames, "
             f"trainer.discriminator={document['settings']['discriminator']}, default `conf/peft/<method>.yaml`; "
             "each method in its own process (peak RSS includes ~0.5 GB of imports). 'weights held' = the "
             "generator's parameters and buffers in memory while fine-tuning, less the trainable ones; 'model s "
             "per s' = model time per second of audio converting the example vocal with the fresh adapter "
             "(merged unless adapter/prefix/prompt; least of 2 conversions after a warm-up).", "", cost_table(document["cost"], document["inference"])]
    quality = document.get("qlora_quality")
    if quality:
        parts += ["", f"qlora's rounding cost: the example singer's LoRA on the int8 base vs the float base over "
                      f"{quality['seconds']:g} s of the example vocal: MCD {quality['mcd_int8_vs_float_db']:.2f} dB "
                      f"between the two conversions (relative L2 {quality['relative_l2']:.3f})."]
    if document.get("real"):
        if document.get("real_command"):
            parts += ["", f"Real-voice rows collected with `{document['real_command']}` on {document['real_created']}."]
        transcribed = sum("transcribed" in str(r.get("source", "")) for r in document["real"])
        parts += ["", "Real-voice runs: per method and seed, fine-tunes of the held-out voices (`tools/eval_real.py "
                      "--prepare --peft M`: batch 4 x 128 frames, no discriminator; 1500 steps resume the 500-step "
                      "run), then `tools/eval_real.py` on them; each run's summary is kept in the tracked record "
                      "`docs/results/peft_real_runs.json` with its date and source"
                      + (f" ({transcribed} of the rows were transcribed from an earlier BENCHMARKS table, their "
                         "reports lost)" if transcribed else "") + "."]
        parts += ["", "All methods on one table: the cost columns above and the real-voice metrics (tools/eval_real.py "
                      "on the held-out voices; cross pairs averaged; means over the seeds measured, counted in the "
                      "last column):", "", combined_table(document["cost"], document["real"]),
                  "", "Every real-voice run (one row per method, steps and seed):", "", real_table(document["real"])]
        if document.get("real_missing"):
            parts += ["", "Not measured yet: " + ", ".join(document["real_missing"]) + "."]
    else:
        parts += ["", "Real-voice rows (SECS, CER, F0 error at 500 and 1500 steps, two seeds; `--real`): not measured "
                      "in this run."]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from ai_singer.bundle import read_index

    parser.add_argument("--base", type=Path, default=REPO / "pretrain" / str(read_index(REPO).get("base")),
                        help="base folder (default: the bundled base, pretrain/bundle.json)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every conf/peft method")
    parser.add_argument("--cost-steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--discriminator", default="off", choices=["train", "frozen", "off"])
    parser.add_argument("--convert-seconds", type=float, default=6.0, help="seconds of the example vocal converted")
    parser.add_argument("--no-convert", action="store_true", help="skip the conversion timings and qlora's quality")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "peft_compare")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default <work>/compare.json)")
    parser.add_argument("--bench", action="store_true", help=f"write the '{SECTION}' section of BENCHMARKS.md")
    real = parser.add_argument_group("--real: fine-tune and measure on the held-out real voices (hours on a CPU)")
    real.add_argument("--real", action="store_true")
    real.add_argument("--corpus", type=Path, default=REPO / "data" / "real")
    real.add_argument("--steps", type=int, nargs="+", default=[500, 1500])
    real.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    real.add_argument("--quick", action="store_true", help="eval_real.py --quick (fewer phrases)")
    real.add_argument("--processed", type=Path, default=None,
                      help="the held-out voices' data, already preprocessed with the base's content encoder (default: "
                           "eval_real.py's folder, preprocessed first)")
    real.add_argument("--dry-run", action="store_true", help="print the --real commands only")
    real.add_argument("--resume", action="store_true",
                      help="keep the reports of (method, seed, steps) already measured; run only the missing ones")
    real.add_argument("--no-cost", action="store_true", help="skip the synthetic cost rows (real rows only)")
    real.add_argument("--cost-from", type=Path, default=None, metavar="JSON",
                      help="measure no cost: take the cost rows (and their machine, date and command) from an "
                           "earlier run's --out JSON of the same base")
    real.add_argument("--record", type=Path, default=RECORD,
                      help="tracked record of the runs' summaries, read by --resume/--collect and written after each "
                           "run (default: %(default)s)")
    real.add_argument("--collect", action="store_true",
                      help="run nothing for --real: table the reports already measured, say which are missing")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.methods = args.methods or methods()
    args.out = args.out or args.work / "compare.json"
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.one:
        row = measure_method(args.base, args.one, args.cost_steps, args.warmup, args.batch_size, args.frames,
                             args.discriminator, args.work / "singers" / args.one)
        print("RESULT " + json.dumps(row))
        return 0
    from tools.benchmarks_md import machine_description, replace_section

    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    cost, inference = [], {}
    if not args.dry_run and not args.no_cost and not args.cost_from:
        for method in args.methods:
            command = [sys.executable, __file__, "--one", method, "--base", str(args.base), "--work", str(args.work),
                       "--cost-steps", str(args.cost_steps), "--warmup", str(args.warmup), "--batch-size",
                       str(args.batch_size), "--frames", str(args.frames), "--discriminator", args.discriminator]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                print(f"{method} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            cost.append(json.loads(lines[-1][len("RESULT "):]))
            print(json.dumps(cost[-1]), flush=True)
        if not args.no_convert and cost:
            converted = convert_with(args.base, args.work / "singers", [row["method"] for row in cost],
                                     args.convert_seconds)
            inference = {method: round(speed, 4) for method, (_, speed) in converted.items()}
            print(f"model s per s of audio: {inference}", flush=True)
    skip_quality = args.no_convert or args.no_cost or args.cost_from or args.dry_run
    quality = None if skip_quality else qlora_quality(args.base, args.work, args.convert_seconds)
    real_rows = run_real(args) if args.real else []
    measured = {(r["method"], r["seed"], r["steps"]) for r in real_rows}
    missing = [f"{m} seed {seed} @{n}" for m in args.methods for seed in args.seeds for n in sorted(args.steps)
               if args.real and (m, seed, n) not in measured]
    command = "tools/compare_peft.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    document = {"command": command, "created": now, "machine": machine_description(threads=1), "load_average": load,
                "settings": {"steps": args.cost_steps, "warmup": args.warmup, "batch_size": args.batch_size,
                             "frames": args.frames, "discriminator": args.discriminator, "base": str(args.base)},
                "cost": cost, "inference": inference, "qlora_quality": quality, "real": real_rows,
                "real_missing": missing}
    if args.cost_from:
        document.update(cost_document(args.cost_from, args.base), real_command=command, real_created=now)
    if args.dry_run:
        return 0
    from ai_singer.atomic import atomic_write_json

    atomic_write_json(args.out, document)
    text = report(document)
    print(text)
    if args.bench:
        replace_section(REPO / "BENCHMARKS.md", SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
