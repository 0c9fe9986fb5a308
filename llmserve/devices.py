"""Which torch device the engine runs on: `auto`, `cpu`, `cuda` or `cuda:N`, resolved once at start."""

from __future__ import annotations

import re

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
