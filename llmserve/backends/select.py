"""Choosing the backend: once, from the device and an optional name."""

from __future__ import annotations

import os

import torch

from llmserve.backends.base import AttentionBackend
from llmserve.config import BACKENDS


def select_backend(device: torch.device | str, name: str = "auto", enforce_eager: bool = False) -> AttentionBackend:
    """`auto` picks the device's own backend: C kernels on the CPU, Triton on CUDA, the torch
    reference elsewhere. Naming a backend the device cannot run is refused."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = {"cpu": "cpu", "cuda": "cuda"}.get(device.type, "torch")
    if name == "cpu":
        if device.type != "cpu":
            raise ValueError(f"the cpu backend runs on the CPU, not on {device}")
        from llmserve.backends.cpu import CpuBackend

        return CpuBackend(device)
    if name == "cuda":
        # Triton's interpreter runs the same kernels on CPU tensors: that is how CI tests them.
        if device.type != "cuda" and not (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
            raise ValueError(f"the cuda backend runs on an NVIDIA GPU, not on {device}")
        from llmserve.backends.cuda import CudaBackend

        return CudaBackend(device, use_graphs=not enforce_eager)
    from llmserve.backends.torch_ref import TorchBackend

    return TorchBackend(device)
