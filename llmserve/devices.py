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


def measure_copy_bandwidth(device: str | torch.device, size_mib: int | None = None, trials: int = 7) -> float:
    """Best-of-`trials` bytes/s of a tensor copy, counting the read and the write (STREAM's Copy).

    The buffer is well past any cache: by default 64 MiB on a CPU (the figure matches 512 MiB
    within noise, at an eighth of the start-up cost) and 512 MiB on a GPU, timed with CUDA events."""
    device = torch.device(device)
    size_mib = size_mib or (512 if device.type == "cuda" else 64)
    src = torch.ones(size_mib * (1 << 20) // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)  # touched now, so page faults stay out of the timing
    best = float("inf")
    for _ in range(trials):
        if device.type == "cuda":
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
            dst.copy_(src)
            end_event.record()
            end_event.synchronize()
            best = min(best, start_event.elapsed_time(end_event) / 1000)
        else:
            start = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best
