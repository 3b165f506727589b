"""Write the RVC reference fixtures in tests/fixtures/rvc/ with RVC's own code (the ``rvc`` package on PyPI).

Run with the Python of a separate virtual environment that has ``rvc`` 0.3.5 (the RVC-Project's own package
of the Retrieval-based-Voice-Conversion library: its ``rvc/lib/infer_pack/models.py`` holds the v1/v2
synthesizers and discriminators); never a dependency of ai_singer. On a CPU torch it installs offline-capable
like this (its own dependencies would pull fairseq, faiss, numba, ...; the model code needs only numpy and
scipy):

    RV=~/.cache/rvc-venv; python3 -m venv $RV && echo 'torch==2.13.0' > $RV-constraints.txt
    $RV/bin/pip install torch==2.13.0 && $RV/bin/pip install --no-deps rvc==0.3.5
    $RV/bin/pip install -c $RV-constraints.txt numpy scipy
    ~/.cache/rvc-venv/bin/python tools/make_rvc_fixtures.py [--out tests/fixtures/rvc]

How the fixtures are made (tests/test_importer_rvc.py compares ai_singer's imported model with them):

* ``config.json``: the package's ``rvc/configs/v2/48k.json`` with a tiny ``model`` section (hidden 8,
  2 attention layers, a decoder with rates [4, 4] from 16 channels, 3 speakers, ``p_dropout`` 0 so the
  training pass is deterministic) and ``data`` framing (40 kHz, hop 16, filter_length 32, segment 8 frames).
  The content dim (768, v2) and what RVC hard-codes (16 posterior WaveNet layers, couplings of 3 layers,
  kernel 5, 256 pitch classes) keep their original sizes.
* ``G_0.pth``: ``SynthesizerTrnMs768NSFsid`` built from that config with random weights (seed 0; the flow's
  zero-initialised output convs drawn too), saved as RVC's training saves ``G_*.pth``
  (``{"model", "iteration", "optimizer", "learning_rate"}``).
* ``singer.pth``: a "fine-tuned singer": the same weights, each tensor moved by 2 % of its mean magnitude
  (seed 1), exported by RVC's own ``rvc.lib.train.process_ckpt.savee`` (float16, ``enc_q`` left out,
  the ``config`` list, ``sr``/``f0``/``version``). ``savee`` imports a translation helper the package does not
  ship (``i18n``), so this script puts an inert stand-in for it in ``sys.modules`` first.
* ``G_v1.pth``: the same tiny config as RVC v1's ``SynthesizerTrnMs256NSFsid`` (256-d content), random
  weights (seed 3), saved like ``G_0.pth``; only its inference is recorded (``v1_*`` in ``reference.pt``, on
  ``content_v1``).
* ``D_layout.json``: the keys and shapes of RVC v2's ``MultiPeriodDiscriminatorV2`` (full size, no size
  options). Its weights are drawn in key order from a seeded generator
  (``tools/reference_fixtures.py``'s ``discriminator_state``), which the test repeats.
* ``reference.pt``: inputs, the random draws RVC made (recorded by wrapping ``torch.rand`` /
  ``torch.randn_like`` while its forward ran) and its outputs: the base's inference waveform (``infer`` in eval
  mode with weight norm in place, as RVC's VC.get_vc runs a model; prior noise at RVC's fixed 0.66666), the
  singer model's inference waveform (loaded from ``singer.pth`` the way get_vc loads it: built from its config
  list, ``enc_q`` deleted, ``load_state_dict(strict=False)``, ``float()``), the training forward's outputs
  (decoded segment, slice starts, z, z_p, prior and posterior statistics) and the discriminator's logits and
  feature-map energies. The coarse pitch is computed from the frame F0 by the formula of the package's
  ``Pipeline.get_f0`` (restated below: that module imports faiss, librosa, parselmouth, pyworld and torchcrepe).
  RVC's source has one sine (harmonic_num 0): its random initial phase is always 0, nothing to pin.

Everything is float32 on the CPU; the whole folder is under 1 MB.

``--full-size DIR`` instead writes RVC v2's full-size 40 kHz files with random weights as a user has them:
``f0G40k.pth`` and ``f0D40k.pth`` as RVC's ``pretrained_v2`` folder holds them (``{"model": state dict}`` in
float16), ``singer.pth`` (a perturbed copy exported by ``savee``) and ``reference_full.pt`` (RVC's inference
output of both on 200 frames, with its draws): about 250 MB, for tools/bench_import_rvc.py, not committed.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_fixtures import (Recorder, adamw, draw_coupling_outputs, fixture_arguments,  # noqa: E402
                                record_discriminator, save_training_checkpoint, write, write_reference)

SPEC_ARGS = ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers", "kernel_size", "p_dropout",
             "resblock", "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates",
             "upsample_initial_channel", "upsample_kernel_sizes", "spk_embed_dim", "gin_channels")


def tiny_config() -> dict:
    import rvc

    template = Path(rvc.__file__).parent / "configs" / "v2" / "48k.json"
    config = json.loads(template.read_text())
    config["data"].update(sampling_rate=40000, filter_length=32, hop_length=16, win_length=32)
    config["train"]["segment_size"] = 8 * 16
    config["model"].update(inter_channels=4, hidden_channels=8, filter_channels=16, n_heads=2, n_layers=2,
                           kernel_size=3, p_dropout=0, resblock="1", resblock_kernel_sizes=[3, 5],
                           resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], upsample_rates=[4, 4],
                           upsample_initial_channel=16, upsample_kernel_sizes=[8, 8], gin_channels=8, spk_embed_dim=3)
    return config


def build(config: dict, version: str = "v2"):
    """RVC's synthesizer (v2: 768-d content, v1: 256-d) as its train.py builds it (segment in frames, sr from
    the config)."""
    from rvc.lib.infer_pack.models import SynthesizerTrnMs256NSFsid, SynthesizerTrnMs768NSFsid

    data = config["data"]
    synthesizer = SynthesizerTrnMs768NSFsid if version == "v2" else SynthesizerTrnMs256NSFsid
    return synthesizer(data["filter_length"] // 2 + 1,
                                     config["train"]["segment_size"] // data["hop_length"],
                                     *[config["model"][k] for k in SPEC_ARGS], sr=data["sampling_rate"], is_half=False)


def coarse_pitch(f0: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch of frame F0 (Hz, 0 = unvoiced): its Pipeline.get_f0, restated."""
    f0_min, f0_max = 50, 1100
    f0_mel_min = 1127 * np.log(1 + f0_min / 700)
    f0_mel_max = 1127 * np.log(1 + f0_max / 700)
    f0_mel = 1127 * np.log(1 + f0 / 700)
    f0_mel[f0_mel > 0] = (f0_mel[f0_mel > 0] - f0_mel_min) * 254 / (f0_mel_max - f0_mel_min) + 1
    f0_mel[f0_mel <= 1] = 1
    f0_mel[f0_mel > 255] = 255
    return np.rint(f0_mel).astype(np.int32)


