"""Timing and memory readings on the profiled device: the one place where CPU and CUDA differ.

On the CPU every op has finished when its call returns, so a host clock times it. On CUDA an op
returns once queued: a region is timed by CUDA events recorded on the stream around it, read after
one synchronize at the end of the step, so profiling adds no host sync inside the step.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import torch


class DeviceClock(ABC):
    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def for_device(device: torch.device | str) -> DeviceClock:
        device = torch.device(device)
        return CudaClock(device) if device.type == "cuda" else HostClock(device)

    @abstractmethod
    def mark(self) -> Any:
        """A point in the device's stream of work."""

    @abstractmethod
    def seconds(self, start: Any, end: Any) -> float:
        """Time between two marks; only after `synchronize` on CUDA."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for the work queued so far."""

    @abstractmethod
    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window."""

    def peak_memory(self) -> int | None:
        """Peak bytes the device allocator held since the last reset; None where it keeps no peak."""
        return None

    def allocated_memory(self) -> int | None:
        return None

    @property
    def profiler_activities(self) -> list[torch.profiler.ProfilerActivity]:
        return [torch.profiler.ProfilerActivity.CPU]


class HostClock(DeviceClock):
    """CPU tensors (and any device whose ops run synchronously): the host's monotonic clock."""

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start

    def synchronize(self) -> None:
        pass  # every op has finished when its call returns

    def reset_peak_memory(self) -> None:
        pass  # no peak is kept


class CudaClock(DeviceClock):
    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end) / 1000.0

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device)

    def allocated_memory(self) -> int | None:
        return torch.cuda.memory_allocated(self.device)

    @property
    def profiler_activities(self) -> list[torch.profiler.ProfilerActivity]:
        return [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
