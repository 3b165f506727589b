"""Benchmark a training step per model size and fine-tuning method.

For each ``--models`` size (conf/model/<size>.yaml at 44.1 kHz, hop 512, 768-dim content) and each
``--methods`` entry (``pretrain`` = the whole generator from scratch, or a peft method on a frozen base):
seconds per optimiser step (discriminator + generator, after warm-up steps), peak resident memory
(each configuration runs in its own process), trainable generator parameters, AdamW state bytes
(generator + discriminator), and the size of the artifact a run exports (adapter.safetensors with the
singer vector, or the full generator.safetensors). ``--discriminators train frozen off`` also measures
fine-tuning with the base's discriminator frozen or without one (``trainer.discriminator``).

    .venv/bin/python tools/bench_train.py --models small base --steps 2 --batch-size 2 --frames 64
    .venv/bin/python tools/bench_train.py --models base --methods lora --discriminators train frozen off
    .venv/bin/python tools/bench_train.py --markdown results.json     # print the BENCHMARKS.md table

Synthetic batches (random content, a steady F0, noise audio): the step costs the same as on real data.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("pretrain", "full", "lora", "dora", "ia3", "bitfit", "freeze")
DISCRIMINATORS = ("train", "frozen", "off")


def synthetic_batch(config, batch_size: int, frames: int):
    """A training :class:`ai_singer.data.Batch` of ``batch_size`` x ``frames``: random content of the model's
    ``content_dim``, a steady 220 Hz F0, a sine plus a little noise as audio (a step costs what a real one does)."""
    import torch

    from ai_singer.data import Batch

    hop, sr = config.hop_length, config.sample_rate
    t = torch.arange(frames * hop) / sr
    wav = (0.3 * torch.sin(2 * torch.pi * 220.0 * t) + 0.01 * torch.randn(frames * hop)).expand(batch_size, 1, -1)
    return Batch(content=torch.randn(batch_size, config.content_dim, frames),
                 f0=torch.full((batch_size, frames), 220.0), voiced=torch.ones(batch_size, frames),
                 volume=torch.full((batch_size, frames), 0.2), wav=wav.contiguous(),
                 lengths=torch.full((batch_size,), frames, dtype=torch.long),
                 speaker_ids=torch.zeros(batch_size, dtype=torch.long))


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the tensors in an optimiser's state (0 for None)."""
    import torch

    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def make_runner(size: str, method: str, batch_size: int, frames: int, device: str, precision: str,
                discriminator_mode: str = "train", overrides: tuple[str, ...] = ()):
    """The trainer's StepRunner for ``size`` (conf/model/<size>.yaml, 768-dim content, random weights; or the folder
    of a base artifact: its architecture, weights and discriminator, as ``mode=finetune base=<folder>`` loads them)
    fine-tuned with ``method`` (or ``pretrain``) and ``discriminator_mode`` (``auto``: ``off`` for a base folder
    without a discriminator, else ``train``, as the trainer decides; further conf/train.yaml ``overrides``), and one
    synthetic Batch of ``batch_size`` x ``frames``. Returns (runner, batch, model, generator, opt, config, cfg)."""
    import dataclasses
    from pathlib import Path

    import torch
    from hydra import compose, initialize_config_dir

    from ai_singer import checkpoint
    from ai_singer.adapters import prepare_for_finetune
    from ai_singer.conf_dir import conf_dir
    from ai_singer.model.discriminator import Discriminator
    from ai_singer.model.synthesizer import SingerVAE, SingerVAEConfig
    from ai_singer.train import GeneratorForTraining, StepRunner, make_optimisation
    from ai_singer.train_settings import typed_config

    torch.manual_seed(0)
    base_dir = Path(size) if (Path(size) / checkpoint.BASE_CONFIG_FILE).is_file() else None
    if discriminator_mode == "auto":
        has_one = base_dir is None or (base_dir / checkpoint.BASE_DISCRIMINATOR_FILE).is_file()
        discriminator_mode = "train" if has_one else "off"
    overrides = ([] if base_dir is not None else [f"model={size}"]) + [f"trainer.precision={precision}", *overrides]
    if method != "pretrain":
        overrides.append(f"peft={method}")
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = typed_config(compose("train", overrides=overrides))
    cfg.trainer.discriminator = discriminator_mode  # (a pretrain config refuses anything but train)
    base = None
    if base_dir is not None:
        base = checkpoint.load_base(base_dir, with_discriminator=discriminator_mode != "off")
        config = SingerVAEConfig.from_dict(base.model_config)
    else:
        config = dataclasses.replace(cfg.model, content_dim=768, n_speakers=4)
    model = SingerVAE(config)
    discriminator = None if discriminator_mode == "off" else Discriminator.from_config(config)
    if base is not None:
        checkpoint.load_state_strict(model, base.generator_state, base_dir / checkpoint.BASE_GENERATOR_FILE)
        if discriminator is not None:
            checkpoint.load_state_strict(discriminator, base.discriminator_state,
                                         base_dir / checkpoint.BASE_DISCRIMINATOR_FILE)
    if discriminator is not None:
        discriminator.requires_grad_(discriminator_mode == "train")
    if method == "pretrain":
        generator = GeneratorForTraining(model)
    else:
        singer = model.embed_speaker(torch.arange(config.n_speakers)).mean(0).detach()
        prepare_for_finetune(model, cfg.peft)
        model.speaker_embedding.requires_grad_(False)  # as the trainer's fine-tune: the singer vector replaces it
        generator = GeneratorForTraining(model, singer_embedding=singer)
    dev = torch.device(device)
    generator.to(dev)
    if discriminator is not None:
        discriminator.to(dev)
    opt = make_optimisation(generator, discriminator, cfg.trainer)
    runner = StepRunner(generator, discriminator, opt, config, cfg.audio, cfg.loss, cfg.trainer, dev)

    return runner, synthetic_batch(config, batch_size, frames), model, generator, opt, config, cfg


