"""Generate the synthetic singing corpus (raw clips with phone labels, parallel renditions, songs).

    python tools/synth_corpus.py --out data/synth --singers 12 --phrases-per-singer 20 --seed 0

The same seed gives byte-identical files. See tools/synth/corpus.py for the layout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `tools.synth` importable

from tools.settings_arguments import add_settings_arguments, settings_values  # noqa: E402
from tools.synth.corpus import CorpusSettings, generate_corpus  # noqa: E402


def parse_args(argv: list[str] | None = None) -> CorpusSettings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    helps = {
        "singers": "number of singers (voice types cycle soprano, bass, tenor, alto, baritone, mezzo)",
        "phrases_per_singer": "raw clips per singer",
        "seconds": "approximate length of one phrase, seconds",
        "sample_rate": "output sample rate, Hz (a multiple of the label rate)",
        "seed": "random seed; the same seed gives byte-identical files",
        "held_out": "the last K singers are marked held_out in corpus.json",
        "songs": "songs with vocals/pad/drums stems",
        "song_seconds": "approximate length of a song, seconds",
        "parallel_phrases": "phrases rendered by every singer under parallel/",
        "label_rate_hz": "frame rate of the phone labels, Hz",
        "workers": "worker processes",
    }
    add_settings_arguments(parser, CorpusSettings, helps)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    return CorpusSettings(out=args.out, progress=not args.no_progress, **settings_values(args, helps))


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
        result = generate_corpus(settings)
    except ValueError as error:
        print(f"synth_corpus: {error}", file=sys.stderr)
        return 2
    summary = result["summary"]
    train = sum(s["split"] == "train" for s in result["singers"])
    print(f"wrote {summary['clips']} clips ({summary['audio_seconds']:.0f} s of audio; {train} train + "
          f"{len(result['singers']) - train} held-out singers, {len(result['parallel'])} parallel phrases, "
          f"{len(result['songs'])} songs) to {settings.out} in {summary['elapsed_seconds']:.1f} s "
          f"({summary['audio_seconds'] / max(summary['elapsed_seconds'], 1e-9):.0f}x real time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
