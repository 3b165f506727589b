"""Side by side with so-vits-svc-fork: conversion, a fine-tuning step and harvest F0 on the same audio.

    .venv/bin/python tools/bench_vs_fork.py [--fork-python ~/.cache/fk-venv/bin/python] [--seconds 30]
                                            [--threads 1 2] [--repeats 5] [--tasks convert train harvest]
                                            [--engines torch onnx] [--variants "precision=fp32" ...]
                                            [--base base|pretrain/real-ddsp] [--discriminator auto off train]
                                            [--ours-set KEY=VALUE ...] [--out results.json]

so-vits-svc-fork (4.2.x) lives in its own virtual environment (install recipe: the project's ASSETS notes,
"Peer toolkits"); nothing of it is imported here. Each (task, thread count) starts two persistent workers,
this toolkit's and the fork's, each with ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` = the thread count;
they set up once (untimed), then the runs alternate between them (ours, fork, fork, ours, ...) so that a
shared, loaded machine slows both alike; the medians and their ratio are reported. Peak memory is each
worker's ``VmHWM`` (imports, model, optimiser, audio included). Each run's CPU time (``time.process_time`` of the
worker) is reported beside its wall time: with one thread on a machine loaded by other work, the CPU time is the
steadier measure of the work done (the wall time mostly measures the scheduler's share).

Tasks (random weights on both sides: only the time is compared):
- ``convert``: a synthetic vocal (``--seconds`` of a tools/synth song, 44.1 kHz) converted end to end minus
  the content encoder. Ours: ``Converter.convert_vocal`` at ``model=base`` with a merged LoRA adapter and
  conf/infer.yaml's settings (``f0.method`` from ``--f0``), in a process set up as ``python -m ai_singer.infer``
  sets up its own (glibc's mmap threshold, oneDNN's kernel cache: ``limit_allocator_retention``,
  ``widen_cpu_kernel_cache``). Theirs: ``Svc.infer_silence`` with the 44 kHz
  ``so-vits-svc-4.0v1`` model (built directly: ``Svc.__init__`` would download ContentVec) with weight norm
  removed as its loader does. Both content encoders are replaced by random 768-dim features at 50 Hz
  (resampling to 16 kHz is kept on both sides).
- ``train``: one optimiser step on a batch of 2 x 64 frames (segment 20 frames on both sides). Ours: the
  trainer's step for a LoRA fine-tune of ``--base`` (``base``: conf/model/base.yaml with random weights; or a base
  folder, e.g. the bundled default ``pretrain/real-ddsp``, with its own architecture and weights) with
  ``trainer.discriminator`` from ``--discriminator`` (several values: one side each; ``auto`` as the trainer
  decides: ``off`` for a base without a discriminator).
  Theirs: the body of its ``VitsLightning.training_step`` (generator with the discriminator toggled off as
  Lightning's ``toggle_optimizer`` does, then the discriminator), full fine-tuning, without its logging.
  ``--ours-set`` passes overrides to our side (conf/infer.yaml for convert, conf/train.yaml for train).
  ``--engines torch onnx`` runs our conversion once per engine (``engine=onnx`` exports the singer first, untimed, as
  ``ai-singer export`` does), ``--variants "precision=fp32" "precision=bf16_decoder"`` once per list of conf/infer.yaml
  overrides (space-separated in one argument); all sides interleaved with the same fork runs.
- ``harvest``: F0 of the whole vocal with WORLD Harvest. Ours: ``extract_f0(method=harvest)`` as preprocess
  and conversion call it; theirs: ``compute_f0_pyworld(..., "harvest")`` (Harvest + StoneMask at 44.1 kHz).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FORK_PYTHON = Path("~/.cache/fk-venv/bin/python").expanduser()
TASKS = ("convert", "train", "harvest")
SAMPLE_RATE, HOP, CONTENT_DIM = 44100, 512, 768


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def read_vocal(path: Path):
    import numpy as np
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.mean(axis=1)), sr


# ------------------------------------------------------------------------------------- our worker
class RandomContent:
    """A content encoder of HuBERT's framing (16 kHz, hop 320, 768-dim) that returns random features (named
    ``hubert``, the encoder the random base records)."""

    name, dim, hop, sample_rate, receptive_field = "hubert", CONTENT_DIM, 320, 16000, 400

    def encode(self, audio):
        import torch

        frames = (audio.shape[-1] - self.receptive_field) // self.hop + 1
        return torch.randn(audio.shape[0], frames, self.dim)


def ours(task: str, vocal: Path, workdir: Path, f0: str, discriminator: str, settings_overrides: list[str],
         base: str = "base"):
    """Set up this toolkit for ``task``; returns the function one timed run calls."""
    sys.path.insert(0, str(REPO))
    import torch

    if task == "convert":
        from ai_singer.config import load_settings
        from ai_singer.convert import Converter
        from tools.bench_infer import make_artifacts

        base_dir, singer = make_artifacts(workdir, "base")
        # refine off unless settings_overrides turn it on: the fork has no such step, so the race is plain to plain
        settings = load_settings("infer", [f"f0.method={f0}", "refine.steps=0", *settings_overrides])
        if settings.engine != "torch":  # the singer's ONNX export (untimed setup, as `ai-singer export` once)
            from ai_singer.onnx_export import export_singer

            export_singer(singer.name, singer.parent, base_dir.parent)
        converter = Converter(base_dir, None, settings, singer.parent, device="cpu", content_encoder=RandomContent())
        mono, sr = read_vocal(vocal)
        return lambda: converter.convert_vocal(mono, sr, singer.name)
    if task == "train":
        from tools.bench_train import make_runner

        runner, batch, *_ = make_runner(base, "lora", 2, 64, "cpu", "fp32", discriminator, tuple(settings_overrides))
        steps = iter(range(1 << 30))
        return lambda: runner.train_step(batch, next(steps))
    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.features.pitch import extract_f0

    settings = F0Settings.from_conf(method="harvest")
    mono, sr = read_vocal(vocal)
    torch.manual_seed(0)
    return lambda: extract_f0(mono, sr, HOP, None, settings)


# ------------------------------------------------------------------------------------ fork worker
def fork_model():
    """so-vits-svc-fork's 44 kHz SynthesizerTrn (so-vits-svc-4.0v1 template, random weights) and its hparams."""
    import so_vits_svc_fork
    from so_vits_svc_fork import utils
    from so_vits_svc_fork.modules.synthesizers import SynthesizerTrn

    template = Path(so_vits_svc_fork.__file__).parent / "preprocessing" / "config_templates" / "so-vits-svc-4.0v1.json"
    hps = utils.get_hparams(template)
    model = SynthesizerTrn(hps.data.filter_length // 2 + 1, hps.train.segment_size // hps.data.hop_length,
                           **hps.model)
    return model, hps


