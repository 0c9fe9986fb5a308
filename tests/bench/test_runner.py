"""A run's JSON form: written, read back, and the same figures recomputed from it."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from llmserve.bench.datasets import DatasetSpec
from llmserve.bench.runner import BenchConfig, BenchRun, load_runs, run_bench
from llmserve.bench.slo import SLO
from tests.bench.fake_openai import MODEL_ID, Script, fake_server, scripted


def _mixed(body: dict, k: int) -> Script:
    return Script(status=500) if k == 0 else Script(first_delay_s=0.01 * k, gap_s=0.005, usage_tokens=5)


async def _run() -> BenchRun:
    async with fake_server(scripted(_mixed)) as (url, _):
        config = BenchConfig(url=url, dataset=DatasetSpec("random", 5, input_len=(4, 4), output_len=(5, 5)),
                             priority_mix={0: 0.4, 1: 0.6}, slo=SLO.parse("ttft=30ms"), cost_per_hour=2.5,
                             api_key="secret")
        return await run_bench(config)


def test_json_round_trip_keeps_every_figure() -> None:
    run = asyncio.run(_run())
    assert run.model == MODEL_ID and run.summary.failed == 1 and set(run.by_priority) == {"p0", "p1"}
    text = json.dumps(run.to_json(), allow_nan=False)  # strict JSON: no NaN or Infinity
    assert "secret" not in text  # the API key never lands in a result file
    again = load_runs(json.loads(text))[0]
    assert again.summary == run.summary
    assert again.by_priority == run.by_priority
    assert again.results == run.results
    assert min(r.send_time for r in run.results) == 0.0  # times count from the first send


def test_failed_only_run_has_no_nan_in_json() -> None:
    async def go() -> BenchRun:
        async with fake_server(scripted(lambda body, k: Script(status=503))) as (url, _):
            return await run_bench(BenchConfig(url=url, dataset=DatasetSpec("random", 2), model="m",
                                               cost_per_hour=1.0))

    run = asyncio.run(go())
    data = json.loads(json.dumps(run.to_json(), allow_nan=False))
    assert data["summary"]["ttft"]["median"] is None and math.isnan(run.summary.ttft.median)
    assert data["summary"]["cost_per_million_output_tokens"] is None  # no tokens: infinite cost, stored as null
    assert data["summary"]["errors_by_status"] == {"503": 2}
    with pytest.raises(ValueError, match="not an llmserve bench result"):
        load_runs({"summary": {}})
