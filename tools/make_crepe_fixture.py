"""Write tests/fixtures/crepe_tiny_reference.npz: a short test signal and the scores that the ``torchcrepe``
package's own code gives for it with its ``tiny`` model, the reference that ``tests/test_crepe.py`` holds
``ai_singer.features.crepe_model`` to.

Run it in a separate environment that has torchcrepe and its dependencies (never in the project's: torchaudio
breaks ``import transformers`` there); it imports numpy, torch and torchcrepe only, not ai_singer. The
environment of ``tools/make_fcpe_fixture.py`` serves, plus::

    $V/bin/pip install -c $V-constraints.txt torchcrepe==0.0.24 librosa
    $V/bin/python tools/make_crepe_fixture.py

The signal is ``make_fcpe_fixture.signal()`` (16 kHz, 1.6 s, seeded: a 110 -> 880 Hz glide with vibrato, a
rest of faint noise, a breathy 330 Hz note, a 1200 Hz note); 16 kHz input means the package's torchaudio
resampler is not used. Stored: ``audio`` (int16 samples) and ``scores`` (float16 [frames, 360]: the
network's output for the package's own 10 ms windows, ``torchcrepe.preprocess`` + ``torchcrepe.infer``;
its decoders add random dither, so the scores are what is compared), with torchcrepe's version.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_fcpe_fixture import SR, signal  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" /
                                             "crepe_tiny_reference.npz"))
    args = parser.parse_args()
    import importlib.metadata

    import torch
    import torchcrepe

    audio = signal()
    wav = torch.from_numpy(audio.astype(np.float32) / 32768.0)[None]
    with torch.no_grad():
        frames = torch.cat(list(torchcrepe.preprocess(wav, SR, hop_length=SR // 100, pad=True)))
        scores = torchcrepe.infer(frames, model="tiny").numpy()
    np.savez_compressed(args.out, audio=audio, sample_rate=SR, scores=scores.astype(np.float16),
                        torchcrepe_version=importlib.metadata.version("torchcrepe"), torch_version=torch.__version__)
    print(f"wrote {args.out}: {len(audio)} samples, scores {scores.shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
