"""Write tests/fixtures/fcpe_reference.npz: a short test signal and the F0 that the ``torchfcpe`` package's
own code gives for it, the reference that ``tests/test_fcpe.py`` holds ``ai_singer.features.fcpe_model`` to.

Run it in a separate environment that has torchfcpe and its dependencies (never in the project's: torchaudio
breaks ``import transformers`` there); it imports numpy, torch and torchfcpe only, not ai_singer::

    V=~/.cache/fcpe-oracle-venv; python3 -m venv $V && echo 'torch==2.13.0' > $V-constraints.txt
    $V/bin/pip install torch==2.13.0 && $V/bin/pip install -c $V-constraints.txt torchfcpe==0.0.4 numpy
    rm $V/lib/python3.11/site-packages/torchaudio/lib/*.so   # CUDA-linked; only its pure-Python parts load
    $V/bin/python tools/make_fcpe_fixture.py

The signal (16 kHz, 1.6 s, seeded): a harmonic tone gliding 110 -> 880 Hz with 6 Hz vibrato, a rest of
faint noise, a breathy 330 Hz note, and a sung-like 1200 Hz note. 16 kHz input means the package's
torchaudio resampler is not used. Stored: ``audio`` (int16 samples), ``f0`` (Hz at every frame, the
package's ``infer`` with threshold 0), ``f0_voiced`` (threshold 0.006, 0 = unvoiced: the package's
default) and ``confidence`` (the best bin's score of its network), with ``torchfcpe``'s version.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SR = 16000


def signal(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)

    def tone(f0: np.ndarray, harmonics: int, breath: float) -> np.ndarray:
        phase = 2 * np.pi * np.cumsum(f0) / SR
        wave = sum(np.sin(k * phase) / k for k in range(1, harmonics + 1) if k * f0.max() < SR / 2)
        return 0.2 * wave / np.abs(wave).max() + breath * rng.standard_normal(len(f0))

    t = np.arange(int(0.6 * SR)) / SR
    glide = 110 * 8 ** (t / t[-1]) * 2 ** (0.5 * np.sin(2 * np.pi * 6 * t) / 12)
    parts = [tone(glide, 30, 0.0), 0.003 * rng.standard_normal(int(0.2 * SR)),
             tone(np.full(int(0.4 * SR), 330.0), 20, 0.03), tone(np.full(int(0.4 * SR), 1200.0), 6, 0.005)]
    audio = np.concatenate(parts)
    return np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" /
                                             "fcpe_reference.npz"))
    args = parser.parse_args()
    import importlib.metadata

    import torch
    import torchfcpe

    model = torchfcpe.spawn_bundled_infer_model(device="cpu")
    audio = signal()
    wav = torch.from_numpy(audio.astype(np.float32) / 32768.0)[None, :, None]
    with torch.no_grad():
        f0 = model.infer(wav, sr=SR, decoder_mode="local_argmax", threshold=0.0)[0, :, 0].numpy()
        f0_voiced = model.infer(wav, sr=SR, decoder_mode="local_argmax", threshold=0.006)[0, :, 0].numpy()
        confidence = model.model(model.wav2mel(wav, SR)).max(dim=-1).values[0].numpy()
    np.savez_compressed(args.out, audio=audio, sample_rate=SR, f0=f0.astype(np.float32),
                        f0_voiced=f0_voiced.astype(np.float32), confidence=confidence.astype(np.float32),
                        torchfcpe_version=importlib.metadata.version("torchfcpe"), torch_version=torch.__version__)
    print(f"wrote {args.out}: {len(audio)} samples, {len(f0)} frames, "
          f"{int((f0_voiced > 0).sum())} voiced at threshold 0.006")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