def one_configuration(size: str, method: str, steps: int, warmup: int, batch_size: int, frames: int,
                      threads: int, device: str, precision: str, discriminator_mode: str = "train") -> dict:
    import torch
    from safetensors.torch import save_file

    from ai_singer.adapters import adapter_state_dict
    from ai_singer.model.synthesizer import SingerVAE

    torch.set_num_threads(threads)
    runner, batch, model, generator, opt, config, cfg = make_runner(size, method, batch_size, frames, device, precision,
                                                                    discriminator_mode)
    dev = runner.device
    for step in range(warmup):
        runner.train_step(batch, step)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for step in range(warmup, warmup + steps):
        runner.train_step(batch, step)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - started) / steps

    with tempfile.TemporaryDirectory() as tmp:
        if method == "pretrain":
            tensors = dict(model.state_dict())
        else:
            tensors = adapter_state_dict(model)
            tensors["singer_embedding"] = generator.singer_embedding.detach()
        artifact = Path(tmp) / "artifact.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(artifact))
        full = Path(tmp) / "generator.safetensors"
        fresh = SingerVAE(config)
        save_file({k: v.contiguous() for k, v in fresh.state_dict().items()}, str(full))
        artifact_bytes, generator_bytes = artifact.stat().st_size, full.stat().st_size
        generator_params = sum(p.numel() for p in fresh.parameters())
    out = {
        "model": size, "method": method, "discriminator": discriminator_mode, "batch_size": batch_size, "frames": frames,
        "segment_frames": config.segment_frames, "device": str(dev), "threads": threads, "precision": precision,
        "step_s": round(step_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": sum(p.numel() for p in generator.parameters() if p.requires_grad),
        "generator_params": generator_params,
        "optimizer_state_mb": round((optimizer_state_bytes(opt.generator)
                                     + optimizer_state_bytes(opt.discriminator)) / 2**20, 2),
        "generator_optimizer_state_mb": round(optimizer_state_bytes(opt.generator) / 2**20, 2),
        "artifact_mb": round(artifact_bytes / 2**20, 3),
        "full_generator_mb": round(generator_bytes / 2**20, 2),
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def to_markdown(rows: list[dict]) -> str:
    head = ("| model | method | discriminator | s/step | peak RSS MB | trainable params | AdamW state MB (G / G+D) | artifact MB "
            "| full generator MB |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r.get('discriminator', 'train')} | {r['step_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['trainable_params']:,} | {r['generator_optimizer_state_mb']:.1f} / "
                     f"{r['optimizer_state_mb']:.1f} | {r['artifact_mb']:.2f} | {r['full_generator_mb']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small", "base"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--discriminators", nargs="+", default=["train"], choices=DISCRIMINATORS,
                        help="fine-tuning: train the base's discriminator, keep it frozen, or use none "
                             "(pretrain rows always train it)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=64, help="frames per item (64 x 512 / 44100 = 0.74 s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="print the table of a results JSON and exit")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "METHOD", "DISCRIMINATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.markdown:
        print(to_markdown(json.loads(args.markdown.read_text())["results"]))
        return
    if args.one:
        row = one_configuration(args.one[0], args.one[1], args.steps, args.warmup, args.batch_size, args.frames,
                                args.threads, args.device, args.precision, args.one[2])
        print("RESULT " + json.dumps(row))
        return
    rows = []
    configurations = [(size, method, mode) for size in args.models for method in args.methods
                      for mode in (["train"] if method == "pretrain" else args.discriminators)]
    for size, method, mode in configurations:
        command = [sys.executable, __file__, "--one", size, method, mode, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch-size", str(args.batch_size), "--frames", str(args.frames),
                   "--threads", str(args.threads), "--device", args.device, "--precision", args.precision]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{size}/{method}/{mode} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        row = json.loads(lines[-1][len("RESULT "):])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(to_markdown(rows))
    if args.out:
        from ai_singer.atomic import atomic_write_json

        atomic_write_json(args.out, {"argv": sys.argv[1:], "results": rows})


if __name__ == "__main__":
    main()
