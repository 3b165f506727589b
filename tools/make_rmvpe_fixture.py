"""Write tests/fixtures/rmvpe_reference.npz: random RMVPE weights in the format of RVC's ``rmvpe.pt``, a short
test signal, and what the reference implementation (the ``rvc`` package's ``rvc.lib.rmvpe``, RVC-Project, MIT)
computes for it: the log-mel, the salience and the F0. ``tests/test_f0_rmvpe.py`` holds
``ai_singer.features.rmvpe_model`` to it.

RMVPE's real weights ship in no package, so the network is random. The real ``rmvpe.pt`` (``E2E(4, 1, (2, 2))``:
16 channels, 4 residual blocks per level, 4 intermediate stacks, ~90 M parameters) would be ~180 MB; this one
keeps the real layout and front end (5 U-Net levels, 128 mel bands, one bidirectional GRU of 256 units per
direction, 360 bins) with 2 channels, 2 blocks per level and 2 intermediate stacks (1.6 M parameters, through
the constructor's own ``n_blocks`` / ``inter_layers`` / ``en_out_channels``). The package's ``RMVPE`` class
hard-codes the full sizes, so its module-level ``E2E`` is replaced by one that returns the reduced model;
everything else runs as the package wrote it: ``torch.load`` + ``load_state_dict`` of the ``.pt`` file, its
mel front end, ``mel2hidden`` (frames padded to a multiple of 32) and ``decode`` with RVC's threshold 0.03.

The weights are drawn from a coarse grid (multiples of a power of two, at most 8 steps either side of 0) and
stored in float16, as the published ``rmvpe.pt`` is, so that the compressed fixture stays small (~1 MB);
the batch norms' running variances are positive and the output bias is shifted down so that the salience
crosses the 0.03 threshold on some frames and not on others. The ``.pt`` is a plain state dict written
with ``torch.save``; the fixture stores its tensors (``w:<key>``) so that the test writes the same file again.

Run it in its own environment (the ``rvc`` package's dependencies would pull a CUDA torch and torchaudio);
it imports numpy, torch, librosa and the package, not ai_singer::

    V=~/.cache/rmvpe-venv; python3 -m venv $V && echo 'torch==2.13.0' > $V-constraints.txt
    $V/bin/pip install torch==2.13.0 && $V/bin/pip install --no-deps rvc==0.3.5
    $V/bin/pip install -c $V-constraints.txt numpy librosa scipy tqdm
    $V/bin/python tools/make_rmvpe_fixture.py

The signal is ``make_fcpe_fixture.signal()`` (16 kHz, 1.6 s, seeded: a 110 -> 880 Hz glide with vibrato, a
rest of faint noise, a breathy 330 Hz note, a 1200 Hz note). Stored: ``audio`` (int16), ``mel`` (float32
[128, frames]), ``salience`` (float32 [frames, 360]), ``f0`` (float32 [frames], Hz, 0 = unvoiced at 0.03),
the reduced sizes, ``full_layout`` (``"<key>:<shape>"`` of every tensor of the published model, the package's
``E2E(4, 1, (2, 2))``, built on the meta device) and the package's version.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_fcpe_fixture import SR, signal  # noqa: E402

#: ``rvc.lib.rmvpe.E2E`` keyword arguments of the fixture's model (the real one: 4, 1, (2, 2), 5, 4, 1, 16).
REDUCED = {"n_blocks": 2, "n_gru": 1, "kernel_size": (2, 2), "en_de_layers": 5, "inter_layers": 2, "in_channels": 1,
           "en_out_channels": 2}
#: RVC's voicing threshold for RMVPE (its pipeline calls ``infer_from_audio(x, thred=0.03)``).
THRESHOLD = 0.03
#: Added to the output layer's bias so that the salience sits around the threshold.
OUTPUT_BIAS = -8.0


def random_state(model, seed: int = 0) -> dict:
    """Coarse-grid random values for every tensor of ``model``'s state dict, float16 (counters kept int64):
    batch norms get scales near 1, shifts and means near 0 and positive variances; weights get steps of
    about a quarter of ``1 / sqrt(fan_in)``."""
    import torch

    norms = {name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)}
    rng = np.random.default_rng(seed)
    state = {}
    for key, tensor in model.state_dict().items():
        owner, kind = key.rsplit(".", 1)
        if kind == "num_batches_tracked":
            state[key] = torch.tensor(int(rng.integers(1, 1000)))
            continue
        steps = rng.integers(-8, 9, size=tuple(tensor.shape)).astype(np.float64)
        if owner in norms:
            values = {"weight": 1.0 + steps / 16, "running_var": 0.5 + np.abs(steps) / 16}.get(kind, steps / 16)
        else:
            fan_in = int(np.prod(tensor.shape[1:])) if tensor.dim() > 1 else tensor.shape[0]
            values = steps * 2.0 ** np.round(np.log2(1.0 / np.sqrt(fan_in) / 4))
        if key == "fc.1.bias":
            values = values + OUTPUT_BIAS
        state[key] = torch.from_numpy(values).to(torch.float16)
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" /
                                             "rmvpe_reference.npz"))
    args = parser.parse_args()
    import importlib.metadata

    import torch
    from rvc.lib import rmvpe as reference

    original = reference.E2E
    model = original(**REDUCED)  # built before the patch below: its __init__ names the module's E2E
    state = random_state(model)
    audio = signal()
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "rmvpe.pt")
        torch.save(state, path)
        reference.E2E = lambda *_args, **_kwargs: model  # RMVPE asks for E2E(4, 1, (2, 2)), then loads the file
        try:
            tracker = reference.RMVPE(path, is_half=False, device="cpu")
        finally:
            reference.E2E = original
    wav = audio.astype(np.float32) / 32768.0
    with torch.no_grad():
        mel = tracker.mel_extractor(torch.from_numpy(wav)[None], center=True)
        salience = tracker.mel2hidden(mel)[0].numpy()
    f0 = tracker.infer_from_audio(wav, thred=THRESHOLD)
    weights = {f"w:{key}": value.numpy() for key, value in state.items()}
    with torch.device("meta"):  # the published model's tensor names and shapes, without its 90 M values
        full = original(4, 1, (2, 2)).state_dict()
    layout = np.array([f"{key}:{'x'.join(map(str, tensor.shape))}" for key, tensor in full.items()])
    np.savez_compressed(args.out, audio=audio, sample_rate=SR, mel=mel[0].numpy().astype(np.float32),
                        salience=salience.astype(np.float32), f0=np.asarray(f0, dtype=np.float32),
                        threshold=THRESHOLD, en_out_channels=REDUCED["en_out_channels"],
                        n_blocks=REDUCED["n_blocks"], inter_layers=REDUCED["inter_layers"], full_layout=layout,
                        rvc_version=importlib.metadata.version("rvc"), torch_version=torch.__version__, **weights)
    voiced = f0 > 0
    print(f"wrote {args.out}: {len(audio)} samples, mel {tuple(mel.shape[1:])}, salience {salience.shape}, "
          f"{int(voiced.sum())}/{len(f0)} frames voiced at {THRESHOLD}, max salience "
          f"{salience.max(axis=1).min():.3f}..{salience.max(axis=1).max():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
