"""What a benchmark sends and when: synthetic requests and arrival processes."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

# Low ids of Llama-family vocabularies hold BOS/EOS/chat markers; random prompts stay clear of them.
# Same value as benchmarks/common.py, so offline and served runs see the same prompts.
FIRST_PLAIN_TOKEN_ID = 100


Endpoint = Literal["completions", "chat"]
ENDPOINT_PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class BenchRequest:
    # text; token ids sent as-is (exact input length, no tokenizer needed); or a chat conversation
    prompt: str | list[int] | list[Message]
    output_len: int
    input_len: int  # exact for token ids, an estimate for text (the server's usage count replaces it)
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
    if not rate > 0 or not (math.isfinite(burstiness) and burstiness > 0):  # NaN fails both: gammavariate would spin
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


def parse_length(spec: str | int) -> tuple[int, int]:
    """'128' -> (128, 128); '32:512' -> (32, 512), an inclusive uniform range."""
    text = str(spec).strip()
    lo_text, sep, hi_text = text.partition(":")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    except ValueError:
        raise ValueError(f"a length is N or LO:HI in tokens, got {text!r}") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"a length range needs 1 <= LO <= HI, got {text!r}")
    return lo, hi


def parse_priority_mix(spec: str) -> dict[int, float]:
    """'p0=0.1,p2=0.9' -> {0: 0.1, 2: 0.9}: priority class -> share of requests (normalized to sum to 1)."""
    mix: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, weight_text = item.partition("=")
        name = name.strip().lower().removeprefix("p")
        try:
            priority, weight = int(name), float(weight_text)
        except ValueError:
            raise ValueError(f"a priority mix is like p0=0.1,p2=0.9; cannot read {item!r}") from None
        if not sep or weight < 0 or not math.isfinite(weight):
            raise ValueError(f"a priority share must be a number >= 0, got {item!r}")
        if priority in mix:
            raise ValueError(f"priority class p{priority} is given twice in {spec!r}")
        mix[priority] = weight
    total = sum(mix.values())
    if not mix or total <= 0:
        raise ValueError(f"a priority mix needs at least one class with a positive share, got {spec!r}")
    return {priority: weight / total for priority, weight in mix.items()}


def with_priorities(requests: Sequence[BenchRequest], mix: dict[int, float], seed: int = 0) -> list[BenchRequest]:
    """Each class gets its share of the requests, rounded by largest remainder, in an order shuffled by `seed`.

    Exact counts rather than independent draws: 16 requests at p0=0.25 carry four p0 requests,
    so a class is never missing from a small run by chance.
    """
    quotas = {priority: share * len(requests) for priority, share in mix.items()}
    counts = {priority: math.floor(q) for priority, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda p: (counts[p] - quotas[p], p))
    for priority in by_remainder[:len(requests) - sum(counts.values())]:
        counts[priority] += 1
    labels = [priority for priority, count in counts.items() for _ in range(count)]
    random.Random(seed).shuffle(labels)
    return [replace(req, priority=label) for req, label in zip(requests, labels, strict=True)]
