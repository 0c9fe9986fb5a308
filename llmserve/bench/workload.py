"""What a benchmark sends and when: synthetic requests and arrival processes."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# Low ids of Llama-family vocabularies hold BOS/EOS/chat markers; random prompts stay clear of them.
# Same value as benchmarks/common.py, so offline and served runs see the same prompts.
FIRST_PLAIN_TOKEN_ID = 100


@dataclass(frozen=True)
class BenchRequest:
    prompt: str | list[int]  # text, or token ids sent as-is (exact input length, no tokenizer needed)
    output_len: int
    input_len: int
    priority: int | None = None


def random_requests(num: int, input_len: tuple[int, int], output_len: tuple[int, int], vocab_size: int,
                    seed: int = 0) -> list[BenchRequest]:
    """Random token-id prompts with uniform lengths in the inclusive ranges, fixed by `seed`.

    The random calls come in the same order as benchmarks/common.make_workload, so both produce
    identical prompts and output lengths for the same arguments.
    """
    if vocab_size <= FIRST_PLAIN_TOKEN_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_PLAIN_TOKEN_ID}, got {vocab_size}")
    rng = random.Random(seed)
    requests = []
    for _ in range(num):
        n_in = rng.randint(*input_len)
        prompt = [rng.randrange(FIRST_PLAIN_TOKEN_ID, vocab_size) for _ in range(n_in)]
        requests.append(BenchRequest(prompt, output_len=rng.randint(*output_len), input_len=n_in))
    return requests


def arrival_times(num: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send offsets in seconds from the start of the run; the first request goes at 0.

    Gaps between requests are gamma-distributed with shape `burstiness` and mean 1/rate:
    burstiness 1 is a Poisson process, below 1 burstier, above 1 more regular. rate=inf sends
    everything at once.
    """
    if rate <= 0 or burstiness <= 0:
        raise ValueError(f"rate and burstiness must be positive, got rate={rate}, burstiness={burstiness}")
    if math.isinf(rate):
        return [0.0] * num
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)  # mean of gamma(shape, scale) is shape * scale
    offsets = []
    now = 0.0
    for _ in range(num):
        offsets.append(now)
        now += rng.gammavariate(burstiness, scale)
    return offsets
