"""`llmserve serve --replicas 2` as a client sees it: one endpoint, two engine replicas on Ray Serve.

The tests share one cluster (conftest.py) and run in file order; the failover test, which kills a
replica, comes last.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import ExitStack

import httpx
import pytest

from llmserve.server.app import ServerConfig
from tests.replicas.conftest import MODEL_NAME, Replicated
from tests.server.live_server import live_server, scrape
from tests.timing import wait_until

pytestmark = pytest.mark.ray

TIMEOUT = httpx.Timeout(120.0)
SYSTEM = ("You are a careful assistant for a weather service. Answer in metric units, name the station, "
          "give the time of the reading, and never guess: say what you do not know. ") * 2


def complete(url: str, prompt: str, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 8, "temperature": 0, **fields}
    return httpx.post(url + "/v1/completions", json=body, timeout=TIMEOUT)


def chat(url: str, question: str, system: str = SYSTEM, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}], **fields}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=TIMEOUT)


def sse_events(response: httpx.Response) -> list[dict | str]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def live_replicas(url: str) -> int:
    response = httpx.get(url + "/health", timeout=TIMEOUT)
    return response.json().get("replicas", 0) if response.status_code == 200 else 0


def test_health_counts_live_replicas(replicated: Replicated):
    response = httpx.get(replicated.url + "/health", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "replicas": 2}


def test_both_replicas_serve_and_each_response_names_its_replica(replicated: Replicated):
    seen: dict[str, str] = {}
    for i in range(40):  # short prompts carry no routing key: the less loaded of two random replicas
        response = complete(replicated.url, f"Count with me: {i}")
        assert response.status_code == 200
        body = response.json()
        assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 8
        seen.setdefault(response.headers["x-replica"], body["choices"][0]["text"])
        if len(seen) == 2:
            break
    assert len(seen) == 2
    assert set(seen) == set(replicated.engine.stats())  # the names /metrics labels them by


def test_replicas_answer_alike(replicated: Replicated):
    """Both replicas load the same weights: a greedy answer does not depend on where it ran."""
    answers: dict[str, str] = {}
    for _ in range(40):
        response = complete(replicated.url, "The same question every time", max_tokens=12)
        answers.setdefault(response.headers["x-replica"], response.json()["choices"][0]["text"])
        # Its prompt is short (no routing key), so both replicas get it sooner or later.
        if len(answers) == 2:
            break
    assert len(set(answers.values())) == 1


def test_streams_through_the_front(replicated: Replicated):
    whole = chat(replicated.url, "Is it raining in Oslo?").json()["choices"][0]["message"]["content"]
    body = {"model": MODEL_NAME, "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Is it raining in Oslo?"}]}
    with httpx.stream("POST", replicated.base_url + "/chat/completions", json=body, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-replica"] in replicated.engine.stats()
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_requests_sharing_a_prefix_land_on_one_replica(replicated: Replicated):
    before = replicated.counters.snapshot()
    replicas, cached = set(), []
    system = "A prompt no earlier test sent. " + SYSTEM  # so the first request finds nothing cached
    for i in range(6):
        response = chat(replicated.url, f"Question {i}: what is the temperature at station {i}?", system)
        assert response.status_code == 200
        replicas.add(response.headers["x-replica"])
        cached.append(response.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
    assert len(replicas) == 1
    # The replica's prefix cache held the system prompt for every request after the first.
    assert cached[0] < min(cached[1:]) and min(cached[1:]) >= 64
    _, hits, misses, _ = replicated.counters.snapshot()
    assert hits - before[1] >= 5 and misses == before[2]


def test_embeddings_and_prompt_logprobs_come_back_from_a_replica(replicated: Replicated):
    body = {"model": MODEL_NAME, "input": ["a first sentence", "and a second one"]}
    response = httpx.post(replicated.base_url + "/embeddings", json=body, timeout=TIMEOUT)
    assert response.status_code == 200
    assert set(response.headers["x-replica"].split(",")) <= set(replicated.engine.stats())
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and all(len(d["embedding"]) == 64 for d in data)  # hidden size
    answer = complete(replicated.url, "Logprobs of the prompt, please", max_tokens=2, prompt_logprobs=1).json()
    entries = answer["choices"][0]["prompt_logprobs"]
    assert entries[0] is None and len(entries) == answer["usage"]["prompt_tokens"]


def test_a_bad_request_is_refused_at_the_front(replicated: Replicated):
    before = sum(replicated.counters.snapshot()[0].values())
    response = complete(replicated.url, "word " * 600)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"
    assert sum(replicated.counters.snapshot()[0].values()) == before  # never routed


def test_metrics_aggregate_every_replica(replicated: Replicated):
    for i in range(3):
        assert chat(replicated.url, f"Metrics question {i}").status_code == 200
    names = set(replicated.engine.stats())
    model = f'model_name="{MODEL_NAME}"'

    def settled() -> bool:  # the front polls its replicas once a second
        values = scrape(replicated.url)
        return sum(values.get(f'llmserve:prefix_cache_hits_total{{{model},replica="{r}"}}', 0) for r in names) > 0

    assert wait_until(settled)
    values = scrape(replicated.url)
    for replica in names:
        assert f'llmserve:num_requests_running{{{model},replica="{replica}"}}' in values
        assert f'llmserve:kv_cache_usage_perc{{{model},replica="{replica}"}}' in values
    routed = sum(values.get(f'llmserve:router_requests_total{{{model},replica="{r}"}}', 0) for r in names)
    assert routed >= 3
    assert values[f'llmserve:router_prefix_affinity_total{{{model},result="hit"}}'] >= 2
    assert values[f"llmserve:replicas_live{{{model}}}"] == 2
    # The front's own request metrics count what went through it.
    assert values[f'llmserve:request_success_total{{finished_reason="length",{model}}}'] >= 3


def test_shedding_429_passes_through_unchanged(replicated: Replicated):
    config = ServerConfig(served_model_name=MODEL_NAME, max_queued_requests=1, warmup=False)
    with ExitStack() as stack:
        front = stack.enter_context(live_server(None, config, factory=lambda: replicated.engine))
        held = front.state.shedder.enter(0, 100)  # the queue is full: one request waits for its first token
        response = complete(front.url, "Anyone there?")
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "queue_full"
        held.leave(served=False)
        assert complete(front.url, "Anyone there?").status_code == 200


def test_the_response_cache_answers_at_the_front(replicated: Replicated):
    config = ServerConfig(served_model_name=MODEL_NAME, response_cache="16MiB", warmup=False)
    with live_server(None, config, factory=lambda: replicated.engine) as front:
        first = complete(front.url, "Cache this answer, please", max_tokens=10)
        routed = sum(replicated.counters.snapshot()[0].values())
        again = complete(front.url, "Cache this answer, please", max_tokens=10)
    assert first.headers["x-cache"] == "miss" and "x-replica" in first.headers
    assert again.headers["x-cache"] == "hit" and "x-replica" not in again.headers  # no replica was asked
    assert again.json()["choices"] == first.json()["choices"]
    assert sum(replicated.counters.snapshot()[0].values()) == routed


def test_a_killed_replica_fails_only_its_own_requests_and_is_replaced(replicated: Replicated):
    url = replicated.url
    pids = {s.name: s.pid for s in replicated.engine.handle.broadcast("snapshot").results(timeout_s=60)}
    long = {"model": MODEL_NAME, "max_tokens": 480, "ignore_eos": True, "temperature": 0, "stream": True}
    with ExitStack() as stack:
        victim_stream = stack.enter_context(httpx.stream("POST", url + "/v1/completions", timeout=TIMEOUT,
                                                         json={**long, "prompt": "The first long story"}))
        victim = victim_stream.headers["x-replica"]
        survivor_stream = None
        for i in range(20):  # the less loaded of two: the other replica, almost always at once
            candidate = stack.enter_context(httpx.stream("POST", url + "/v1/completions", timeout=TIMEOUT,
                                                         json={**long, "prompt": f"Another long story {i}"}))
            if candidate.headers["x-replica"] != victim:
                survivor_stream = candidate
                break
        assert survivor_stream is not None
        lines = victim_stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # it has begun
        os.kill(pids[victim], signal.SIGKILL)
        rest = [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]" for line in lines
                if line.startswith("data: ")]
        survivor = sse_events(survivor_stream)
    assert rest[-1] == "[DONE]"
    assert rest[-2]["error"]["code"] == "replica_unavailable"
    assert survivor[-1] == "[DONE]"
    assert survivor[-2]["choices"][0]["finish_reason"] == "length"
    assert all("error" not in event for event in survivor[:-1])
    # Ray Serve replaces the dead replica; then the endpoint serves as before.
    assert wait_until(lambda: live_replicas(url) == 2, timeout=200)
    assert complete(url, "After the storm").status_code == 200
