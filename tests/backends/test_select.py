"""The backend is chosen once, from the device; one the device cannot run is refused."""

from __future__ import annotations

import pytest
import torch

from llmserve.backends.cpu import CpuBackend
from llmserve.backends.select import select_backend
from llmserve.backends.torch_ref import TorchBackend


def test_auto_picks_the_devices_own_backend():
    assert type(select_backend("cpu")) is CpuBackend
    assert type(select_backend("cpu", "torch")) is TorchBackend
    assert type(select_backend("meta")) is TorchBackend


def test_a_backend_the_device_cannot_run_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="the cuda backend runs on an NVIDIA GPU, not on cpu"):
        select_backend("cpu", "cuda")
    with pytest.raises(ValueError, match="the cpu backend runs on the CPU, not on cuda:0"):
        select_backend(torch.device("cuda:0"), "cpu")
    with pytest.raises(ValueError, match="unknown attention backend 'triton'"):
        select_backend("cpu", "triton")
