"""How long importing full-size RVC v2 files takes, and whether the imported full-size models give RVC's own
output (the "Import: RVC base" section of BENCHMARKS.md).

    ~/.cache/rvc-venv/bin/python tools/make_rvc_fixtures.py --full-size /tmp/rvc40k   # once, ~270 MB
    python tools/bench_import_rvc.py /tmp/rvc40k [--repeats 2] [--write-benchmarks]

Each import is the command a user types (``python -m ai_singer.importers rvc ...``) in a fresh process: the
base ``f0G40k.pth`` alone, with ``f0D40k.pth``, and the exported singer ``singer.pth`` on that base. Then both
imported models convert the 200 frames of ``reference_full.pt`` with RVC's recorded draws (noise_scale
0.66666, as RVC samples) and the largest difference to RVC's waveform is reported.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tools` is a folder of scripts, not installed

from tools.bench_import_sovits import timed_import  # noqa: E402
from tools.benchmarks_md import machine_description, replace_section  # noqa: E402

SECTION = "Import: RVC base"
RVC_NOISE_SCALE = 0.66666


def max_difference(base_dir: Path, reference: dict, prefix: str) -> float:
    """Our imported model's inference against RVC's, with RVC's draws served to ours."""
    from ai_singer import checkpoint
    from ai_singer.model import SingerVAE

    base = checkpoint.load_base(base_dir)
    model = SingerVAE(base.model_config).eval()
    checkpoint.load_state_strict(model, base.generator_state)
    model.remove_weight_norm()
    queue = [reference[f"{prefix}_prior_noise"], reference[f"{prefix}_source_noise"].transpose(1, 2)]
    randn = torch.randn
    torch.randn = lambda *shape, **kwargs: queue.pop(0).clone()
    try:
        f0 = reference["f0"]
        with torch.inference_mode():
            wav = model.infer(reference["content"].transpose(1, 2), f0, (f0 > 0).float(), torch.ones_like(f0),
                              model.embed_speaker(reference["speakers"]), noise_scale=RVC_NOISE_SCALE)
    finally:
        torch.randn = randn
    assert not queue, "RVC's draws were not all used"
    return float((wav - reference[f"{prefix}_wav"]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder written by make_rvc_fixtures.py --full-size")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write-benchmarks", action="store_true", help=f"rewrite the '{SECTION}' section")
    args = parser.parse_args()
    src = args.source
    rows = []
    with tempfile.TemporaryDirectory() as bases, tempfile.TemporaryDirectory() as singers:
        base_dir = Path(bases) / "bench"
        cases = [("f0G40k.pth", ["rvc", str(src / "f0G40k.pth")], None, ["f0G40k.pth"]),
                 ("f0G40k.pth + f0D40k.pth", ["rvc", str(src / "f0G40k.pth"), "--discriminator", str(src / "f0D40k.pth")],
                  Path(bases), ["f0G40k.pth", "f0D40k.pth"]),
                 ("singer.pth (--base)", ["rvc", str(src / "singer.pth"), "--base", str(base_dir)], Path(singers),
                  ["singer.pth"])]
        for label, arguments, keep, inputs in cases:
            runs = [timed_import(arguments, keep) for _ in range(args.repeats)]
            wall = min(r[0] for r in runs)
            size = sum((src / name).stat().st_size for name in inputs) / 1e6
            rows.append((label, size, wall, max(r[1] for r in runs), runs[0][2]))
            print(f"{label}: best of {args.repeats} {wall:.1f} s, peak RSS {rows[-1][3]:.0f} MB, wrote {runs[0][2]:.0f} MB")
        reference = torch.load(src / "reference_full.pt", weights_only=True)
        torch.set_num_threads(1)
        base_diff = max_difference(base_dir, reference, "infer")
        singer_diff = max_difference(Path(singers) / "bench", reference, "singer")
    print(f"max abs difference to RVC's waveform: base {base_diff:.1e}, singer {singer_diff:.1e} "
          f"(RVC's peaks {reference['infer_wav'].abs().max():.2f}, {reference['singer_wav'].abs().max():.2f})")
    load = os.getloadavg()[0]
    table = "\n".join(f"| {label} | {size:.0f} | {wall:.1f} | {peak:.0f} | {written:.0f} |"
                      for label, size, wall, peak, written in rows)
    body = f"""Wall time of `python -m ai_singer.importers rvc` (a fresh process: Python start-up and imports included,
best of {args.repeats}) on RVC v2's full-size 40 kHz model with random weights, written by RVC's own code
(`tools/make_rvc_fixtures.py --full-size`: `f0G40k.pth`/`f0D40k.pth` in float16 as RVC's `pretrained_v2`
holds them, and a singer exported by RVC's `savee`, 109 speakers); measured with `tools/bench_import_rvc.py`.

- Machine: {machine_description()}
- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average (1 min) {load:.1f} on {os.cpu_count()} CPUs
  (a shared machine: pessimistic).

| input | input MB | wall (s) | peak RSS MB | base written MB |
|---|---:|---:|---:|---:|
{table}

The layout (v2, 40 kHz) is recognised from the tensors (no config file). The exported singer has no posterior
encoder; it comes from the base given with `--base`. The imported full-size models convert 200 frames with
RVC's recorded random draws within {max(base_diff, singer_diff):.0e} of RVC's own waveform (max abs; base
{base_diff:.1e}, singer {singer_diff:.1e})."""
    print(body)
    if args.write_benchmarks:
        replace_section(REPO / "BENCHMARKS.md", SECTION, body)


if __name__ == "__main__":
    main()
