"""Re-save a base artifact with its tensors in another dtype (e.g. float16: half the download size).

    .venv/bin/python tools/convert_base.py SRC DST [--dtype float16|bfloat16|float32]

Writes a new base folder DST (generator, and discriminator when SRC has one) with ``weights_dtype`` in its
config.yaml and a new ``generator_sha256``. Its config records ``converted_from`` (SRC's hash), so adapters
fine-tuned on SRC still load on DST. Loading always gives float32 modules.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_singer import checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="base artifact folder to convert (e.g. pretrain/base)")
    parser.add_argument("dst", type=Path, help="folder of the new base (must differ from SRC)")
    parser.add_argument("--dtype", default="float16", choices=sorted(checkpoint.WEIGHTS_DTYPES),
                        help="dtype of the stored tensors (default: float16)")
    args = parser.parse_args(argv)
    try:
        out = checkpoint.convert_base_dtype(args.src, args.dst, args.dtype)
    except checkpoint.ArtifactError as error:
        print(f"convert_base: error: {error}", file=sys.stderr)
        return 2
    sizes = [(p.name, p.stat().st_size) for p in sorted(out.glob("*.safetensors"))]
    print(f"wrote {out} ({args.dtype}): " + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
