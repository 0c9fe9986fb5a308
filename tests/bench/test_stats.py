"""Percentiles and per-request latency figures, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from llmserve.bench.result import RequestResult
from llmserve.bench.stats import Percentiles, percentile, summarize, wall_duration


def test_percentile_interpolates_linearly() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4; position = 3 * q / 100
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)  # 3 + 0.7 * (4 - 3)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([10.0, 20.0], 25) == pytest.approx(12.5)


def test_percentile_matches_numpy() -> None:
    np = pytest.importorskip("numpy")
    values = [0.3, 7.1, 2.2, 9.9, 4.4, 4.4, 0.01, 15.0, 3.3]
    for q in (0, 10, 33.3, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edge_cases() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_percentiles_of() -> None:
    p = Percentiles.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (p.count, p.mean, p.median) == (5, 3.0, 3.0)
    assert p.p90 == pytest.approx(4.6)
    assert math.isnan(Percentiles.of([]).mean)


def _ok(send: float, chunks: list[float], end: float, tokens: int, prompt: int = 10) -> RequestResult:
    return RequestResult(ok=True, status=200, send_time=send, first_token_time=chunks[0], chunk_times=chunks,
                         end_time=end, output_tokens=tokens, prompt_tokens=prompt)


def test_summarize_hand_computed() -> None:
    results = [
        # TTFT 0.5, E2EL 2.0, TPOT (2.0 - 0.5) / 3 = 0.5, ITLs 0.5 0.5 0.5
        _ok(0.0, [0.5, 1.0, 1.5, 2.0], 2.0, 4),
        # TTFT 1.0, E2EL 2.0, TPOT (2.0 - 1.0) / 1 = 1.0 (usage said 2 tokens, one chunk), no ITL
        _ok(1.0, [2.0], 3.0, 2),
        # one token: TTFT counts, TPOT does not
        _ok(1.0, [1.25], 1.5, 1),
        RequestResult(ok=False, status=429, error="HTTP 429: slow down", send_time=0.5, end_time=0.6),
        RequestResult(ok=False, status=None, error="ClientConnectorError", send_time=0.5, end_time=0.5),
        RequestResult(ok=False, status=200, error="stream ended", send_time=0.5, end_time=0.7),
    ]
    duration = wall_duration(results)
    assert duration == 3.0
    s = summarize(results, duration)
    assert (s.completed, s.failed) == (3, 3)
    assert s.errors_by_status == {"429": 1, "no response": 1, "stream": 1}
    assert s.ttft.mean == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    assert s.ttft.median == pytest.approx(0.5)
    assert s.tpot.count == 2 and s.tpot.mean == pytest.approx(0.75)
    assert s.itl.count == 3 and s.itl.p99 == pytest.approx(0.5)
    assert s.e2el.median == pytest.approx(2.0)
    assert (s.prompt_tokens, s.output_tokens) == (30, 7)
    assert s.request_throughput == pytest.approx(1.0)
    assert s.output_throughput == pytest.approx(7 / 3)
    assert s.total_token_throughput == pytest.approx(37 / 3)
    assert "HTTP 429: slow down" in s.first_errors
    assert "TTFT" in s.table() and "429" in s.table()
    assert s.to_dict()["ttft"]["count"] == 3


def test_summarize_empty_run() -> None:
    s = summarize([], 0.0)
    assert (s.completed, s.failed) == (0, 0)
    assert math.isnan(s.output_throughput) and math.isnan(s.ttft.p99)
