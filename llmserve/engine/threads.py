"""How many CPU threads the engine's parallel regions use, adapted to what other processes leave us.

OpenMP splits each kernel statically across its threads and waits for the slowest. When another
process keeps one of our cores busy, the thread that shares that core gets half of it or less, and
every parallel region waits for it while the others spin: on 2 cores with one busy neighbour,
throughput fell from 450 to 14 tokens/s with 2 threads, against 278 with 1 thread. So by default
the engine measures, about twice a second, how much CPU time other processes took on the cores we
may use (`/proc/stat` minus our own CPU time), and runs on the cores they leave free.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

# A neighbour counts once it takes this much of a core; it must drop below the lower mark to be
# forgotten, so a neighbour near one threshold does not flip our thread count every window.
_BUSY_ABOVE = 0.5
_IDLE_BELOW = 0.3
_WINDOW_S = 0.5


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Cores' worth of CPU time the cgroup allows (cgroup v2 `cpu.max`, else v1), None if unlimited."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def busy_cpu_seconds(cpus: set[int] | None = None, stat: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds spent not idle on `cpus` (all when None) since boot, steal included; None off Linux."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += sum(values) - values[3] - values[4]
    return busy / ticks


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ThreadGovernor:
    """Sets torch's thread count on the thread that runs the model, from the cores others leave.

    `fixed` (the user's --threads) turns adaptation off. Call `adjust()` from the stepping thread:
    OpenMP keeps the thread count per calling thread.
    """

    fixed: int | None = None
    cores: int = field(default_factory=usable_cores)
    set_threads: Callable[[int], None] | None = None  # torch.set_num_threads unless a test gives one
    clock: Callable[[], float] = time.monotonic
    read_busy: Callable[[], float | None] | None = None  # all processes' busy CPU seconds on our cores
    read_own: Callable[[], float] = own_cpu_seconds
    threads: int = field(init=False)
    neighbour_cores: float = field(init=False, default=0.0)  # what others took in the last window
    _last: tuple[float, float, float] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.set_threads is None:
            import torch

            self.set_threads = torch.set_num_threads
        if self.read_busy is None:
            cpus = _affinity()
            self.read_busy = lambda: busy_cpu_seconds(cpus)
        self.threads = self.fixed or self.cores
        self.set_threads(self.threads)

    @property
    def adaptive(self) -> bool:
        return self.fixed is None and self.cores > 1

    def adjust(self) -> int:
        """Re-measure if a window has passed, and change the thread count if the neighbours did."""
        if not self.adaptive:
            return self.threads
        now = self.clock()
        if self._last is not None and now - self._last[0] < _WINDOW_S:
            return self.threads
        busy, own = self.read_busy(), self.read_own()
        if busy is None:  # no /proc/stat: nothing to adapt to
            return self.threads
        last, self._last = self._last, (now, busy, own)
        if last is None:
            return self.threads
        elapsed = now - last[0]
        self.neighbour_cores = max(0.0, ((busy - last[1]) - (own - last[2])) / elapsed)
        wanted = self._wanted(self.neighbour_cores)
        if wanted != self.threads:
            logger.info("other processes took %.1f of our %d cores: running on %d thread(s)",
                        self.neighbour_cores, self.cores, wanted)
            self.threads = wanted
            self.set_threads(wanted)
        return self.threads

    def _wanted(self, neighbours: float) -> int:
        left = self.cores - self.threads  # cores we already leave to others
        if neighbours > left - 1 + _BUSY_ABOVE:  # they took more than half of one of our cores
            left = math.floor(neighbours + 1 - _BUSY_ABOVE)
        elif neighbours < left - 1 + _IDLE_BELOW:  # one of the cores we left has gone (nearly) quiet
            left = max(0, math.ceil(neighbours - _IDLE_BELOW))
        return max(1, self.cores - left)


def _affinity() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return None