def fork(task: str, vocal: Path, workdir: Path, f0: str, discriminator: str, settings_overrides: list[str],
         base: str = "base"):
    """Set up so-vits-svc-fork for ``task``; returns the function one timed run calls."""
    import torch

    torch.manual_seed(0)
    if task == "convert":
        import torchaudio
        from so_vits_svc_fork import utils
        from so_vits_svc_fork.hparams import HParams
        from so_vits_svc_fork.inference.core import Svc

        model, hps = fork_model()
        model.eval()
        for module in model.modules():
            utils.remove_weight_norm_if_exists(module)
        svc = Svc.__new__(Svc)  # Svc.__init__ downloads ContentVec: set what infer needs instead
        svc.hps, svc.net_g, svc.device, svc.dtype = hps, model, torch.device("cpu"), torch.float32
        svc.target_sample, svc.hop_size = hps.data.sampling_rate, hps.data.hop_length
        svc.spk2id, svc.hubert_model, svc.contentvec_final_proj = HParams(singer=0), None, False

        def random_content(cmodel, audio, device, sr, legacy_final_proj=False):
            audio = torch.as_tensor(audio)
            audio = torchaudio.transforms.Resample(sr, 16000)(audio)  # as its get_content does
            return torch.randn(1, CONTENT_DIM, audio.shape[-1] // 320)

        utils.get_content = random_content
        mono, _ = read_vocal(vocal)
        return lambda: svc.infer_silence(mono, speaker=0, f0_method=f0)
    if task == "train":
        return fork_train_step()
    from so_vits_svc_fork.f0 import compute_f0_pyworld

    mono, sr = read_vocal(vocal)
    return lambda: compute_f0_pyworld(mono, None, sr, HOP, "harvest")


def fork_train_step():
    """The body of so-vits-svc-fork's ``VitsLightning.training_step`` (full fine-tuning, AdamW as it configures
    it) on a synthetic batch of 2 x 64 frames; returns the step."""
    import torch
    from torch.nn import functional as F
    from so_vits_svc_fork.modules import commons
    from so_vits_svc_fork.modules.descriminators import MultiPeriodDiscriminator
    from so_vits_svc_fork.modules.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
    from so_vits_svc_fork.modules.mel_processing import mel_spectrogram_torch, spec_to_mel_torch

    net_g, hps = fork_model()
    net_d = MultiPeriodDiscriminator(hps.model.use_spectral_norm)
    t = hps.train
    optim_g = torch.optim.AdamW(net_g.parameters(), t.learning_rate, betas=t.betas, eps=t.eps)
    optim_d = torch.optim.AdamW(net_d.parameters(), t.learning_rate, betas=t.betas, eps=t.eps)
    batch, frames, hop = 2, 64, hps.data.hop_length
    time_s = torch.arange(frames * hop) / hps.data.sampling_rate
    y = (0.3 * torch.sin(2 * torch.pi * 220.0 * time_s) + 0.01 * torch.randn(frames * hop)).expand(batch, 1, -1)
    y = y.contiguous()
    spec = torch.rand(batch, hps.data.filter_length // 2 + 1, frames)
    mel = spec_to_mel_torch(spec, hps)
    c, f0 = torch.randn(batch, CONTENT_DIM, frames), torch.full((batch, frames), 220.0)
    uv, g = torch.ones(batch, frames), torch.zeros(batch, 1, dtype=torch.long)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    segment = t.segment_size // hop

    def toggle(trainable, frozen):  # Lightning's toggle_optimizer: only the stepping model's parameters train
        for p in trainable.parameters():
            p.requires_grad_(True)
        for p in frozen.parameters():
            p.requires_grad_(False)

    def step():
        net_g.train()
        net_d.train()
        toggle(net_g, net_d)
        y_hat, _, ids_slice, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0 = net_g(
            c, f0, uv, spec, g=g, c_lengths=lengths, spec_lengths=lengths)
        y_mel = commons.slice_segments(mel, ids_slice, segment)
        y_hat_mel = mel_spectrogram_torch(y_hat.squeeze(1), hps)
        y_mel = y_mel[..., : y_hat_mel.shape[-1]]
        y_seg = commons.slice_segments(y, ids_slice * hop, t.segment_size)[..., : y_hat.shape[-1]]
        _, y_d_hat_g, fmap_r, fmap_g = net_d(y_seg, y_hat)
        loss_mel = F.l1_loss(y_mel, y_hat_mel) * t.c_mel
        loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * t.c_kl
        loss_gen, _ = generator_loss(y_d_hat_g)
        loss = loss_gen + feature_loss(fmap_r, fmap_g) + loss_mel + loss_kl + F.mse_loss(pred_lf0, lf0)
        loss.backward()
        commons.clip_grad_value_(net_g.parameters(), None)
        optim_g.step()
        optim_g.zero_grad()
        toggle(net_d, net_g)
        y_d_hat_r, y_d_hat_g, _, _ = net_d(y_seg, y_hat.detach())
        loss_disc, _, _ = discriminator_loss(y_d_hat_r, y_d_hat_g)
        loss_disc.backward()
        commons.clip_grad_value_(net_d.parameters(), None)
        optim_d.step()
        optim_d.zero_grad()

    return step


def worker(side: str, task: str, threads: int, vocal: Path, workdir: Path, f0: str, discriminator: str,
           settings_overrides: list[str], base: str) -> None:
    """Line protocol on stdin/stdout: prints {"ready": setup_s}; each "run" line -> {"s": seconds};
    "quit" -> {"peak_rss_mb": ...}."""
    if side == "ours" and task == "convert":  # the process settings `python -m ai_singer.infer` makes, first thing
        sys.path.insert(0, str(REPO))
        from ai_singer.device import widen_cpu_kernel_cache
        from ai_singer.infer import limit_allocator_retention

        limit_allocator_retention()
        widen_cpu_kernel_cache()
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    run = (ours if side == "ours" else fork)(task, vocal, workdir, f0, discriminator, settings_overrides, base)
    run()  # warm-up (first-call allocations, oneDNN primitive caches)
    print(json.dumps({"ready": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            started, cpu = time.perf_counter(), time.process_time()
            run()
            print(json.dumps({"s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}), flush=True)
        else:
            break
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


# ------------------------------------------------------------------------------------ orchestrator
class Worker:
    def __init__(self, python: str, side: str, task: str, threads: int, vocal: Path, workdir: Path, f0: str,
                 discriminator: str, settings_overrides: list[str], base: str = "base"):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONWARNINGS": "ignore"}
        if side == "fork":
            env.pop("PYTHONPATH", None)
        command = [python, str(Path(__file__).resolve()), "--worker", side, "--task", task, "--threads", str(threads),
                   "--vocal", str(vocal), "--workdir", str(workdir), "--f0", f0, "--discriminator", discriminator,
                   "--base", base, "--ours-set", *settings_overrides]
        self.side = side
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=str(REPO))
        self.setup_s = self.read()["ready"]

    def read(self) -> dict:
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the {self.side} worker stopped (exit code {self.process.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def run(self) -> tuple[float, float]:
        """One timed run: (wall seconds, CPU seconds of the worker process)."""
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        result = self.read()
        return result["s"], result["cpu_s"]

    def close(self) -> float:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        peak = self.read()["peak_rss_mb"]
        self.process.wait()
        return peak


def make_vocal(folder: Path, seconds: float) -> Path:
    """``seconds`` of a synthetic song's vocal stem (tools/synth, 44.1 kHz), from a quarter of the way in."""
    sys.path.insert(0, str(REPO))
    from tools.bench_infer import excerpt, make_song

    song = make_song(folder / "song", max(seconds * 2, 60.0))
    return excerpt(song, folder / "excerpt", seconds) / "vocals.wav"


def our_sides(task: str, discriminators: list[str], settings_overrides: list[str], engines: list[str],
              variants: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Our sides of ``task``: name -> (discriminator mode, our overrides). Conversion: one per engine and one per
    variant (a space-separated list of overrides), else one; training: one per discriminator mode; harvest: one."""
    if task == "convert" and (engines or variants):
        sides = {f"ours-{engine}": [*settings_overrides, f"engine={engine}"] for engine in engines}
        sides.update({f"ours-{variant}": [*settings_overrides, *variant.split()] for variant in variants})
        return {name: (discriminators[0], overrides) for name, overrides in sides.items()}
    if task == "train":
        return {f"ours-{mode}": (mode, list(settings_overrides)) for mode in discriminators}
    return {"ours": (discriminators[0], list(settings_overrides))}


def compare(task: str, threads: int, repeats: int, fork_python: str, vocal: Path, workdir: Path, f0: str,
            discriminators: list[str], settings_overrides: list[str], engines: list[str], variants: list[str],
            base: str) -> list[dict]:
    """Our sides (:func:`our_sides`) and the fork's, the runs of all of them interleaved (the order rotates every
    round); one result per our side, each against the same fork runs."""
    ours_sides = our_sides(task, discriminators, settings_overrides, engines, variants)
    workers = {side: Worker(sys.executable, "ours", task, threads, vocal, workdir / f"{task}-{threads}-{side}", f0,
                            mode, overrides, base) for side, (mode, overrides) in ours_sides.items()}
    workers["fork"] = Worker(fork_python, "fork", task, threads, vocal, workdir / f"{task}-{threads}-fork", f0,
                             discriminators[0], settings_overrides)
    sides = list(workers)
    times: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    for round_ in range(repeats):
        shift = round_ % len(sides)
        order = sides[shift:] + sides[:shift]
        for side in (order if round_ % 2 == 0 else order[::-1]):
            wall, cpu_s = workers[side].run()
            times[side].append(wall)
            cpu[side].append(cpu_s)
    peaks = {side: w.close() for side, w in workers.items()}
    medians = {side: statistics.median(v) for side, v in times.items()}
    return [{"task": task, "threads": threads, "repeats": repeats,
             "times_s": {"ours": times[side], "fork": times["fork"]},
             "cpu_s": {"ours": cpu[side], "fork": cpu["fork"]},
             "median_cpu_s": {"ours": statistics.median(cpu[side]), "fork": statistics.median(cpu["fork"])},
             "median_s": {"ours": medians[side], "fork": medians["fork"]},
             "fork_over_ours": medians["fork"] / medians[side],
             "peak_rss_mb": {"ours": peaks[side], "fork": peaks["fork"]},
             "f0": f0 if task == "convert" else None, "discriminator": mode if task == "train" else None,
             "base": base if task == "train" else None,
             "ours_settings": overrides if task != "harvest" else []} for side, (mode, overrides) in ours_sides.items()]


def markdown(results: list[dict], seconds: float) -> str:
    what = {"convert": f"conversion of a {seconds:g} s vocal, minus the content encoder (RTF)",
            "train": "fine-tuning step, batch 2 x 64 frames (s/step)", "harvest": f"harvest F0 of the {seconds:g} s vocal (s)"}
    lines = ["| task | threads | ours (median) | so-vits-svc-fork (median) | fork / ours (higher: we are faster) | "
             "CPU s per run ours / fork (median) | fork / ours by CPU time | peak RSS MiB ours / fork |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        scale = seconds if r["task"] == "convert" else 1.0
        extra = "".join(", " + o for o in r.get("ours_settings") or [])
        detail = (f" ({r['f0']}{extra})" if r["f0"] else "") + (
            f" (ours: LoRA of {r.get('base') or 'base'}, discriminator {r['discriminator']}{extra}; theirs: full)"
            if r["discriminator"] else "")
        lines.append(f"| {what[r['task']]}{detail} | {r['threads']} | {r['median_s']['ours'] / scale:.3f} | "
                     f"{r['median_s']['fork'] / scale:.3f} | {r['fork_over_ours']:.2f}x | "
                     f"{r['median_cpu_s']['ours']:.2f} / {r['median_cpu_s']['fork']:.2f} | "
                     f"{r['median_cpu_s']['fork'] / r['median_cpu_s']['ours']:.2f}x | "
                     f"{r['peak_rss_mb']['ours']:.0f} / {r['peak_rss_mb']['fork']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fork-python", default=str(DEFAULT_FORK_PYTHON),
                        help="python of the virtual environment holding so-vits-svc-fork")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the vocal")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (after one warm-up each)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--f0", default="dio", help="F0 method of the conversion task (both sides)")
    parser.add_argument("--discriminator", nargs="+", default=["train"], choices=["auto", "train", "frozen", "off"],
                        help="our trainer.discriminator in the train task (several: one side each, interleaved)")
    parser.add_argument("--base", default="base",
                        help="train: our base, a conf/model size with random weights (default base) or a base folder "
                             "(e.g. pretrain/real-ddsp, the bundled default)")
    parser.add_argument("--variants", nargs="*", default=[], metavar="'KEY=VALUE ...'",
                        help="convert: our side once per variant (space-separated conf/infer.yaml overrides), all "
                             "interleaved with the same fork runs")
    parser.add_argument("--ours-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of our side: conf/infer.yaml for convert (e.g. precision=bf16), conf/train.yaml "
                             "for train (e.g. trainer.discriminator_every=2)")
    parser.add_argument("--engines", nargs="*", default=[], choices=["torch", "onnx", "auto"],
                        help="convert: our side once per conversion engine (engine=...; onnx/auto export the singer "
                             "first, untimed), all interleaved with the same fork runs; default: conf/infer.yaml's")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--worker", choices=["ours", "fork"], help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--vocal", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.task, args.threads[0], args.vocal, args.workdir, args.f0, args.discriminator[0],
               args.ours_set, args.base)
        return
    if not Path(args.fork_python).is_file():
        sys.exit(f"bench_vs_fork: no so-vits-svc-fork environment at {args.fork_python}: install it as ASSETS notes "
                 "describe (its own venv), or give --fork-python")
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_fork_") as tmp:
        vocal = make_vocal(Path(tmp), args.seconds)
        for task in args.tasks:
            for threads in args.threads:
                for result in compare(task, threads, args.repeats, args.fork_python, vocal, Path(tmp), args.f0,
                                      args.discriminator, args.ours_set, args.engines, args.variants,
                                      str(Path(args.base).resolve()) if Path(args.base).is_dir() else args.base):
                    print(json.dumps({k: v for k, v in result.items() if k != "times_s"}), flush=True)
                    results.append(result)
    report = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "load_before": load_before,
              "load_after": os.getloadavg()[0], "cpus": os.cpu_count(), "seconds": args.seconds, "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(markdown(results, args.seconds))
    print(f"load average {load_before:.1f} before / {report['load_after']:.1f} after on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
