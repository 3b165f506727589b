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

import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tools` is a folder of scripts, not installed

from tools.bench_import import best_of, measurements, parse_arguments  # noqa: E402
from tools.benchmarks_md import replace_section  # noqa: E402

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
    args = parse_arguments(__doc__.split("\n\n")[0], SECTION, "folder written by make_rvc_fixtures.py --full-size")
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
            size = sum((src / name).stat().st_size for name in inputs) / 1e6
            rows.append(best_of(label, arguments, args.repeats, keep, input_mb=size))
        reference = torch.load(src / "reference_full.pt", weights_only=True)
        torch.set_num_threads(1)
        base_diff = max_difference(base_dir, reference, "infer")
        singer_diff = max_difference(Path(singers) / "bench", reference, "singer")
    print(f"max abs difference to RVC's waveform: base {base_diff:.1e}, singer {singer_diff:.1e} "
          f"(RVC's peaks {reference['infer_wav'].abs().max():.2f}, {reference['singer_wav'].abs().max():.2f})")
    body = f"""Wall time of `python -m ai_singer.importers rvc` (a fresh process: Python start-up and imports included,
best of {args.repeats}) on RVC v2's full-size 40 kHz model with random weights, written by RVC's own code
(`tools/make_rvc_fixtures.py --full-size`: `f0G40k.pth`/`f0D40k.pth` in float16 as RVC's `pretrained_v2`
holds them, and a singer exported by RVC's `savee`, 109 speakers); measured with `tools/bench_import_rvc.py`.

{measurements(rows)}

The layout (v2, 40 kHz) is recognised from the tensors (no config file). The exported singer has no posterior
encoder; it comes from the base given with `--base`. The imported full-size models convert 200 frames with
RVC's recorded random draws within {max(base_diff, singer_diff):.0e} of RVC's own waveform (max abs; base
{base_diff:.1e}, singer {singer_diff:.1e})."""
    print(body)
    if args.write_benchmarks:
        replace_section(REPO / "BENCHMARKS.md", SECTION, body)


if __name__ == "__main__":
    main()
