"""The machine's two roofs, measured in a second or two: copy bandwidth and matmul throughput.

A part whose bytes take longer than its FLOPs at these rates is memory-bound; its roofline time
is the longer of the two, and the share of the roof it reaches is that time over its measured time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmserve.devices import measure_copy_bandwidth
from llmserve.profiling.clock import DeviceClock
from llmserve.profiling.cost import Cost


@dataclass(frozen=True)
class Roofline:
    copy_bytes_per_s: float  # bytes read + written per second by a large tensor copy
    matmul_flops_per_s: float  # a large square matmul in the model's dtype
    matmul_dtype: str

    def seconds(self, cost: Cost) -> float:
        return max(cost.bytes / self.copy_bytes_per_s, cost.flops / self.matmul_flops_per_s)

    def bound(self, cost: Cost) -> str:
        return "compute" if cost.flops / self.matmul_flops_per_s > cost.bytes / self.copy_bytes_per_s else "memory"


def measure_roofline(device: torch.device, dtype: torch.dtype, clock: DeviceClock,
                     matmul_size: int | None = None) -> Roofline:
    """Best of a few runs of each. The copy is the one the server's bandwidth gauge measures
    (devices.measure_copy_bandwidth: a read and a write per byte, past the caches); the matmul is
    square, big enough to fill a GPU, and about a second on a CPU."""
    cuda = device.type == "cuda"
    matmul_size = matmul_size or (8192 if cuda else (1536 if dtype == torch.float32 else 512))
    return Roofline(measure_copy_bandwidth(device), matmul_throughput(device, dtype, clock, matmul_size),
                    str(dtype).removeprefix("torch."))


def matmul_throughput(device: torch.device, dtype: torch.dtype, clock: DeviceClock, n: int,
                      repeats: int = 3) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    best = _best_seconds(lambda: torch.mm(a, b, out=out), clock, repeats)
    return 2.0 * n ** 3 / best


def _best_seconds(work, clock: DeviceClock, repeats: int) -> float:
    work()  # first touch and kernel selection are not the rate
    best = float("inf")
    for _ in range(repeats):
        clock.synchronize()
        start = clock.mark()
        work()
        end = clock.mark()
        clock.synchronize()
        best = min(best, clock.seconds(start, end))
    return max(best, 1e-9)
