"""How much of a full fine-tune an extracted LoRA adapter keeps: error vs rank and adapter size.

    .venv/bin/python tools/bench_extract.py --base pretrain/real-ddsp-words --full singers/<name>-full \\
        [--ranks 4 8 16 32 64] [--energies 0.5 0.8 0.9] [--vocal data/examples/song01/vocals.flac] [--write]

For each rank (and each retained-energy target, ranks capped at the largest of ``--ranks``) the full model is
extracted with ``ai_singer.extract.extract_adapter`` into a temporary singers folder, and the same vocal is
converted through the full model (loaded by ``convert`` as the ``peft=full`` adapter it is) and through the
extracted adapter, with the same settings and no sampling noise (``noise_scale=0``, ``f0.method=dio``); with
``--features DIR`` (a base whose content encoder is not installed, e.g. an imported so-vits-svc base with random
ContentVec), the stored features of that processed dataset's first clips are rendered instead. Reported:

* the relative L2 error of the kept weight difference, ``||dW - kept|| / ||dW||``, over all parameters and over
  those conversion runs (prior encoder, flow, decoder: the posterior encoder is training-only);
* the converted waveform's relative L2 difference from the full model's, and the mean absolute log-mel
  difference (dB, 80 mels); the first row, ``base + singer vector``, is the base with the full model's singer
  vector and nothing else: the difference the adapter has to close;
* the size of ``adapter.safetensors`` (float32; at ``--fp16-rank`` also float16, and float16 without the
  posterior encoder, which conversion never runs: ``drop=['posterior_encoder\\..*']``).

``--write`` replaces the "Full model -> adapter" section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ai_singer import checkpoint as ckpt  # noqa: E402
from tools.benchmarks_md import machine_description, replace_section  # noqa: E402

SECTION = "Full model -> adapter"
N_MELS = 80


def log_mel_db(wav: np.ndarray, sr: int) -> torch.Tensor:
    """[n_mels, frames] 20*log10 of the mel magnitude (floored at 1e-5)."""
    from ai_singer.features.spectrogram import mel_spectrogram

    mel = mel_spectrogram(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None], sr, 2048, 512, 2048,
                          N_MELS)
    return 20 * torch.log10(mel.clamp_min(1e-5))[0]


def compare(output: np.ndarray, reference: np.ndarray, sr: int) -> tuple[float, float]:
    """(relative L2 of the waveform difference, mean |log-mel difference| in dB)."""
    n = min(len(output), len(reference))
    a, b = output[:n].astype(np.float64), reference[:n].astype(np.float64)
    wave = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
    return wave, float((log_mel_db(a, sr) - log_mel_db(b, sr)).abs().mean())


def inference_error(extraction) -> float:
    """Relative error of the kept difference over the parameters conversion runs (no posterior encoder)."""
    used = [layer for layer in extraction.layers if not layer.name.startswith("posterior_encoder.")]
    total = math.sqrt(sum(layer.delta ** 2 for layer in used))
    return math.sqrt(sum(layer.error ** 2 for layer in used)) / total if total > 0 else 0.0


def base_only(base_dir: Path, full_dir: Path, out: Path) -> None:
    """An adapter that holds the full model's singer vector and nothing else (the base's own weights)."""
    from ai_singer.config import conf_group
    from ai_singer.full_model import base_model, load_full
    from ai_singer.lora_svd import ExtractSettings, extract, plain_parameters

    base = ckpt.load_base(base_dir)
    model = base_model(base)
    full = load_full(full_dir, base, plain_parameters(model))
    extraction = extract(model, plain_parameters(model), full.singer_vector,
                         ExtractSettings(rank=1, energy=None, drop=[], dtype="float32"), conf_group("peft", "lora"))
    ckpt.save_adapter(out, extraction.tensors, {"method": "lora", "peft": extraction.peft.to_dict(),
                                                "base_sha256": base.sha256, "singer": out.name})


def size_table(model_option: str, ranks: list[int]) -> str:
    """Adapter sizes at each rank for the ``conf/model/<model_option>.yaml`` architecture (random weights and a
    random full-rank difference: the sizes depend on the shapes only, so no trained model is needed)."""
    from safetensors.torch import save_file

    from ai_singer.config import load_settings
    from ai_singer.extract import extract_adapter
    from ai_singer.lora_svd import ExtractSettings
    from ai_singer.model.synthesizer import SingerVAE, SingerVAEConfig

    torch.manual_seed(0)
    config = load_settings("train", [f"model={model_option}"]).model.to_dict()
    model = SingerVAE(SingerVAEConfig.from_dict({**config, "content_dim": 768}))
    model.remove_weight_norm()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = ckpt.save_base(Path(tmp) / "base", model.state_dict(), None, {
            "model": model.config.to_dict(), "content_encoder": {"name": "hubert", "dim": 768},
            "sample_rate": model.config.sample_rate, "hop_length": model.config.hop_length, "speakers": ["a"]})
        generator = torch.Generator().manual_seed(1)
        full = {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in model.state_dict().items()}
        full["singer_embedding"] = torch.randn(model.config.gin_channels, generator=generator)
        save_file(full, str(Path(tmp) / "full.safetensors"))
        full_mb = (Path(tmp) / "full.safetensors").stat().st_size / 1e6
        for rank in ranks:
            sizes = []
            for dtype, drop in (("float32", []), ("float16", [r"posterior_encoder\..*"])):
                out, _ = extract_adapter(base_dir, Path(tmp) / "full.safetensors",
                                         Path(tmp) / f"r{rank}{dtype}{len(drop)}",
                                         ExtractSettings(rank=rank, energy=None, drop=drop, dtype=dtype))
                sizes.append(f"{(out / ckpt.ADAPTER_TENSORS_FILE).stat().st_size / 1e6:.2f}")
            rows.append(f"| {rank} | " + " | ".join(sizes) + " |")
    return (f"Adapter size (MB) for the `model={model_option}` architecture with a 768-dim content encoder "
            f"(so-vits-svc 4.x's size; the generator alone is {full_mb:.1f} MB in float32):\n\n"
            "| rank | float32 | float16, no posterior encoder |\n|---|---|---|\n" + "\n".join(rows))


def adapted_model(base_dir: Path, adapter_dir: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """The base with the adapter loaded and merged and the singer vector ``g [1, gin]``, as ``convert`` makes
    them (the adapter's base hash checked)."""
    from ai_singer.adapters import load_adapter_state, merge_adapters
    from ai_singer.full_model import base_model

    base = ckpt.load_base(base_dir)
    adapter = ckpt.load_adapter(adapter_dir)
    ckpt.check_adapter_base(adapter, base)
    model = base_model(base)
    load_adapter_state(model, adapter.config.get("peft") or {"method": adapter.method}, adapter.tensors)
    return merge_adapters(model).eval(), adapter.tensors["singer_embedding"].float().reshape(1, -1)


def vocal_renderer(args: argparse.Namespace, singers: Path) -> tuple[Callable[[str], np.ndarray], int, str]:
    """Conversion of ``args.vocal`` by ``convert``'s Converter (needs the base's content encoder)."""
    from ai_singer.audio import load_audio, to_mono
    from ai_singer.config import load_settings
    from ai_singer.convert import Converter

    audio, sr = load_audio(args.vocal)
    mono = to_mono(audio)
    converter = Converter(args.base, None, load_settings("infer", ["noise_scale=0", "f0.method=dio", "refine.steps=0"]), singers,
                          device="cpu")
    vocal = args.vocal.relative_to(REPO) if args.vocal.is_relative_to(REPO) else args.vocal
    what = (f"The same vocal (`{vocal}`, {len(mono) / sr:.1f} s) converted through the full model and through each "
            "extracted adapter (noise_scale=0, dio F0)")
    return (lambda name: converter.convert_vocal(mono, sr, name).audio), converter.sample_rate, what


def features_renderer(args: argparse.Namespace, singers: Path) -> tuple[Callable[[str], np.ndarray], int, str]:
    """``model.infer`` on the stored features (content, F0, voicing, volume) of ``args.features``'s clips: for a
    base whose content encoder is not installed."""
    from safetensors.torch import load_file

    from ai_singer.data import read_clips

    clips = [load_file(str(clip.features)) for clip in read_clips(args.features / "manifest.jsonl")[:args.clips]]
    sr = int(ckpt.load_base(args.base).model_config["sample_rate"])

    def render(name: str) -> np.ndarray:
        model, g = adapted_model(args.base, singers / name)
        outputs = []
        with torch.inference_mode():
            for clip in clips:
                content = clip["content"].float().t()[None]
                f0, voiced, volume = (clip[key].float()[None] for key in ("f0", "voiced", "volume"))
                wav = model.infer(content, f0, voiced, volume, g, noise_scale=0.0,
                                  generator=torch.Generator().manual_seed(0))
                outputs.append(wav.reshape(-1).numpy())
        return np.concatenate(outputs)

    frames = sum(int(clip["f0"].shape[0]) for clip in clips)
    hop = int(ckpt.load_base(args.base).model_config["hop_length"])
    what = (f"The stored features (content, F0, voicing, volume) of {len(clips)} processed clips (`{args.features}`, "
            f"{frames * hop / sr:.1f} s) rendered by the full model and by each extracted adapter (`model.infer`, "
            "noise_scale=0, on the base loaded and the adapter merged as `convert` does)")
    return render, sr, what


def error_table(args: argparse.Namespace) -> tuple[str, str]:
    """(intro, markdown table) of the error vs rank on ``args.full``."""
    from ai_singer.extract import extract_adapter
    from ai_singer.lora_svd import ExtractSettings

    variants: list[tuple[str, ExtractSettings]] = [
        (f"r={r}", ExtractSettings(rank=r, energy=None, drop=[], dtype="float32")) for r in args.ranks]
    variants += [(f"energy {e:g} (r<={max(args.ranks)})", ExtractSettings(rank=max(args.ranks), energy=e, drop=[],
                                                                          dtype="float32")) for e in args.energies]
    if args.fp16_rank:
        variants.append((f"r={args.fp16_rank}, float16", ExtractSettings(rank=args.fp16_rank, energy=None, drop=[],
                                                                         dtype="float16")))
        variants.append((f"r={args.fp16_rank}, float16, no posterior encoder",
                         ExtractSettings(rank=args.fp16_rank, energy=None, drop=[r"posterior_encoder\..*"],
                                         dtype="float16")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        singers = Path(tmp) / "singers"
        singers.mkdir()
        (singers / "full").symlink_to(args.full.resolve())
        base_only(args.base, args.full, singers / "base-only")
        extractions = {}
        for index, (label, settings) in enumerate(variants):
            started = time.perf_counter()
            _, extraction = extract_adapter(args.base, args.full, singers / f"v{index}", settings)
            extractions[f"v{index}"] = (label, extraction, time.perf_counter() - started)
        render, out_sr, what = (features_renderer if args.features else vocal_renderer)(args, singers)
        reference = render("full")
        wave, mel = compare(render("base-only"), reference, out_sr)
        rows.append(("base + singer vector", "-", "1", "1", f"{wave:.4f}", f"{mel:.3f}",
                     f"{(singers / 'base-only' / ckpt.ADAPTER_TENSORS_FILE).stat().st_size / 1e6:.3f}", "-"))
        for name, (label, extraction, seconds) in extractions.items():
            wave, mel = compare(render(name), reference, out_sr)
            summary = extraction.summary()
            ranks = (f"{summary['rank_min']}-{summary['rank_max']}" if summary["rank_min"] != summary["rank_max"]
                     else str(summary["rank_max"]))
            megabytes = (singers / name / ckpt.ADAPTER_TENSORS_FILE).stat().st_size / 1e6
            rows.append((label, ranks, f"{extraction.relative_error():.4f}", f"{inference_error(extraction):.4f}",
                         f"{wave:.4f}", f"{mel:.3f}", f"{megabytes:.3f}", f"{seconds:.1f}"))
            print(" | ".join(rows[-1]), flush=True)
    header = ("| adapter | LoRA ranks | weight error (all) | weight error (conversion) | waveform rel. L2 vs full "
              "| log-mel L1 vs full (dB) | adapter MB | extract s |\n|---|---|---|---|---|---|---|---|")
    table = header + "\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return intro_text(args, what), table


def intro_text(args: argparse.Namespace, what: str) -> str:
    """What was measured and how (the section's first paragraphs); ``what``: the input and how it was rendered."""
    full_mb = (args.full / ckpt.ADAPTER_TENSORS_FILE).stat().st_size / 1e6
    return (f"Base `{args.base.name}`; full model `{args.full}` ({full_mb:.1f} MB as a peft=full adapter). "
            f"{args.note}\n\n{what}. Weight error: `||dW - kept|| / ||dW||` "
            "over every parameter, and over the prior encoder, flow and decoder only (what conversion runs). "
            "Biases, norms and relative-position tables are stored whole, so the error "
            "is the LoRA layers' truncation (and what `drop` leaves out).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from ai_singer.bundle import read_index

    parser.add_argument("--base", type=Path, default=REPO / "pretrain" / str(read_index(REPO).get("base")),
                        help="base folder (default: the bundled base, pretrain/bundle.json)")
    parser.add_argument("--full", type=Path, required=True, help="the full model (a peft=full adapter folder)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--energies", type=float, nargs="*", default=[0.5, 0.8, 0.9])
    parser.add_argument("--fp16-rank", type=int, default=16, help="also store this rank in float16")
    parser.add_argument("--vocal", type=Path, default=REPO / "data" / "examples" / "song01" / "vocals.flac")
    parser.add_argument("--features", type=Path, default=None,
                        help="a processed dataset folder: render its clips' stored features instead of converting "
                             "--vocal (for a base whose content encoder is not installed)")
    parser.add_argument("--clips", type=int, default=4, help="with --features: how many clips")
    parser.add_argument("--sizes-model", default="base", help="conf/model option whose adapter sizes are tabled "
                                                               "('' = none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="a line on how the full model was made (BENCHMARKS.md)")
    parser.add_argument("--write", action="store_true", help="replace the section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    intro, table = error_table(args)
    print(table)
    sizes = size_table(args.sizes_model, args.ranks) if args.sizes_model else ""
    print(sizes)
    body = (f"`tools/bench_extract.py` ({datetime.date.today().isoformat()}; {machine_description(args.threads)}). "
            + intro + "\n\n" + table + "\n\n" + sizes + "\n")
    if args.write:
        replace_section(REPO / "BENCHMARKS.md", SECTION, body)
        print(f"wrote the '{SECTION}' section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