def make_inputs(config: dict) -> dict[str, torch.Tensor]:
    """Two items of 24 frames, the second 20 frames long (zero-padded like a batch); F0 is 0 Hz in unvoiced
    frames (as RVC's pipeline feeds it), ``f0_interpolated`` is the same F0 with its gaps filled (as
    ai_singer's pipeline feeds it, beside the voiced flag)."""
    generator = torch.Generator().manual_seed(7)
    frames, batch = 24, 2
    content = torch.randn(batch, frames, 768, generator=generator)  # RVC's layout [B, T, D]
    t = torch.arange(frames, dtype=torch.float32)
    f0_a = 220.0 * 2 ** (t / 24) * (1 + 0.01 * torch.sin(2 * math.pi * t / 6))
    f0_a[9:12] = 0.0
    f0_b = 150.0 + 40.0 * torch.sin(2 * math.pi * t / 12)
    f0_b[5:8] = 0.0
    lengths = torch.tensor([frames, 20])
    f0 = torch.stack([f0_a, f0_b])
    mask = (torch.arange(frames)[None] < lengths[:, None]).float()
    f0 = f0 * mask
    filled = f0.clone()
    filled[0, 9:12] = 260.0
    filled[1, 5:8] = 170.0
    filled[1, 20:] = 0.0
    spec = torch.rand(batch, config["data"]["filter_length"] // 2 + 1, frames, generator=generator) * 2
    content, spec = content * mask[:, :, None], spec * mask[:, None]
    pitch = torch.from_numpy(coarse_pitch(f0.double().numpy())).long()
    return {"content": content, "f0": f0, "f0_interpolated": filled, "voiced": (f0 > 0).float(), "pitch": pitch,
            "spec": spec, "lengths": lengths, "speakers": torch.tensor([0, 2])}


def export_singer(state: dict, config: dict, out: Path, rate: str = "40k") -> None:
    """``singer.pth`` written by RVC's own process_ckpt.savee (with an inert stand-in for its i18n helper)."""
    i18n = types.ModuleType("i18n")
    i18n_module = types.ModuleType("i18n.i18n")
    i18n_module.I18nAuto = lambda *a, **k: (lambda text: text)
    i18n.i18n = i18n_module
    sys.modules.setdefault("i18n", i18n)
    sys.modules.setdefault("i18n.i18n", i18n_module)
    from rvc.lib.train.process_ckpt import savee

    hps = SimpleNamespace(data=SimpleNamespace(**config["data"]), model=SimpleNamespace(**config["model"]))
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            Path("assets/weights").mkdir(parents=True)
            message = savee(state, rate, 1, "singer", 100, "v2", hps)
            assert Path("assets/weights/singer.pth").is_file(), message
            (out / "singer.pth").write_bytes(Path("assets/weights/singer.pth").read_bytes())
        finally:
            os.chdir(here)


def load_singer_as_rvc(path: Path):
    """The singer model as RVC's VC.get_vc loads it for inference (float, enc_q deleted, non-strict)."""
    from rvc.lib.infer_pack.models import SynthesizerTrnMs768NSFsid

    cpt = torch.load(path, map_location="cpu", weights_only=False)
    cpt["config"][-3] = cpt["weight"]["emb_g.weight"].shape[0]
    net = SynthesizerTrnMs768NSFsid(*cpt["config"], is_half=False)
    del net.enc_q
    net.load_state_dict(cpt["weight"], strict=False)
    return net.eval().float()


def infer(net, inputs: dict, draws: list[str]) -> tuple[torch.Tensor, list]:
    """RVC's inference on item 0 (all its frames) with its draws recorded."""
    with torch.no_grad(), Recorder() as rec:
        wav, _, _ = net.infer(inputs["content"][:1], inputs["lengths"][:1], inputs["pitch"][:1], inputs["f0"][:1],
                              inputs["speakers"][:1])
    assert [k for k, _ in rec.draws] == draws, rec.draws
    return wav, rec.draws


def full_size_config(version: str, rate: str) -> dict:
    """RVC's own training config for a published layout (v2 40k uses v1/40k.json, as RVC does)."""
    import rvc

    folder = "v1" if (version, rate) == ("v2", "40k") else version
    return json.loads((Path(rvc.__file__).parent / "configs" / folder / f"{rate}.json").read_text())


def perturbed(state: dict, seed: int) -> dict:
    """Each tensor moved by 2 % of its mean magnitude: a "fine-tuned singer" of the model ``state``."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * v.float().abs().mean() * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def write_full_size(out: Path) -> None:
    """RVC v2 40k with random weights as its pretrained_v2 files, an exported singer, and reference outputs."""
    from rvc.lib.infer_pack.models import MultiPeriodDiscriminatorV2

    out.mkdir(parents=True, exist_ok=True)
    config = full_size_config("v2", "40k")
    torch.manual_seed(0)
    net = build(config)
    draw_coupling_outputs(net, 0.01)
    with torch.no_grad():
        for param in net.parameters():  # what is stored is float16: compute with exactly those values
            param.copy_(param.half().float())
    torch.save({"model": {k: v.half() for k, v in net.state_dict().items()}}, out / "f0G40k.pth")
    disc = MultiPeriodDiscriminatorV2(use_spectral_norm=False)
    torch.save({"model": {k: v.half() for k, v in disc.state_dict().items()}}, out / "f0D40k.pth")
    export_singer(perturbed(net.state_dict(), 1), config, out, "40k")
    generator = torch.Generator().manual_seed(7)
    frames = 200
    t = torch.arange(frames, dtype=torch.float32)
    f0 = (200.0 * 2 ** (t / 100)).unsqueeze(0)
    f0[:, 50:60] = 0.0
    inputs = {"content": torch.randn(1, frames, 768, generator=generator), "f0": f0,
              "pitch": torch.from_numpy(coarse_pitch(f0.double().numpy())).long(),
              "lengths": torch.tensor([frames]), "speakers": torch.tensor([5])}
    reference = dict(inputs)
    net.eval()
    wav, draws = infer(net, inputs, ["randn_like", "rand", "randn_like"])
    reference.update(infer_prior_noise=draws[0][1], infer_source_noise=draws[2][1], infer_wav=wav)
    wav, draws = infer(load_singer_as_rvc(out / "singer.pth"), inputs, ["randn_like", "rand", "randn_like"])
    reference.update(singer_prior_noise=draws[0][1], singer_source_noise=draws[2][1], singer_wav=wav)
    torch.save(reference, out / "reference_full.pt")
    for path in sorted(out.iterdir()):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")


def print_counts() -> None:
    """Parameters per part of RVC v2 40k's generator (for tests/test_importer_rvc.py)."""
    net = build(full_size_config("v2", "40k"))
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in net.named_children()}
    print(json.dumps(counts))


