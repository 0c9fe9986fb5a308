"""Service classes end to end: under overload p3 is shed and p0 is admitted and served first; the
class comes from the body or X-Priority; the metrics count it all per class.

Nothing here depends on how fast the machine is: the engine moves only when the test lets it, and
p0's targets are an hour, so whether it met them is certain and its counting is what is tested."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from llmserve.engine.async_engine import AsyncEngine
from llmserve.server.app import ServerConfig
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES
from tests.server.live_server import MODEL_NAME, live_server, scrape
from tests.timing import PATIENCE_S, wait_until

REQUEST = {"model": MODEL_NAME, "prompt": "Tell me a story about a cat", "ignore_eos": True}


@pytest.fixture(scope="module")
def narrow_engine(chat_model_path):
    """Two running slots, so classes compete for them; p0's targets are met however slow the machine."""
    classes = DEFAULT_SERVICE_CLASSES.with_spec("p0:ttft=1h,e2e=1h")
    engine = AsyncEngine.from_args(str(chat_model_path), max_model_len=512, block_size=16, num_kv_blocks=256,
                                   max_num_seqs=2, max_num_batched_tokens=64, service_classes=classes)
    yield engine
    engine.shutdown()


async def stream(client: httpx.AsyncClient, url: str, priority: str, max_tokens: int) -> dict:
    """Status, headers, time of send, first token and end of one streamed request."""
    sent = time.monotonic()
    result: dict = {"priority": priority, "sent": sent, "first": None}
    body = {**REQUEST, "max_tokens": max_tokens, "stream": True, "priority": priority}
    async with client.stream("POST", url, json=body) as response:
        result["status"] = response.status_code
        result["headers"] = response.headers
        lines = []
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith("data: {") and '"text"' in line and result["first"] is None:
                result["first"] = time.monotonic()
        result["body"] = "\n".join(lines)
    result["end"] = time.monotonic()
    return result


