"""Synthetic requests and arrival processes."""

from __future__ import annotations

import math

import pytest

from benchmarks.common import make_workload
from llmserve.bench.workload import (
    FIRST_PLAIN_TOKEN_ID,
    arrival_times,
    parse_length,
    parse_priority_mix,
    random_requests,
    with_priorities,
)


def test_random_requests_match_the_offline_benchmark_workload() -> None:
    # Offline and served benchmarks must send the very same prompts for the same seed.
    ours = random_requests(64, (32, 512), (32, 256), 49152, seed=0)
    offline = make_workload(64, (32, 512), (32, 256), 49152, 0)
    assert [r.prompt for r in ours] == [r.prompt_token_ids for r in offline]
    assert [r.output_len for r in ours] == [r.output_len for r in offline]
    assert all(r.input_len == len(r.prompt) for r in ours)


def test_random_requests_lengths_and_ids_in_range() -> None:
    reqs = random_requests(50, (3, 9), (2, 5), 200, seed=7)
    assert all(3 <= r.input_len <= 9 and 2 <= r.output_len <= 5 for r in reqs)
    assert all(FIRST_PLAIN_TOKEN_ID <= t < 200 for r in reqs for t in r.prompt)
    assert random_requests(50, (3, 9), (2, 5), 200, seed=7) == reqs
    assert random_requests(50, (3, 9), (2, 5), 200, seed=8) != reqs


def test_random_requests_rejects_tiny_vocab() -> None:
    with pytest.raises(ValueError):
        random_requests(1, (1, 1), (1, 1), FIRST_PLAIN_TOKEN_ID, seed=0)


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_times(5, math.inf) == [0.0] * 5


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_mean_gap_is_one_over_rate(burstiness: float) -> None:
    times = arrival_times(20_000, rate=4.0, burstiness=burstiness, seed=1)
    assert times[0] == 0.0
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))
    mean_gap = times[-1] / (len(times) - 1)
    assert mean_gap == pytest.approx(0.25, rel=0.05)


def test_burstiness_sets_the_spread_of_gaps() -> None:
    # Gamma gaps: the coefficient of variation is 1/sqrt(shape), 1 for Poisson.
    for burstiness in (1.0, 4.0):
        times = arrival_times(20_000, rate=2.0, burstiness=burstiness, seed=2)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        mean = sum(gaps) / len(gaps)
        std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
        assert std / mean == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_same_seed_same_arrivals() -> None:
    assert arrival_times(100, 1.0, seed=3) == arrival_times(100, 1.0, seed=3)
    assert arrival_times(100, 1.0, seed=3) != arrival_times(100, 1.0, seed=4)


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_bad_rate_or_burstiness(rate: float, burstiness: float) -> None:
    with pytest.raises(ValueError):
        arrival_times(3, rate, burstiness)


def test_parse_length() -> None:
    assert parse_length("128") == (128, 128)
    assert parse_length("32:512") == (32, 512)
    for bad in ("0", "9:3", "a", "1:b"):
        with pytest.raises(ValueError):
            parse_length(bad)


def test_priority_mix_is_normalized_and_assigned_in_exact_shares() -> None:
    mix = parse_priority_mix("p0=1, p2=3")
    assert mix == {0: 0.25, 2: 0.75}
    reqs = with_priorities(random_requests(10, (3, 3), (2, 2), 200), mix, seed=5)
    labels = [r.priority for r in reqs]
    assert sorted(labels) == [0, 0, 0, 2, 2, 2, 2, 2, 2, 2]  # 2.5 and 7.5 tie on remainder: p0 gets the odd one
    assert with_priorities(random_requests(10, (3, 3), (2, 2), 200), mix, seed=5) == reqs
    for bad in ("p0", "p0=x", "p0=1,p0=2", "p0=0", "q=1", "p0=-1"):
        with pytest.raises(ValueError):
            parse_priority_mix(bad)
