"""Helpers shared by the benchmarks: synthetic workloads, memory bandwidth, RSS, small stats."""

from __future__ import annotations

import os
import random
import resource
import statistics
from dataclasses import dataclass

import torch

from llmserve import devices

# Low ids of Llama-family vocabularies hold BOS/EOS/chat markers; random prompts stay clear of them.
FIRST_PLAIN_TOKEN_ID = 100


@dataclass(frozen=True)
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int


def parse_range(text: str) -> tuple[int, int]:
    """'32:512' -> (32, 512) inclusive; '128' -> (128, 128)."""
    lo_text, _, hi_text = text.partition(":")
    lo = int(lo_text)
    hi = int(hi_text) if hi_text else lo
    if lo < 1 or hi < lo:
        raise ValueError(f"bad length range {text!r}; expected LO:HI with 1 <= LO <= HI")
    return lo, hi


def make_workload(num_requests: int, input_len: tuple[int, int], output_len: tuple[int, int],
                  vocab_size: int, seed: int) -> list[BenchRequest]:
    """Random prompts of uniform length and uniform output lengths, fixed by `seed`."""
    rng = random.Random(seed)
    requests = []
    for _ in range(num_requests):
        n_in = rng.randint(*input_len)
        prompt = [rng.randrange(FIRST_PLAIN_TOKEN_ID, vocab_size) for _ in range(n_in)]
        requests.append(BenchRequest(prompt, rng.randint(*output_len)))
    return requests


def num_cores() -> int:
    # The affinity mask is what this process may actually use (containers, taskset).
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS, where this figure would be 1024x too large).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / (1 << 20)


def measure_copy_bandwidth(size_mib: int = 512, trials: int = 7, device: str | torch.device = "cpu") -> float:
    """Best-of-`trials` bytes/s of a tensor copy, counting the read and the write (STREAM 'copy'); the
    server's model_bandwidth_utilization gauge divides by the same measurement."""
    return devices.measure_copy_bandwidth(device, size_mib, trials)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
