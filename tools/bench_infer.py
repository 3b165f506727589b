"""Benchmark song conversion on CPU: real-time factor and peak memory per model size, merged vs unmerged.

    .venv/bin/python tools/bench_infer.py [--seconds 180] [--base-seconds 30] [--sizes tiny small base]
                                          [--f0 dio] [--harvest-seconds 30] [--threads 2] [--no-write]

A synthetic song (vocals + pad + drums stems, 44.1 kHz, from tools/synth) is converted end to end by
``ai_singer.infer.convert_song``: slicing, F0, content features with a HuBERT-base-size encoder (random
weights, 768-dim, layer 12: the real encoder's cost), the SingerVAE of each size in ``conf/model/``
(random weights) carrying a LoRA adapter (``conf/peft/lora.yaml`` defaults), overlap-add, rest gate,
loudness match, mix, limiter and writing. Each configuration runs in its own process so its peak RSS
(``VmHWM``) is its own. RTF = compute seconds / audio seconds (lower is better; < 1 is faster than
real time). The base size converts a shorter excerpt (``--base-seconds``); its RTF applies to any length
because the work is chunk by chunk. Writes the "## Inference" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.benchmarks_md import machine_description, replace_section  # noqa: E402


def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB: ``VmHWM`` of /proc/self/status. (Not
    ``ru_maxrss``: Linux carries it over from the parent through fork + exec, so a worker started by a big
    parent would report the parent's peak.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------ setup
def make_song(folder: Path, seconds: float) -> Path:
    """A song folder (vocals.wav, pad.wav, drums.wav) of about ``seconds`` from the synthetic corpus."""
    from tools.synth.corpus import CorpusSettings, generate_corpus

    scratch = folder.parent / f".synth_{folder.name}"
    generate_corpus(CorpusSettings(out=scratch, singers=1, held_out=0, phrases_per_singer=1, songs=1,
                                   song_seconds=seconds, parallel_phrases=0, workers=1, progress=False))
    source = next((scratch / "songs").iterdir())
    folder.mkdir(parents=True, exist_ok=True)
    for stem in ("vocals", "pad", "drums"):
        shutil.copy(source / f"{stem}.wav", folder / f"{stem}.wav")
    shutil.rmtree(scratch)
    return folder


def excerpt(song: Path, folder: Path, seconds: float) -> Path:
    """``seconds`` of every stem of ``song``, from a quarter of the way in (past the intro, so the excerpt
    is sung about as densely as the whole song)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    for path in song.glob("*.wav"):
        data, sr = sf.read(str(path), dtype="float32")
        start = len(data) // 4
        sf.write(str(folder / path.name), data[start: start + int(seconds * sr)], sr, subtype="PCM_16")
    return folder


def save_hubert_base(folder: Path) -> Path:
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    HubertModel(HubertConfig()).eval().save_pretrained(folder)  # HuBERT-base / ContentVec size, random
    return folder


def make_artifacts(root: Path, size: str) -> tuple[Path, Path]:
    """A random base of ``size`` (conf/model/<size>.yaml, content dim 768) and a LoRA adapter with
    non-zero random weights, saved like the trainer saves them."""
    import torch
    from omegaconf import OmegaConf

    from ai_singer import checkpoint
    from ai_singer.adapters import adapter_state_dict, as_peft_settings, prepare_for_finetune
    from ai_singer.model import SingerVAE, SingerVAEConfig

    audio = OmegaConf.load(REPO / "conf" / "audio" / "44k.yaml")
    model_yaml = OmegaConf.merge({"audio": audio}, {"model": OmegaConf.load(REPO / "conf" / "model" / f"{size}.yaml")})
    values = OmegaConf.to_container(model_yaml.model, resolve=True)
    values.update(content_dim=768, n_speakers=4)
    torch.manual_seed(0)
    model = SingerVAE(SingerVAEConfig.from_dict(values))
    base_dir = checkpoint.save_base(root / "pretrain" / size, model.state_dict(), None, {
        "model": model.config.to_dict(), "content_encoder": {"name": "hubert", "dim": 768},
        "sample_rate": model.config.sample_rate, "hop_length": model.config.hop_length,
        "speakers": ["a", "b", "c", "d"]})
    peft_yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "peft" / "lora.yaml"))
    settings = as_peft_settings(peft_yaml)
    prepare_for_finetune(model, settings)
    generator = torch.Generator().manual_seed(1)
    tensors = {k: 0.01 * torch.randn(v.shape, generator=generator) for k, v in adapter_state_dict(model).items()}
    tensors["singer_embedding"] = torch.randn(model.config.gin_channels, generator=generator)
    base = checkpoint.load_base(base_dir)
    singer = f"singer_{size}"
    checkpoint.save_adapter(root / "singers" / singer, tensors, {
        "method": settings.method, "singer": singer, "peft": settings.to_dict(), "base_sha256": base.sha256,
        "base_name": size, "stats": {"f0_median_hz": 220.0}})
    n_params = model.inference_parameter_count() if hasattr(model, "inference_parameter_count") else \
        sum(p.numel() for p in model.parameters())
    (root / f"{size}.params").write_text(str(n_params))
    return base_dir, root / "singers" / singer


