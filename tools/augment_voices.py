"""Make new training voices from real ones: WORLD resynthesis with the spectral envelope warped (formants) and
F0 scaled (speaker perturbation), for pretraining a base that has heard more timbres than the corpus has.

Each variant ``FORMANT:PITCH`` of a voice becomes a voice of its own, ``<voice>-f<FORMANT>p<PITCH>`` (e.g.
``ru_nsh_m-f115p140``: formants x1.15, F0 x1.40), written in the raw-corpus layout that
``python -m ai_singer.preprocess`` reads (``<out>/<voice>/<speech|sung>/<clip>.wav``, the source's sample rate),
and ``<out>/augment.json`` last (the settings and every clip written: what tools/build_bundle.py's augment step
waits for). Clips already there are kept, so an interrupted run goes on where it stopped.
Warping the envelope by a factor ``a`` maps ``sp'(f) = sp(f / a)``: ``a > 1`` raises the formants (a shorter
vocal tract), ``a < 1`` lowers them. The aperiodicity is warped the same way. Clips are drawn per voice by a
seeded shuffle up to ``--seconds`` of audio, so runs are reproducible. Voices that ``voices.json`` marks
``heldout`` are refused: a base must never hear the voices it is measured on.

Example (the recipe of BENCHMARKS.md "Real voices", ``real-ddsp-aug``; tools/build_bundle.py's augment step):
    python tools/augment_voices.py --corpus data/real --out data/real_aug/raw \
        --voices en_allison_f fr_june_f ru_nsh_m --variants 1.15:1.4 0.87:0.72 1.07:0.88 0.94:1.12 1.2:1.25 \
        --seconds 200
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: find ai_singer

from ai_singer.atomic import atomic_write_json  # noqa: E402

#: Written last in ``--out``: the settings and the clips of every new voice.
RECORD = "augment.json"
#: WORLD analysis frame period (ms) and F0 search range (Hz).
FRAME_MS = 5.0
F0_FLOOR, F0_CEIL = 60.0, 1100.0


@dataclass(frozen=True)
class Variant:
    formant: float  # spectral-envelope warp factor
    pitch: float  # F0 factor

    @classmethod
    def parse(cls, text: str) -> "Variant":
        try:
            formant, pitch = (float(part) for part in text.split(":"))
        except ValueError as error:
            raise SystemExit(f"--variants: {text!r} is not FORMANT:PITCH (e.g. 1.15:1.4)") from error
        if not (0.5 <= formant <= 2.0 and 0.25 <= pitch <= 4.0):
            raise SystemExit(f"--variants: {text!r} out of range (formant 0.5-2, pitch 0.25-4)")
        return cls(formant, pitch)

    def suffix(self) -> str:
        return f"f{round(self.formant * 100):03d}p{round(self.pitch * 100):03d}"


def warp_envelope(envelope: np.ndarray, factor: float) -> np.ndarray:
    """``[T, K]`` spectral envelope (or aperiodicity) on a linear frequency axis -> the same with every
    frequency ``f`` taking the value at ``f / factor`` (linear interpolation, the edge bin beyond the top)."""
    bins = np.arange(envelope.shape[1], dtype=np.float64)
    source = bins / factor
    return np.stack([np.interp(source, bins, frame) for frame in envelope])


def analyse(audio: np.ndarray, sr: int) -> dict:
    """Mono float audio -> its WORLD analysis (F0, envelope, aperiodicity) and peak."""
    import pyworld

    x = np.ascontiguousarray(audio, dtype=np.float64)
    f0, times = pyworld.harvest(x, sr, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_MS)
    return {"f0": f0, "envelope": pyworld.cheaptrick(x, f0, times, sr),
            "aperiodicity": pyworld.d4c(x, f0, times, sr), "length": len(x), "peak": float(np.max(np.abs(x)))}


def resynthesise(analysis: dict, sr: int, variant: Variant) -> np.ndarray:
    """A WORLD analysis -> speech with warped formants and scaled F0 (the source's length and peak)."""
    import pyworld

    out = pyworld.synthesize(analysis["f0"] * variant.pitch, warp_envelope(analysis["envelope"], variant.formant),
                             np.clip(warp_envelope(analysis["aperiodicity"], variant.formant), 0.0, 1.0), sr,
                             FRAME_MS)
    length = analysis["length"]
    out = np.pad(out, (0, max(0, length - len(out))))[:length]
    peak = float(np.max(np.abs(out)))
    if peak > 0:
        out *= analysis["peak"] / peak
    return out.astype(np.float32)


def pick_clips(voice_dir: Path, seconds: float, seed: int) -> list[Path]:
    """A seeded shuffle of the voice's speech + sung clips, taken until ``seconds`` of audio."""
    clips = sorted(voice_dir.glob("*/*.wav"))
    key = int.from_bytes(hashlib.sha256(f"{seed}:{voice_dir.name}".encode()).digest()[:8], "little")
    order = np.random.default_rng(key).permutation(len(clips))
    picked, total = [], 0.0
    for index in order:
        if total >= seconds:
            break
        picked.append(clips[index])
        total += sf.info(str(clips[index])).duration
    return sorted(picked)


def _job(item: tuple[Path, list[tuple[Path, Variant]]]) -> float:
    """One source clip -> its variants (WORLD analysis done once); returns the seconds written."""
    source, targets = item
    targets = [(target, variant) for target, variant in targets if not target.is_file()]
    if not targets:
        return 0.0
    audio, sr = sf.read(str(source), dtype="float32", always_2d=True)
    analysis = analyse(audio.mean(axis=1), sr)
    written = 0.0
    for target, variant in targets:
        out = resynthesise(analysis, sr, variant)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.stem}.tmp.wav")
        sf.write(str(partial), out, sr, subtype="PCM_16")
        partial.replace(target)
        written += len(out) / sr
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/real"), help="real-voice corpus (voices.json, raw/)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the new voices (raw-corpus layout)")
    parser.add_argument("--voices", nargs="+", required=True)
    parser.add_argument("--variants", nargs="+", type=Variant.parse, required=True, metavar="FORMANT:PITCH")
    parser.add_argument("--seconds", type=float, default=300.0, help="audio per new voice (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    voices = json.loads((args.corpus / "voices.json").read_text())
    voices = voices.get("voices", voices)
    jobs: list[tuple[Path, list[tuple[Path, Variant]]]] = []
    for voice in args.voices:
        if voice not in voices:
            raise SystemExit(f"{args.corpus / 'voices.json'}: no voice {voice!r}")
        if voices[voice].get("role") in ("heldout", "validation"):
            role = "held-out" if voices[voice]["role"] == "heldout" else "validation"
            raise SystemExit(f"{voice} is a {role} voice: a base must never train on it")
        for clip in pick_clips(args.corpus / "raw" / voice, args.seconds, args.seed):
            jobs.append((clip, [(args.out / f"{voice}-{variant.suffix()}" / clip.parent.name / clip.name, variant)
                                for variant in args.variants]))
    total = 0.0
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for done, seconds in enumerate(pool.map(_job, jobs, chunksize=2), start=1):
            total += seconds
            if done % 50 == 0 or done == len(jobs):
                print(f"{done}/{len(jobs)} source clips ({total:.0f} s written)", flush=True)
    clips: dict[str, list[str]] = {}
    for _, targets in jobs:
        for target, _variant in targets:
            clips.setdefault(target.parent.parent.name, []).append(target.relative_to(args.out).as_posix())
    atomic_write_json(args.out / RECORD, {
        "corpus": args.corpus.as_posix(), "voices": args.voices, "seed": args.seed, "seconds": args.seconds,
        "variants": [f"{variant.formant:g}:{variant.pitch:g}" for variant in args.variants],
        "clips": {voice: sorted(paths) for voice, paths in sorted(clips.items())}})
    print(f"wrote the variants of {len(jobs)} clips as {len(args.voices) * len(args.variants)} new voices under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
