"""ReplicaPlan: how many engine replicas, how big, on which Ray cluster (from `llmserve serve` flags).
No Ray here: the CLI checks its flags before anything starts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEFAULT_TARGET_ONGOING = 16  # autoscaling: ongoing requests per replica Ray Serve aims for
# prefix: ours (prefix affinity, else the less loaded of two); pow2: Ray Serve's default, for comparison
ROUTERS = ("prefix", "pow2")


@dataclass(frozen=True)
class ReplicaPlan:
    min_replicas: int
    max_replicas: int  # equal to min_replicas: a fixed count, no autoscaling
    threads_per_replica: int | None = None  # fixed engine threads; None: adaptive, as the single server's
    ray_address: str | None = None  # None: start a local Ray cluster; "auto" or the head's GCS "host:port" joins one
    num_cpus: int | None = None  # CPUs of a local cluster (None: every core)
    target_ongoing_requests: float = DEFAULT_TARGET_ONGOING
    router: str = "prefix"  # one of ROUTERS
    app_name: str = "llmserve"

    def __post_init__(self) -> None:
        if self.ray_address is not None and self.ray_address.startswith("ray://"):
            # Ray Serve refuses streaming DeploymentHandles under Ray Client, and every engine call streams.
            raise ValueError("--ray-address ray://... (Ray Client) cannot stream through Ray Serve's deployment "
                             "handles: run llmserve serve on a node of the cluster with --ray-address auto, or give "
                             "the head's GCS address (HOST:6379)")
        if self.router not in ROUTERS:
            raise ValueError(f"--replica-router must be one of {', '.join(ROUTERS)}, not {self.router!r}")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas != self.min_replicas

    @property
    def cpus(self) -> int:
        """The CPUs each replica asks Ray for: its fixed threads, else this machine's cores over the
        most replicas there may be."""
        if self.threads_per_replica is not None:
            return self.threads_per_replica
        cores = self.num_cpus or os.cpu_count() or 1
        return max(1, cores // self.max_replicas)

    def describe(self) -> str:
        count = f"{self.min_replicas}-{self.max_replicas} (autoscaling)" if self.autoscaling else str(self.min_replicas)
        threads = "adaptive threads" if self.threads_per_replica is None else f"{self.threads_per_replica} thread(s)"
        return f"{count} replica(s) x {threads}, {self.cpus} CPU(s) each"


def parse_replicas(text: str) -> tuple[int, int]:
    """`N` or `auto:MIN-MAX` -> (min, max); raises ValueError with the flag's name."""
    if match := re.fullmatch(r"\s*(\d+)\s*", text):
        count = int(match.group(1))
        if count < 1:
            raise ValueError("--replicas must be at least 1")
        return count, count
    if match := re.fullmatch(r"\s*auto:(\d+)-(\d+)\s*", text):
        low, high = int(match.group(1)), int(match.group(2))
        if low < 1 or high < low:
            raise ValueError(f"--replicas auto:MIN-MAX needs 1 <= MIN <= MAX, got {text!r}")
        return low, high
    raise ValueError(f"--replicas takes a count (2) or a range to autoscale in (auto:1-4), not {text!r}")