# ------------------------------------------------------------------------------------------ worker
def worker(args: argparse.Namespace) -> None:
    """One configuration in this process: load, convert the song once, print a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from ai_singer.config import load_settings
    from ai_singer.infer import Converter, convert_song, read_song_folder

    # the plain conversion (refine off): refine's cost is measured on real voices (BENCHMARKS.md "Real voices")
    settings = load_settings("infer", [f"f0.method={args.f0}", "refine.steps=0"])
    root = Path(args.root)
    converter = Converter(root / "pretrain" / args.size, {"name": "hubert", "path": str(root / "hubert"),
                                                          "layer": 12}, settings, root / "singers",
                          device="cpu", merge=args.merge == "merged")
    load_s = time.perf_counter() - started
    rss_loaded = rss_mb()
    song = read_song_folder(Path(args.song))
    result = convert_song(converter, song, Path(args.out), f"singer_{args.size}")
    report = result.report
    print(json.dumps({"size": args.size, "merge": args.merge, "f0": args.f0, "load_s": load_s,
                      "rss_loaded_mb": rss_loaded, "rss_peak_mb": rss_mb(),
                      "audio_s": report["source"]["seconds"], "timings": report["timings"],
                      "pieces": report["pieces"]}))


def model_only(args: argparse.Namespace) -> None:
    """Merged vs unmerged vs plain base, the SingerVAE alone on the same ``--frames`` input: the minimum of
    ``--repeats`` interleaved runs each (the minimum is robust to other jobs on a shared machine)."""
    import copy

    import torch

    from ai_singer import adapters, checkpoint
    from ai_singer.model import SingerVAE, SingerVAEConfig

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    base = checkpoint.load_base(root / "pretrain" / args.size)
    model = SingerVAE(SingerVAEConfig.from_dict(base.model_config))
    checkpoint.load_state_strict(model, base.generator_state)
    model.remove_weight_norm()
    model.eval()
    adapter = checkpoint.load_adapter(root / "singers" / f"singer_{args.size}")
    unmerged = copy.deepcopy(model)
    adapters.load_adapter_state(unmerged, adapter.config["peft"], adapter.tensors)
    merged = copy.deepcopy(unmerged)
    adapters.merge_adapters(merged)
    frames, config = int(args.frames), model.config
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, config.content_dim, frames, generator=generator), torch.full((1, frames), 220.0),
              torch.ones(1, frames), torch.full((1, frames), 0.1), adapter.tensors["singer_embedding"][None])
    best = {"base": float("inf"), "merged": float("inf"), "unmerged": float("inf")}
    with torch.inference_mode():
        for candidate in (model, merged, unmerged):  # warm-up: one-time kernel and allocator setup
            candidate.infer(*inputs, noise_scale=0.35)
        for _ in range(int(args.repeats)):
            for name, candidate in (("base", model), ("merged", merged), ("unmerged", unmerged)):
                started = time.perf_counter()
                candidate.infer(*inputs, noise_scale=0.35, generator=torch.Generator().manual_seed(0))
                best[name] = min(best[name], time.perf_counter() - started)
    audio_s = frames * config.hop_length / config.sample_rate
    print(json.dumps({"size": args.size, "audio_s": audio_s, **{k: v / audio_s for k, v in best.items()}}))


def run_model_only(root: Path, size: str, frames: int, repeats: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--model-only", "--root", str(root), "--size", size, "--frames", str(frames),
               "--repeats", str(repeats), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"model-only {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_config(root: Path, song: Path, size: str, merge: str, f0: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--worker", "--root", str(root), "--song", str(song), "--size", size,
               "--merge", merge, "--f0", f0, "--threads", str(threads), "--out", str(root / "out")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{size}/{merge} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ report
def table(rows: list[dict], params: dict[str, int]) -> str:
    lines = ["| model (inference params) | adapter | F0 | audio (s) | RTF total | F0 | content | model | "
             "mix+write | load (s) | RSS after load (MiB) | peak RSS (MiB) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        t, audio = row["timings"], row["audio_s"]
        lines.append(
            f"| {row['size']} ({params[row['size']] / 1e6:.1f} M) | {row['merge']} | {row['f0']} | {audio:.0f} | "
            f"{t['total_s'] / audio:.3f} | {t['f0_s'] / audio:.3f} | {t['content_s'] / audio:.3f} | "
            f"{t['model_s'] / audio:.3f} | {(t['mix_write_s'] + t['load_s']) / audio:.3f} | {row['load_s']:.1f} | "
            f"{row['rss_loaded_mb']:.0f} | {row['rss_peak_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="song length for tiny and small")
    parser.add_argument("--base-seconds", type=float, default=30.0, help="excerpt converted with the base size")
    parser.add_argument("--harvest-seconds", type=float, default=30.0,
                        help="excerpt for one extra tiny run with F0 harvest (the default extractor); 0 = skip")
    parser.add_argument("--long-seconds", type=float, default=600.0,
                        help="one more tiny run on a song this long, to show memory does not grow with length; 0 = skip")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--f0", default="dio", help="F0 method of the main runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared machine more threads than free cores spin-wait)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--frames", type=int, default=430, help="model-only comparison: frames (430 = 5 s)")
    parser.add_argument("--repeats", type=int, default=5, help="model-only comparison: interleaved repeats")
    parser.add_argument("--unmerged-pipeline", action="store_true",
                        help="also run the whole pipeline with unmerged adapters (doubles the run time)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-only", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--root", "--song", "--size", "--merge", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.model_only:
        model_only(args)
        return

    load_before = os.getloadavg()
    rows: list[dict] = []
    params: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"making a {args.seconds:.0f} s song, a HuBERT-base-size encoder and the artifacts ...", flush=True)
        song = make_song(root / "song", args.seconds)
        short = excerpt(song, root / "song_short", args.base_seconds)
        harvest_song = excerpt(song, root / "song_harvest", args.harvest_seconds) if args.harvest_seconds else None
        save_hubert_base(root / "hubert")
        for size in args.sizes:
            make_artifacts(root, size)
            params[size] = int((root / f"{size}.params").read_text())
        for size in args.sizes:
            for merge in ("merged", "unmerged") if args.unmerged_pipeline else ("merged",):
                target = short if size == "base" else song
                row = run_config(root, target, size, merge, args.f0, args.threads)
                rows.append(row)
                print(table([row], params).splitlines()[-1], flush=True)
        model_rows = []
        for size in args.sizes:
            model_rows.append(run_model_only(root, size, args.frames, args.repeats, args.threads))
            print(model_rows[-1], flush=True)
        if args.long_seconds:
            long_song = make_song(root / "song_long", args.long_seconds)
            row = run_config(root, long_song, args.sizes[0], "merged", args.f0, args.threads)
            rows.append(row)
            print(table([row], params).splitlines()[-1], flush=True)
            shutil.rmtree(long_song)
        if harvest_song is not None:
            row = run_config(root, harvest_song, args.sizes[0], "merged", "harvest", args.threads)
            rows.append(row)
            print(table([row], params).splitlines()[-1], flush=True)
    load_after = os.getloadavg()
    body = "\n".join([
        "Real-time factor (compute seconds per second of audio; lower is better) and peak memory of converting "
        "one song end to end on CPU, measured with `tools/bench_infer.py`: synthetic 44.1 kHz song (vocals + 2 "
        f"accompaniment stems), {args.seconds:.0f} s for tiny/small, a {args.base_seconds:.0f} s excerpt (from a "
        "quarter of the way in) for base because it is slow here (the work is chunk by chunk, so its RTF carries "
        "over to a 3-minute song: about RTF x 180 s of compute), and one tiny run on a "
        f"{args.long_seconds:.0f} s song; random weights (timing only), a HuBERT-base-size content encoder "
        "(768-dim, 12 layers, random), a LoRA adapter (`conf/peft/lora.yaml`), `noise_scale` 0.35, default "
        f"`chunk` settings. F0 `{args.f0}` in the main rows; the default `harvest` costs what its own row shows.",
        "",
        f"- Machine: {machine_description(args.threads)}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- The machine was shared with other jobs during the run (load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after, on {os.cpu_count()} CPUs): absolute times are pessimistic and noisy; "
        "compare rows with each other.",
        "- Columns F0 / content / model / mix+write are the RTF of each stage (mix+write includes decoding the "
        "stems). Peak RSS is the whole process (Python, torch, transformers, both models, the song and its "
        "stems); \"RSS after load\" is before the song is read. The model's activations per call are bounded "
        "by `chunk.batch_seconds` (30 s of padded audio) and `chunk.max_length_s`; what grows with the song is "
        "only a few float32 arrays at the source rate (about 10 MB per minute each) and the stems while mixing "
        "(compare the tiny rows of different lengths).",
        "",
        table(rows, params),
        "",
        f"The SingerVAE alone, merged vs unmerged LoRA vs the plain base (RTF, the minimum of {args.repeats} "
        f"interleaved runs on the same {args.frames}-frame input, {args.frames * 512 / 44100:.1f} s of audio):",
        "",
        "| model | plain base | merged adapter | unmerged adapter | unmerged / merged |",
        "|---|---:|---:|---:|---:|",
        *[f"| {r['size']} | {r['base']:.3f} | {r['merged']:.3f} | {r['unmerged']:.3f} | "
          f"{r['unmerged'] / r['merged']:.2f}x |" for r in model_rows],
        "",
        "`ai_singer.infer` merges each singer's adapter into a copy of the base (the LoRA update is folded into "
        "the weights), so a converted song costs what the plain base costs; unmerged LoRA runs an extra "
        "low-rank conv pair beside every adapted conv (ratio above). With several singers in one song "
        "(sections), one merged copy exists at a time: memory is the base plus one copy.",
    ])
    print(body)
    if not args.no_write:
        replace_section(REPO / "BENCHMARKS.md", "Inference", body)
        print(f"\nwrote the Inference section of {REPO / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
