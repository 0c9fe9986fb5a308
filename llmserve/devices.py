"""Which torch device the engine runs on: `auto`, `cpu`, `cuda` or `cuda:N`, resolved once at start."""

from __future__ import annotations

import re
import time

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` takes the first GPU when CUDA is available, else the CPU; `cuda` means `cuda:0`.

    Raises ValueError for a GPU this machine lacks and for any other name."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ValueError(f"unknown device {str(name)!r}; use {DEVICE_CHOICES}")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"device {str(name)!r} needs CUDA, but this machine has no usable GPU "
                         f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built'}); use --device cpu")
    if index >= count:
        raise ValueError(f"device {str(name)!r} does not exist: this machine has {count} GPU"
                         f"{'' if count == 1 else 's'} (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return torch.device("cuda", index)


def is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def measure_copy_bandwidth(device: str | torch.device, repeats: int = 5) -> float:
    """Memory bandwidth in bytes per second, as STREAM's Copy counts it: each copy reads and writes
    its bytes, so 2 x size / time, the best of a few. The buffer is far larger than any cache
    (64 MiB on a CPU, 256 MiB on a GPU), and the whole measurement takes tens of milliseconds."""
    device = torch.device(device)
    nbytes = (256 if device.type == "cuda" else 64) << 20
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first copy faults the destination's pages in
            best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best
