"""Benchmark the preprocess steps: seconds of audio processed per wall-clock second (x real time).

    .venv/bin/python tools/bench_preprocess.py [--seconds 60] [--base-seconds 20] [--no-write]

Steps, each over the same synthetic sung phrases (48 kHz stereo wav on disk, sliced into clips):
slice + read + resample + loudness; F0 with every registered method at the model framing; the content
encoder at a tiny size and at HuBERT-base size (random weights saved to a temporary folder and loaded
through the real backend: nothing is downloaded); and the whole stage in one process. Prints a markdown
table and writes it into BENCHMARKS.md under "## Preprocess" (other sections are kept).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_singer.audio import (SliceConfig, load_audio, normalize_loudness, resample, slice_file,  # noqa: E402
                             to_mono)
from tools.benchmarks_md import machine_description, replace_section  # noqa: E402

SR, HOP = 44100, 512


def sung_recording(path: Path, seconds: float, sr: int = 48000) -> None:
    """Stereo phrases of three notes with rests, ``seconds`` long, different pitches per phrase."""
    rng = np.random.default_rng(0)
    pieces, total = [], 0
    while total < seconds * sr:
        notes = []
        for _ in range(3):
            notes += [(float(rng.uniform(150, 500)), float(rng.uniform(1.0, 2.5))), (0.0, float(rng.uniform(0.4, 0.9)))]
        f0 = np.concatenate([np.full(int(d * sr), hz) for hz, d in notes])
        t = np.arange(len(f0)) / sr
        f0 = f0 * 2 ** (30 / 1200 * np.sin(2 * np.pi * 5.5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        wave = sum(np.sin(k * phase) / k * (k * f0 < sr / 2) for k in range(1, 13)) * (f0 > 0)
        pieces.append(0.3 * wave / np.max(np.abs(wave)))
        total += len(f0)
    mono = np.concatenate(pieces)[: int(seconds * sr)].astype(np.float32)
    sf.write(str(path), np.stack([mono, 0.7 * mono], axis=1), sr, subtype="PCM_24")


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def save_hubert(folder: Path, size: str) -> Path:
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    if size == "tiny":  # the test suite's tiny model
        config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    else:  # HubertConfig() defaults = HuBERT-base / ContentVec size (12 layers, 768 wide, ~94 M parameters)
        config = HubertConfig()
    HubertModel(config).eval().save_pretrained(folder)
    return folder




def run(seconds: float, base_seconds: float) -> tuple[list[tuple[str, float, float]], str]:
    import torch

    from ai_singer.features.content import encode_audio, load_content_encoder
    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.features.pitch import BUILT_IN_F0, extract_f0

    rows: list[tuple[str, float, float]] = []  # (step, audio seconds, wall seconds)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "raw" / "bench" / "session.wav"
        source.parent.mkdir(parents=True)
        sung_recording(source, seconds)
        from ai_singer.config import conf_group

        slicer = SliceConfig(**conf_group("slicer"))
        loudness = conf_group("loudness")

        def prepare():
            clips = []
            for start, stop in slice_file(source, slicer):
                audio, rate = load_audio(source, start, stop)
                clip = resample(to_mono(audio), rate, SR)
                clip = normalize_loudness(clip[: len(clip) // HOP * HOP], SR, **loudness)
                clips.append((clip, resample(clip, SR, 16000)))
            return clips

        clips, wall = timed(prepare)
        audio_seconds = sum(len(clip) for clip, _ in clips) / SR
        rows.append(("slice + read + resample (48k stereo -> 44.1k, 16k) + loudness", audio_seconds, wall))
        for method in BUILT_IN_F0:
            f0_settings = F0Settings.from_conf(method=method)
            _, wall = timed(lambda: [extract_f0(clip, SR, HOP, None, f0_settings) for clip, _ in clips])
            rows.append((f"F0 `{method}` (hop {HOP} at {SR} Hz)", audio_seconds, wall))
        for size, limit in (("tiny", seconds), ("base", base_seconds)):
            folder = save_hubert(tmp / f"hubert_{size}", size)
            encoder = load_content_encoder("hubert", folder, layer=2 if size == "tiny" else 12)
            subset, total = [], 0.0
            for _, wav16k in clips:
                if total >= limit:
                    break
                subset.append(wav16k)
                total += len(wav16k) / 16000
            encode_audio(encoder, subset[0][:16000])  # warm-up
            _, wall = timed(lambda model=encoder: [encode_audio(model, wav16k) for wav16k in subset])
            label = "tiny (2 layers, 32 wide)" if size == "tiny" else "HuBERT-base size (12 layers, 768 wide)"
            rows.append((f"content encoder {label}", total, wall))
            del encoder
        from hydra import compose, initialize_config_dir

        from ai_singer.conf_dir import conf_dir
        from ai_singer.preprocess import run_preprocess

        # the whole stage on 4 copies of the recording (one source file per worker at a time)
        for copy in range(1, 4):
            (tmp / "raw" / "bench" / f"session{copy}.wav").write_bytes(source.read_bytes())
        for workers in (0, 2):
            with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
                cfg = compose("preprocess", overrides=[
                    f"paths.raw={tmp / 'raw'}", f"paths.processed={tmp / f'processed{workers}'}",
                    f"content.path={tmp / 'hubert_tiny'}", "content.layer=2", f"num_workers={workers}",
                    "progress=false"])
            result, wall = timed(lambda: run_preprocess(cfg))
            where = "in one process" if workers == 0 else f"num_workers={workers} (worker start-up included)"
            rows.append((f"whole stage {where}: 4 files, harvest, tiny encoder, writes included",
                         sum(result.seconds_per_singer.values()), wall))
    load_after = os.getloadavg()[0]
    note = (f"Load average (1 min) {load_before:.1f} before / {load_after:.1f} after on {os.cpu_count()} CPUs"
            + (": other work was running on this shared machine, so these are pessimistic numbers."
               if max(load_before, load_after) > 0.5 * (os.cpu_count() or 1) else "."))
    del torch
    return rows, note


def table(rows: list[tuple[str, float, float]]) -> str:
    lines = ["| step | audio (s) | wall (s) | x real time |", "|---|---:|---:|---:|"]
    for step, audio_seconds, wall in rows:
        lines.append(f"| {step} | {audio_seconds:.1f} | {wall:.2f} | {audio_seconds / wall:.1f} |")
    return "\n".join(lines)


def slowest_steps(rows: list[tuple[str, float, float]]) -> str:
    """One sentence naming the two slowest per-step rows (the whole-stage rows excluded)."""
    steps = sorted((audio_seconds / wall, step) for step, audio_seconds, wall in rows if not step.startswith("whole"))
    (rate_a, step_a), (rate_b, step_b) = steps[:2]
    return f"The slowest steps here: {step_a} ({rate_a:.1f}x real time) and {step_b} ({rate_b:.1f}x)."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the synthetic recording")
    parser.add_argument("--base-seconds", type=float, default=20.0,
                        help="audio encoded with the HuBERT-base-size encoder (it is the slow step)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                        help="torch intra-op threads (default: what each of the default 2 workers gets)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows, note = run(args.seconds, args.base_seconds)
    body = "\n".join([
        "Seconds of audio processed per wall-clock second (higher is better), measured with "
        "`tools/bench_preprocess.py` on a synthetic 48 kHz stereo recording of sung phrases "
        f"({args.seconds:.0f} s; the HuBERT-base-size row encodes the first ~{args.base_seconds:.0f} s).",
        "",
        f"- Machine: {machine_description()}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- {note}",
        "",
        table(rows),
        "",
        "Each step runs in one process with the torch thread count above (what each of the default two "
        "workers gets on this machine: `cpu_count // num_workers`). On a loaded machine, more torch threads "
        "than free cores makes the encoder many times slower (spin-waiting threads), which is why workers "
        "divide the cores between them. "
        "The stage runs one source file per worker process (`num_workers`, default 2), so with N free cores "
        "the whole-stage rate grows with min(N, num_workers) once the workers' start-up (importing torch and "
        "transformers, loading the encoder: seconds) is paid; on a busy machine extra workers do not help. "
        + slowest_steps(rows),
    ])
    print(body)
    if not args.no_write:
        replace_section(REPO / "BENCHMARKS.md", "Preprocess", body)
        print(f"\nwrote the Preprocess section of {REPO / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
