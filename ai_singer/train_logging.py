"""TensorBoard output of a training run: scalars, mel-spectrogram images and audio.

Only rank 0 creates a ``TrainLogger``; other ranks get ``None`` and skip logging. matplotlib is used
headless (Agg) and imported lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch


class TrainLogger:
    """Writes TensorBoard events into ``run_dir`` (``tensorboard --logdir runs``)."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """One scalar per ``tag -> value`` (e.g. ``loss/mel``, ``lr/generator``, ``grad_norm/generator``)."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)

    def mel_images(self, tag: str, target: torch.Tensor, generated: torch.Tensor, step: int) -> None:
        """Target and generated log-mel spectrograms ``[n_mels, T]`` one above the other."""
        self.writer.add_figure(tag, mel_figure(target, generated), step)

    def audio(self, tag: str, wav: torch.Tensor, sample_rate: int, step: int) -> None:
        """A mono clip ``[samples]`` (float, -1..1)."""
        clip = wav.detach().float().cpu().clamp(-1.0, 1.0).reshape(1, -1)
        self.writer.add_audio(tag, clip, step, sample_rate=sample_rate)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def mel_figure(target: torch.Tensor, generated: torch.Tensor):
    """A matplotlib figure with two panels: target and generated log-mel ``[n_mels, T]``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    target_np = target.detach().float().cpu().numpy()
    generated_np = generated.detach().float().cpu().numpy()
    low = float(min(target_np.min(), generated_np.min()))
    high = float(max(target_np.max(), generated_np.max()))
    figure, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for axis, data, title in zip(axes, (target_np, generated_np), ("target", "generated")):
        image = axis.imshow(data, origin="lower", aspect="auto", interpolation="none", vmin=low, vmax=high)
        axis.set_title(title)
        axis.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame")
    figure.colorbar(image, ax=list(axes), fraction=0.03)
    return figure


def format_postfix(values: Mapping[str, float]) -> dict[str, str]:
    """Short strings for the tqdm postfix."""
    return {key: (f"{value:.3g}" if isinstance(value, (float, np.floating)) else str(value))
            for key, value in values.items()}
