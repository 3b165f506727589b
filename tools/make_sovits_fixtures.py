"""Write the so-vits-svc reference fixtures in tests/fixtures/sovits/ with so-vits-svc-fork's own code.

Run with the Python of a separate virtual environment that has so-vits-svc-fork (never a dependency of
ai_singer). On a CPU torch it installs offline-capable like this (its own dependencies would pull
torchaudio's CUDA build):

    FK=~/.cache/fk-venv; python3 -m venv $FK && echo 'torch==2.13.0' > $FK-constraints.txt
    $FK/bin/pip install torch==2.13.0 && $FK/bin/pip install --no-deps so-vits-svc-fork==4.2.30
    $FK/bin/pip install -c $FK-constraints.txt click cm-time fastapi librosa lightning matplotlib numpy pebble \
        praat-parselmouth psutil pysimplegui-4-foss pyworld requests rich scipy sounddevice soundfile \
        tensorboard tensorboardx torchcrepe tqdm tqdm-joblib transformers 'setuptools<81'
    rm $FK/lib/python3.11/site-packages/torchaudio/lib/*.so   # CUDA-linked; unused here
    ~/.cache/fk-venv/bin/python tools/make_sovits_fixtures.py [--out tests/fixtures/sovits]

Its ``Svc`` class downloads ContentVec, so this builds ``SynthesizerTrn`` directly from a config.

How the fixtures are made (tests/test_importer_sovits.py compares ai_singer's imported model with them):

* ``config.json``: so-vits-svc-fork's ``so-vits-svc-4.0v1.json`` template with a tiny ``model`` section
  (hidden 8, 2 attention layers, a decoder with rates [4, 4] from 16 channels, ``ssl_dim`` 256 (ContentVec
  layer 9 + final_proj), 3 speakers,
  ``p_dropout`` 0 so the training pass is deterministic) and ``data`` framing (hop 16, filter_length 32).
  The parts so-vits-svc hard-codes (16 posterior WaveNet layers, 4 couplings of 4 layers, kernel 5, the
  F0 decoder) keep their original sizes.
* ``G_0.pth``: ``SynthesizerTrn`` built from that config with random weights (seed 0), saved the way
  so-vits-svc saves checkpoints (``{"model", "iteration", "optimizer", "learning_rate"}``, a pickle).
* ``D_layout.json``: the keys and shapes of so-vits-svc's ``MultiPeriodDiscriminator`` (full size; it
  has no size options). Its weights are not stored (187 MB): they are drawn from a seeded generator in
  key order (``tools/reference_fixtures.py``'s ``discriminator_state``, which the test repeats), so the test
  can write the same ``D_0.pth``.
* ``reference.pt``: inputs, the random draws so-vits-svc made (recorded by wrapping ``torch.rand`` /
  ``torch.randn_like`` while its forward ran) and its outputs: the inference waveform
  (``SynthesizerTrn.infer`` after ``remove_weight_norm``, as ``Svc.load_model`` does), the training forward's
  outputs (decoded segment, slice starts, z, z_p, prior and posterior statistics) and the discriminator's
  logits and feature-map energies. Their inference draws random initial phases for the NSF harmonics; ours
  starts them at 0 at inference, so this script pins their draw to 0 (a value of its range) for the
  inference pass; the training pass records the draw and the test feeds it to ours.

Everything is float32 on the CPU; the whole folder is well under 2 MB.

``--full-size DIR`` instead writes a full-size so-vits-svc-fork 44.1 kHz model (its own template, 200
speakers, random weights) as a user's training run leaves it: ``G_0.pth`` and ``D_0.pth`` with the AdamW
state after one step, and ``config.json`` (about 1.2 GB together; for tools/bench_import_sovits.py, not committed).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_fixtures import (Recorder, adamw, draw_coupling_outputs, fixture_arguments,  # noqa: E402
                                record_discriminator, save_training_checkpoint, write, write_reference)

def tiny_config() -> dict:
    import so_vits_svc_fork

    template = Path(so_vits_svc_fork.__file__).parent / "preprocessing/config_templates/so-vits-svc-4.0v1.json"
    config = json.loads(template.read_text())
    config["data"].update(sampling_rate=44100, filter_length=32, hop_length=16, win_length=32,
                          contentvec_final_proj=True)
    config["train"]["segment_size"] = 8 * 16
    model = config["model"]
    model.update(inter_channels=4, hidden_channels=8, filter_channels=16, n_heads=2, n_layers=2, kernel_size=3,
                 p_dropout=0.0, resblock="1", resblock_kernel_sizes=[3, 5],
                 resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], upsample_rates=[4, 4],
                 upsample_initial_channel=16, upsample_kernel_sizes=[8, 8], gin_channels=8, ssl_dim=256,
                 n_speakers=3)
    model.pop("pretrained", None)
    config["spk"] = {"alice": 0, "bob": 1, "carol": 2}
    return config


def make_inputs(config: dict) -> dict[str, torch.Tensor]:
    """Two items of 24 frames, the second 20 frames long (zero-padded like a batch)."""
    generator = torch.Generator().manual_seed(7)
    frames, batch = 24, 2
    model, data = config["model"], config["data"]
    content = torch.randn(batch, model["ssl_dim"], frames, generator=generator)
    t = torch.arange(frames, dtype=torch.float32)
    # item 0: a rising line with vibrato (interpolated through a "breath": uv 0, F0 kept, as so-vits-svc feeds it)
    f0_a = 220.0 * 2 ** (t / 24) * (1 + 0.01 * torch.sin(2 * math.pi * t / 6))
    uv_a = torch.ones(frames)
    uv_a[9:12] = 0.0
    # item 1: lower, with true zeros (an unvoiced stretch where F0 is 0) and padding after frame 20
    f0_b = 150.0 + 40.0 * torch.sin(2 * math.pi * t / 12)
    f0_b[5:8] = 0.0
    uv_b = (f0_b > 0).float()
    lengths = torch.tensor([frames, 20])
    f0 = torch.stack([f0_a, f0_b])
    uv = torch.stack([uv_a, uv_b])
    spec = torch.rand(batch, data["filter_length"] // 2 + 1, frames, generator=generator) * 2
    mask = (torch.arange(frames)[None] < lengths[:, None]).float()
    content, spec = content * mask[:, None], spec * mask[:, None]
    f0, uv = f0 * mask, uv * mask
    return {"content": content, "f0": f0, "uv": uv, "spec": spec, "lengths": lengths,
            "speakers": torch.tensor([0, 2])}


def write_full_size(out: Path) -> None:
    """so-vits-svc-fork's 44.1 kHz template model with random weights and one AdamW step of state, saved as
    its training saves ``G_*.pth``/``D_*.pth``."""
    import so_vits_svc_fork
    from so_vits_svc_fork.modules.descriminators import MultiPeriodDiscriminator
    from so_vits_svc_fork.modules.synthesizers import SynthesizerTrn

    out.mkdir(parents=True, exist_ok=True)
    template = Path(so_vits_svc_fork.__file__).parent / "preprocessing/config_templates/so-vits-svc-4.0v1.json"
    config = json.loads(template.read_text())
    config["model"].pop("pretrained", None)
    config["spk"] = {"singer": 0}
    data = config["data"]
    torch.manual_seed(0)
    for name, module in (("G_0.pth", SynthesizerTrn(data["filter_length"] // 2 + 1,
                                                     config["train"]["segment_size"] // data["hop_length"],
                                                     **config["model"])),
                         ("D_0.pth", MultiPeriodDiscriminator())):
        optimizer = adamw(module)
        for param in module.parameters():
            param.grad = torch.randn_like(param) * 1e-3
        optimizer.step()
        save_training_checkpoint(out / name, module, optimizer, iteration=1)
        print(f"wrote {out / name} ({(out / name).stat().st_size / 1e6:.0f} MB)")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_fixtures(out: Path) -> None:
    """The fixtures (config.json, G_0.pth, D_layout.json, reference.pt) into the folder ``out``."""
    from so_vits_svc_fork.modules.descriminators import MultiPeriodDiscriminator
    from so_vits_svc_fork.modules.synthesizers import SynthesizerTrn

    config = tiny_config()
    data, model_cfg = config["data"], config["model"]
    torch.manual_seed(0)
    net = SynthesizerTrn(data["filter_length"] // 2 + 1, config["train"]["segment_size"] // data["hop_length"],
                         **model_cfg)
    draw_coupling_outputs(net, 0.1)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_training_checkpoint(out / "G_0.pth", net, adamw(net), iteration=1234)

    inputs = make_inputs(config)
    harmonics = 9
    reference: dict[str, torch.Tensor] = dict(inputs)

    # ---- training forward (train mode, p_dropout 0): record the draws
    net.train()
    with torch.no_grad(), Recorder(harmonics, pin_phases=False) as rec:
        o, _, ids_slice, _, (z, z_p, m_p, logs_p, m_q, logs_q), *_ = net(
            inputs["content"], inputs["f0"], inputs["uv"], inputs["spec"], g=inputs["speakers"][:, None],
            c_lengths=inputs["lengths"], spec_lengths=inputs["lengths"])
    kinds = [(kind, tuple(t.shape)) for kind, t in rec.draws]
    # enc_p's unused sample, enc_q's posterior noise, the slice draw, the harmonic phases, the source noise,
    # SourceModuleHnNSF's unused noise
    assert [k for k, _ in kinds] == ["randn_like", "randn_like", "rand", "rand", "randn_like", "randn_like"], kinds
    reference.update(train_posterior_noise=rec.draws[1][1], train_slice_starts=ids_slice,
                     train_phases=rec.draws[3][1], train_source_noise=rec.draws[4][1], train_wav=o, train_z=z,
                     train_z_p=z_p, train_m_p=m_p, train_logs_p=logs_p, train_m_q=m_q, train_logs_q=logs_q)

    # ---- inference, as Svc.load_model prepares it (eval, weight norm removed)
    from so_vits_svc_fork import utils as fork_utils

    net.eval()
    for module in net.modules():  # exactly what Svc.load_model does
        fork_utils.remove_weight_norm_if_exists(module)
    noise_scale = 0.35
    full = inputs["lengths"].max().item()
    with torch.no_grad(), Recorder(harmonics, pin_phases=True) as rec:
        wav = net.infer(inputs["content"][:1], inputs["f0"][:1], inputs["uv"][:1], g=inputs["speakers"][:1, None],
                        noice_scale=noise_scale)
    assert [k for k, _ in rec.draws] == ["randn_like", "rand", "randn_like", "randn_like"], rec.draws
    reference.update(infer_prior_noise=rec.draws[0][1], infer_source_noise=rec.draws[2][1], infer_wav=wav,
                     infer_noise_scale=torch.tensor(noise_scale), infer_frames=torch.tensor(full))

    # ---- discriminator (full size, seeded weights)
    record_discriminator(MultiPeriodDiscriminator(use_spectral_norm=False), reference, out)
    write_reference(out, reference)


def main() -> None:
    args = fixture_arguments(__doc__.split("\n\n")[0], "sovits",
                             "write a full-size 44.1 kHz G_0.pth/D_0.pth/config.json with optimiser state here "
                             "instead of the fixtures").parse_args()
    write(args, write_fixtures, write_full_size)


if __name__ == "__main__":
    main()
