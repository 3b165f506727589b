"""Choosing the torch device from a setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), with a clear
error when the machine does not have it (instead of torch's "not compiled with CUDA" deep in a run)."""
from __future__ import annotations

import os

import torch

from ai_singer.errors import UserError


class DeviceError(UserError, ValueError):
    """A device setting this machine cannot honour; ``str()`` names the setting and what is available."""


def available_devices() -> list[str]:
    """What this machine offers, e.g. ``["cpu"]`` or ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def pick_device(setting: str, local_rank: int | None = None, what: str = "device") -> torch.device:
    """``auto`` -> CUDA when available (``cuda:<local_rank>`` under torchrun), else CPU; otherwise the
    device named, checked against this machine. ``what`` names the setting in errors (e.g.
    ``trainer.device``). Decided at call time.

    Raises:
        DeviceError: unknown device text, or a device this machine does not have.
    """
    text = str(setting).strip()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise DeviceError(f"{what}={setting!r}", "not a device (use auto, cpu, cuda, cuda:N or mps)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{what}={setting!r}", f"this machine has no CUDA GPU (or this torch is a CPU build: "
                              f"{torch.__version__}); available: {', '.join(available_devices())}. "
                              f"Use {what}=cpu or auto")
        index = device.index if device.index is not None else (local_rank or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{what}={setting!r}", f"no GPU {index}; available: {', '.join(available_devices())}")
        return torch.device("cuda", index)
    if device.type == "mps" and "mps" not in available_devices():
        raise DeviceError(f"{what}={setting!r}", f"MPS is not available here; available: "
                          f"{', '.join(available_devices())}")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"{what}={setting!r}", f"unsupported device type {device.type!r} (use auto, cpu, cuda, "
                          f"cuda:N or mps)")
    return device


def computes_bfloat16_natively(device: torch.device) -> bool:
    """Whether ``device`` is a CPU with bfloat16 arithmetic in hardware (AVX512-BF16 or AMX), where bfloat16
    convolutions run ~1.6-1.8x faster than float32 (elsewhere a CPU emulates them, slower than float32). False for
    other devices (not measured there)."""
    if device.type != "cpu":
        return False
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)


#: How many prepared convolution kernels ("primitives") oneDNN, torch's CPU conv library, keeps (its default:
#: 1024). A kernel is prepared per layer and tensor length: converting a song visits up to 6 decoder window
#: lengths (multiples of 32 frames) and the prior's (multiples of 64 frames, one per piece length class), ~100
#: kernels each for model=base, more than the default holds; before the lengths were bounded, kernels were rebuilt
#: for every piece (a 90 s vocal on an Intel Xeon: ~1.3x the CPU time and ~7k page faults a second).
ONEDNN_PRIMITIVE_CACHE_CAPACITY = 2048


def widen_cpu_kernel_cache() -> bool:
    """Ask oneDNN to keep :data:`ONEDNN_PRIMITIVE_CACHE_CAPACITY` prepared kernels, unless the user set
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` themselves; returns whether it set it. oneDNN reads the variable once, when
    torch first uses it (a convolution, or even a CPU feature query), so this is process-wide and only the
    entry points call it, first thing (conversion's command line, the web UI)."""
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    return True
