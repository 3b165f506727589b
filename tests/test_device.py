"""Device settings: auto picks what exists; a device the machine lacks is a clear error naming the setting."""
from __future__ import annotations

import os

import pytest
import torch

from ai_singer.device import DeviceError, available_devices, computes_bfloat16_natively, pick_device


def test_auto_and_cpu():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu") and "cpu" in available_devices()


def test_nonsense_is_refused_with_the_setting_named():
    with pytest.raises(DeviceError, match=r"trainer.device='gpu0': not a device \(use auto, cpu"):
        pick_device("gpu0", what="trainer.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_a_machine_without_it_says_so():
    with pytest.raises(DeviceError, match=r"device='cuda:1': this machine has no CUDA GPU.*available: cpu"):
        pick_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_index_out_of_range_and_torchrun_rank():
    with pytest.raises(DeviceError, match="no GPU"):
        pick_device(f"cuda:{torch.cuda.device_count()}")
    assert pick_device("cuda", local_rank=0) == torch.device("cuda", 0)


def test_native_bfloat16_is_a_cpu_feature_check(monkeypatch):
    """A CPU with AVX512-BF16 or AMX computes bfloat16 natively (what precision=auto asks); other devices: no."""
    assert not computes_bfloat16_natively(torch.device("cuda", 0)) and not computes_bfloat16_natively(
        torch.device("meta"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not computes_bfloat16_natively(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert computes_bfloat16_natively(torch.device("cpu"))


def test_the_cpu_kernel_cache_is_widened_unless_the_user_chose_its_size(monkeypatch):
    """Conversion asks oneDNN for a larger kernel cache through its environment variable, and leaves a value
    the user exported alone."""
    from ai_singer.device import ONEDNN_PRIMITIVE_CACHE_CAPACITY, widen_cpu_kernel_cache

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert widen_cpu_kernel_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    assert not widen_cpu_kernel_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