class StepGate:
    """Holds the engine before each step while `hold()` is true, until open(). `hold` is read on the
    engine's thread, so a condition on what the steps did stops the engine exactly there."""

    def __init__(self, hold: Callable[[], bool]) -> None:
        self._cond = threading.Condition()
        self._hold = hold
        self._open = False

    def wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._open or not self._hold(), timeout=PATIENCE_S)

    def recheck(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()


def test_under_overload_p3_is_shed_and_p0_is_served_first(narrow_engine, monkeypatch):
    steps: list[list[tuple[str, int, bool]]] = []  # per engine step: (request, tokens so far, finished)
    starting = threading.Event()

    def started() -> int:
        return len({request_id for outputs in steps for request_id, tokens, _ in outputs if tokens})

    # Still until the test says go; then steps until two requests have their first token, then still.
    gate = StepGate(hold=lambda: not starting.is_set() or started() >= 2)
    original_step = narrow_engine.engine.step

    def gated_step():
        gate.wait()
        outputs = original_step()
        steps.append([(o.request_id, len(o.outputs[0].token_ids), o.finished) for o in outputs])
        return outputs

    config = ServerConfig(served_model_name=MODEL_NAME, max_queued_requests=8)  # p3 may fill 4 of the 8
    with live_server(narrow_engine, config) as live:
        monkeypatch.setattr(narrow_engine.engine, "step", gated_step)
        url = live.base_url + "/completions"
        shedder = live.state.shedder

        async def until(predicate) -> None:
            assert await asyncio.to_thread(wait_until, predicate)

        async def scenario() -> tuple[list[dict], list[dict]]:
            async with httpx.AsyncClient(timeout=PATIENCE_S) as client:
                background = [asyncio.create_task(stream(client, url, "p3", 120)) for _ in range(6)]
                await until(lambda: shedder.total_queued == 4 and sum(t.done() for t in background) == 2)
                starting.set()  # both running slots take a p3 request, two stay queued
                gate.recheck()
                await until(lambda: shedder.queued[3] == 2)
                urgent = [asyncio.create_task(stream(client, url, "p0", 5)) for _ in range(2)]
                await until(lambda: shedder.queued[0] == 2)  # both p0 requests wait behind nothing
                gate.open()
                return await asyncio.gather(*background), await asyncio.gather(*urgent)

        background, urgent = asyncio.run(scenario())
        metrics = scrape(live.url)

    refused = [r for r in background if r["status"] == 429]
    assert len(refused) == 2
    assert all(r["headers"]["retry-after"] == "1" and "queue_full" in r["body"] for r in refused)
    assert [r["status"] for r in urgent] == [200, 200]
    # The two p3 requests still queued when p0 arrived got their first token only in an engine step
    # after both p0 requests had finished (steps, not client clocks: a busy client reads late).
    first, end, length = first_and_last_steps(steps)
    p0 = [r for r in length if length[r] == 5]
    p3_first = sorted(first[r] for r in length if length[r] == 120)
    assert len(p0) == 2 and len(p3_first) == 4
    assert p3_first[-2] > max(end[r] for r in p0)
    assert metrics[series("requests_shed_total", "p3", reason="queue_full")] == 2
    assert series("requests_shed_total", "p0", reason="queue_full") not in metrics
    assert metrics[series("slo_requests_total", "p0", target="ttft", result="met")] == 2
    assert metrics[series("slo_requests_total", "p0", target="e2e", result="met")] == 2
    assert series("slo_requests_total", "p3", target="ttft", result="met") not in metrics  # p3 has no target
    assert metrics[series("time_to_first_token_seconds_count", "p0")] == 2
    assert metrics[series("inter_token_latency_seconds_count", "p0")] == 2 * (5 - 1)  # 4 gaps in 5 tokens
    assert metrics[series("time_to_first_token_seconds_count", "p3")] == 4
    assert metrics[series("queue_length", "p0")] == 0 and metrics[series("queue_length", "p3")] == 0
    assert narrow_engine.engine.block_manager.num_free_blocks == narrow_engine.engine.block_manager.num_blocks


def first_and_last_steps(steps: list[list[tuple[str, int, bool]]]) -> tuple[dict, dict, dict]:
    """Per request: the step of its first token, the step it finished in, its final token count."""
    first: dict[str, int] = {}
    end: dict[str, int] = {}
    length: dict[str, int] = {}
    for index, outputs in enumerate(steps):
        for request_id, tokens, finished in outputs:
            if tokens:
                first.setdefault(request_id, index)
            if finished:
                end[request_id], length[request_id] = index, tokens
    return first, end, length


def series(name: str, service_class: str, **labels: str) -> str:
    """A per-class series as the exposition writes it: labels in sorted order."""
    labels.update(model_name=MODEL_NAME, service_class=service_class)
    inner = ",".join(f'{key}="{labels[key]}"' for key in sorted(labels))
    return f"llmserve:service_class_{name}{{{inner}}}"


def _class_of_last_request(live, before: dict[str, float]) -> str:
    after = scrape(live.url)
    for name in ("p0", "p1", "p2", "p3"):
        key = series("e2e_request_latency_seconds_count", name)
        if after.get(key, 0) > before.get(key, 0):
            return name
    raise AssertionError("no class counted the request")


@pytest.mark.parametrize("body, headers, expected", [
    ({}, {}, "p3"),  # the default class
    ({"priority": 1}, {}, "p1"),
    ({"priority": "p2"}, {}, "p2"),
    ({"priority": "p3"}, {"X-Priority": "p0"}, "p0"),  # the header, as a gateway sets it, wins
    ({}, {"X-Priority": "1"}, "p1"),
])
def test_a_request_names_its_class_in_the_body_or_a_header(server, body, headers, expected):
    before = scrape(server.url)
    response = httpx.post(server.base_url + "/completions", json={**REQUEST, "max_tokens": 2, **body},
                          headers=headers, timeout=30)
    assert response.status_code == 200
    assert _class_of_last_request(server, before) == expected


@pytest.mark.parametrize("body, headers, param", [
    ({"priority": 7}, {}, "priority"),
    ({"priority": "gold"}, {}, "priority"),
    ({"priority": 1.5}, {}, "priority"),
    ({}, {"X-Priority": "urgent"}, "x-priority"),
])
def test_an_unknown_class_is_a_400_naming_the_field(server, body, headers, param):
    response = httpx.post(server.base_url + "/chat/completions",
                          json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], **body},
                          headers=headers, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
