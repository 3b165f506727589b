"""What the writers of reference fixtures made with another project's own code share (tools/make_sovits_fixtures.py,
tools/make_rvc_fixtures.py), and what the importer tests repeat from them (:func:`discriminator_state`).

Torch only, no ai_singer: the writers run in separate virtual environments (so-vits-svc-fork's, RVC's) where
ai_singer is not installed; they import this module from their own folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch

#: The seed of :func:`discriminator_state` (recorded in ``D_layout.json``).
DISCRIMINATOR_SEED = 1234

#: The learning rate both projects' training starts with (stored in their ``G_*.pth``).
LEARNING_RATE = 1e-4


def fixture_arguments(description: str, name: str, full_size_help: str) -> argparse.ArgumentParser:
    """The writers' command line: ``[--out DIR]`` (default ``tests/fixtures/<name>``), ``[--full-size DIR]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / name))
    parser.add_argument("--full-size", metavar="DIR", help=full_size_help)
    return parser


def write(args: argparse.Namespace, fixtures: Callable[[Path], None], full_size: Callable[[Path], None]) -> None:
    """``full_size(DIR)`` for ``--full-size DIR``, else ``fixtures(OUT)`` into the ``--out`` folder (made)."""
    if args.full_size:
        full_size(Path(args.full_size))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fixtures(out)


def discriminator_state(layout: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Deterministic weights for the discriminator's keys: a seeded normal draw per key, in the given order;
    ``weight_g`` scaled by 0.5, ``weight_v`` by 1, biases by 0.01."""
    generator = torch.Generator().manual_seed(DISCRIMINATOR_SEED)
    state = {}
    for key, shape in layout:
        scale = 0.5 if key.endswith("weight_g") else 0.01 if key.endswith("bias") else 1.0
        state[key] = torch.randn(shape, generator=generator) * scale
    return state


class Recorder:
    """Wraps ``torch.rand`` and ``torch.randn_like`` to record every draw; with ``pin_phases``, the harmonic
    phase draw ``torch.rand(B, harmonics)`` is pinned to zeros."""

    def __init__(self, harmonics: int = 0, pin_phases: bool = False):
        self.harmonics, self.pin_phases = harmonics, pin_phases
        self.draws: list[tuple[str, torch.Tensor]] = []
        self._rand, self._randn_like = torch.rand, torch.randn_like

    def rand(self, *shape, **kwargs):
        value = self._rand(*shape, **kwargs)
        if self.pin_phases and len(shape) == 2 and shape[1] == self.harmonics:
            value = torch.zeros_like(value)
        self.draws.append(("rand", value.clone()))
        return value

    def randn_like(self, tensor, **kwargs):
        value = self._randn_like(tensor, **kwargs)
        self.draws.append(("randn_like", value.clone()))
        return value

    def __enter__(self):
        torch.rand, torch.randn_like = self.rand, self.randn_like
        return self

    def __exit__(self, *exc):
        torch.rand, torch.randn_like = self._rand, self._randn_like


def draw_coupling_outputs(net: torch.nn.Module, std: float) -> None:
    """Draw the flow couplings' output convs (``flow.flows.*.post.*``, zero at initialisation in both projects)
    from N(0, ``std``) in parameter order, so every tensor has a visible value."""
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith("flow.flows.") and ".post." in name:
                param.normal_(0.0, std)


def adamw(module: torch.nn.Module) -> torch.optim.AdamW:
    """The optimiser both projects train their generator and discriminator with."""
    return torch.optim.AdamW(module.parameters(), LEARNING_RATE, betas=(0.8, 0.99), eps=1e-9)


def save_training_checkpoint(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             iteration: int) -> None:
    """``module`` saved as both projects' training saves ``G_*.pth``/``D_*.pth`` (a pickle of ``{"model",
    "iteration", "optimizer", "learning_rate"}``)."""
    torch.save({"model": module.state_dict(), "iteration": iteration, "optimizer": optimizer.state_dict(),
                "learning_rate": LEARNING_RATE}, path)


def record_discriminator(disc: torch.nn.Module, reference: dict[str, torch.Tensor], out: Path) -> None:
    """Load :func:`discriminator_state` into ``disc`` (full size), write its layout to ``out/D_layout.json`` and
    record into ``reference`` its logits and feature-map energies on two seeded noise signals [2, 1, 1000]
    (``disc_real``, ``disc_fake``, ``disc_<i>_{real,fake}_{logits,energy}``)."""
    layout = [(key, list(value.shape)) for key, value in disc.state_dict().items()]
    disc.load_state_dict(discriminator_state(layout))
    (out / "D_layout.json").write_text(json.dumps({"seed": DISCRIMINATOR_SEED, "keys": layout}) + "\n")
    generator = torch.Generator().manual_seed(11)
    real = torch.randn(2, 1, 1000, generator=generator) * 0.3
    fake = torch.randn(2, 1, 1000, generator=generator) * 0.3
    with torch.no_grad():
        real_logits, fake_logits, real_maps, fake_maps = disc(real, fake)
    reference.update(disc_real=real, disc_fake=fake)
    for i, (r, f, rm, fm) in enumerate(zip(real_logits, fake_logits, real_maps, fake_maps)):
        reference[f"disc_{i}_real_logits"] = r
        reference[f"disc_{i}_fake_logits"] = f
        reference[f"disc_{i}_real_energy"] = torch.stack([m.pow(2).flatten(1).mean(1) for m in rm])
        reference[f"disc_{i}_fake_energy"] = torch.stack([m.pow(2).flatten(1).mean(1) for m in fm])


def write_reference(out: Path, reference: dict[str, torch.Tensor]) -> None:
    """``out/reference.pt`` (every tensor contiguous), then a line naming the folder's files and size."""
    torch.save({key: value.contiguous() for key, value in reference.items()}, out / "reference.pt")
    total = sum(path.stat().st_size for path in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB): " + ", ".join(sorted(p.name for p in out.iterdir())))
