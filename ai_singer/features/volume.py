"""Frame volume: RMS of each hop-long block of samples.

Frame ``i`` covers samples ``[i * hop, (i + 1) * hop)``, so it is centred at ``(i + 0.5) * hop`` like
every other per-frame stream, and a clip of ``N`` samples has ``N // hop`` frames (a trailing partial
block is dropped).
"""
from __future__ import annotations

import numpy as np
import torch


def frame_rms(wav, hop: int):
    """Linear RMS per frame.

    Args:
        wav: numpy array or torch tensor [..., samples].
        hop: samples per frame.

    Returns:
        same type as ``wav`` [..., samples // hop] (numpy: float32; torch: wav's float dtype).
    """
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    n_frames = wav.shape[-1] // hop
    if isinstance(wav, torch.Tensor):
        blocks = wav[..., : n_frames * hop].reshape(*wav.shape[:-1], n_frames, hop)
        if not blocks.is_floating_point():
            blocks = blocks.float()
        return torch.sqrt(torch.mean(blocks * blocks, dim=-1))
    wav = np.asarray(wav)
    blocks = wav[..., : n_frames * hop].astype(np.float64).reshape(*wav.shape[:-1], n_frames, hop)
    return np.sqrt(np.mean(blocks * blocks, axis=-1)).astype(np.float32)