def write_fixtures(out: Path) -> None:
    """The fixtures (config.json, G_0.pth, singer.pth, G_v1.pth, D_layout.json, reference.pt) into ``out``."""
    from rvc.lib.infer_pack.models import MultiPeriodDiscriminatorV2

    config = tiny_config()
    torch.manual_seed(0)
    net = build(config)
    draw_coupling_outputs(net, 0.1)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_training_checkpoint(out / "G_0.pth", net, adamw(net), iteration=1234)

    export_singer(perturbed(net.state_dict(), 1), config, out)

    inputs = make_inputs(config)
    reference: dict[str, torch.Tensor] = dict(inputs)

    # ---- training forward (train mode, p_dropout 0): record the draws
    net.train()
    with torch.no_grad(), Recorder() as rec:
        o, ids_slice, _, _, (z, z_p, m_p, logs_p, m_q, logs_q) = net(
            inputs["content"], inputs["lengths"], inputs["pitch"], inputs["f0"], inputs["spec"], inputs["lengths"],
            inputs["speakers"])
    # enc_q's posterior noise, the slice draw, the sine's initial phase (zeroed: one harmonic), the source noise
    assert [k for k, _ in rec.draws] == ["randn_like", "rand", "rand", "randn_like"], rec.draws
    reference.update(train_posterior_noise=rec.draws[0][1], train_slice_starts=ids_slice,
                     train_phases=rec.draws[2][1], train_source_noise=rec.draws[3][1], train_wav=o, train_z=z,
                     train_z_p=z_p, train_m_p=m_p, train_logs_p=logs_p, train_m_q=m_q, train_logs_q=logs_q)

    # ---- inference, as RVC's VC.get_vc runs a model (eval; it keeps weight norm)
    net.eval()
    wav, draws = infer(net, inputs, ["randn_like", "rand", "randn_like"])
    reference.update(infer_prior_noise=draws[0][1], infer_source_noise=draws[2][1], infer_wav=wav)
    singer = load_singer_as_rvc(out / "singer.pth")
    wav, draws = infer(singer, inputs, ["randn_like", "rand", "randn_like"])
    reference.update(singer_prior_noise=draws[0][1], singer_source_noise=draws[2][1], singer_wav=wav)

    # ---- v1: 256-d content, inference only
    torch.manual_seed(3)
    net_v1 = build(config, "v1")
    draw_coupling_outputs(net_v1, 0.1)
    torch.save({"model": net_v1.state_dict(), "iteration": 77}, out / "G_v1.pth")
    content_v1 = torch.randn(1, 24, 256, generator=torch.Generator().manual_seed(8))
    wav, draws = infer(net_v1.eval(), {**inputs, "content": content_v1}, ["randn_like", "rand", "randn_like"])
    reference.update(content_v1=content_v1, v1_prior_noise=draws[0][1], v1_source_noise=draws[2][1], v1_wav=wav)

    # ---- discriminator (full size, seeded weights)
    record_discriminator(MultiPeriodDiscriminatorV2(use_spectral_norm=False), reference, out)
    write_reference(out, reference)


def main() -> None:
    parser = fixture_arguments(__doc__.split("\n\n")[0], "rvc", "write full-size RVC v2 40k files (f0G40k.pth, "
                                                                  "f0D40k.pth, singer.pth, reference_full.pt) here")
    parser.add_argument("--counts", action="store_true", help="print RVC v2 40k's parameter counts per part")
    args = parser.parse_args()
    if args.counts:
        print_counts()
        return
    write(args, write_fixtures, write_full_size)


if __name__ == "__main__":
    main()
