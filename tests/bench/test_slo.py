"""SLO targets: parsing, and which requests meet them."""

from __future__ import annotations

import pytest

from llmserve.bench.result import RequestResult
from llmserve.bench.slo import SLO
from llmserve.units import parse_duration_s


def test_parse_units() -> None:
    assert parse_duration_s("500ms") == pytest.approx(0.5)
    assert parse_duration_s("0.5s") == pytest.approx(0.5)
    assert parse_duration_s("250") == pytest.approx(0.25)  # bare numbers are ms, as in vLLM's --goodput
    assert SLO.parse("ttft=500ms, TPOT=50ms").targets == {"ttft": 0.5, "tpot": 0.05}
    for bad in ("ttft", "itl=5ms", "ttft=5min", "", "ttft=-1ms"):
        with pytest.raises(ValueError):
            SLO.parse(bad)


def _result(ttft: float, end: float, tokens: int, ok: bool = True) -> RequestResult:
    return RequestResult(ok=ok, send_time=0.0, first_token_time=ttft, chunk_times=[ttft], end_time=end,
                         output_tokens=tokens)


def test_a_request_must_meet_every_target() -> None:
    slo = SLO.parse("ttft=100ms,tpot=20ms,e2el=1s")
    assert slo.met_by(_result(0.1, 0.1 + 9 * 0.019, 10))  # the TTFT bound is inclusive
    assert not slo.met_by(_result(0.101, 0.2, 10))  # TTFT
    assert not slo.met_by(_result(0.05, 0.05 + 9 * 0.021, 10))  # TPOT
    assert not slo.met_by(_result(0.05, 1.2, 100))  # E2EL only (TPOT 11.6 ms)
    assert slo.met_by(_result(0.05, 0.3, 1))  # one token: no TPOT to miss
    assert not slo.met_by(_result(0.05, 0.1, 10, ok=False))
    assert not slo.met_by(RequestResult(ok=True, end_time=0.1, output_tokens=0))  # no first token
