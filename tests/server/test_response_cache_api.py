"""The response cache over HTTP: hits replay the miss's body and chunks, only determined requests
are cached, API keys do not share, opt-outs work, and Redis shares entries between replicas
and never fails a request when it is down."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from llmserve.server import response_cache
from llmserve.server.app import ServerConfig
from tests.server.live_server import MODEL_NAME, live_server, scrape
from tests.server.redis_server import redis_server
from tests.timing import PATIENCE_S

LABEL = f'{{model_name="{MODEL_NAME}"}}'


@pytest.fixture(scope="module")
def cached(engine):
    with live_server(engine, ServerConfig(served_model_name=MODEL_NAME, response_cache="1MiB")) as live:
        yield live


def _complete(server, prompt, headers=None, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 8, "temperature": 0, **fields}
    return httpx.post(server.base_url + "/completions", json=body, headers=headers, timeout=30)


def _stream(server, path: str, body: dict) -> tuple[httpx.Headers, list[dict], list[str]]:
    with httpx.stream("POST", server.base_url + path, json={"model": MODEL_NAME, "stream": True, **body},
                      timeout=30) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line]
    return resp.headers, [json.loads(line[6:]) for line in lines if line != "data: [DONE]"], lines


def _without_identity(payload: dict) -> dict:
    """What must match between a miss and its hit: everything but the id, timestamp and cached flag."""
    usage = payload.get("usage")
    usage = {k: v for k, v in usage.items() if k != "cached"} if usage else usage
    return {**payload, "id": None, "created": None, "usage": usage}


def test_a_hit_returns_the_same_body_with_a_fresh_id(cached):
    miss = _complete(cached, [11, 12, 13, 14], n=2, logprobs=2, temperature=0.8, seed=5)
    hit = _complete(cached, [11, 12, 13, 14], n=2, logprobs=2, temperature=0.8, seed=5)
    assert (miss.status_code, hit.status_code) == (200, 200)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
    first, second = miss.json(), hit.json()
    assert _without_identity(second) == _without_identity(first)
    assert second["id"] != first["id"] and second["id"].startswith("cmpl-")
    assert second["usage"]["cached"] is True and "cached" not in first["usage"]
    assert json.dumps(second["choices"]).encode() == json.dumps(first["choices"]).encode()


def test_a_streamed_hit_replays_the_same_chunks(cached):
    body = {"prompt": [21, 22, 23], "max_tokens": 6, "temperature": 0, "stream_options": {"include_usage": True}}
    miss_headers, miss, miss_lines = _stream(cached, "/completions", body)
    hit_headers, hit, hit_lines = _stream(cached, "/completions", body)
    assert (miss_headers["x-cache"], hit_headers["x-cache"]) == ("miss", "hit")
    assert len(hit) == len(miss) > 2 and hit_lines[-1] == "data: [DONE]"
    assert [_without_identity(c) for c in hit] == [_without_identity(c) for c in miss]
    assert len({c["id"] for c in hit}) == 1 and hit[0]["id"] != miss[0]["id"]
    assert hit[-1]["usage"]["cached"] is True
    # A plain request is another entry: it does not get the stream's chunks.
    assert _complete(cached, [21, 22, 23], max_tokens=6).headers["x-cache"] == "miss"


def test_chat_hits_after_templating(cached):
    body = {"messages": [{"role": "user", "content": "cache me"}], "max_tokens": 5, "temperature": 0}
    url = cached.base_url + "/chat/completions"
    miss = httpx.post(url, json={"model": MODEL_NAME, **body}, timeout=30)
    # The same conversation in parts renders to the same prompt.
    parts = {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": "cache "},
                                                               {"type": "text", "text": "me"}]}]}
    hit = httpx.post(url, json=parts, timeout=30)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
    assert hit.json()["choices"] == miss.json()["choices"] and hit.json()["id"].startswith("chatcmpl-")


def test_undetermined_requests_are_never_cached(cached):
    before = scrape(cached.url)
    for _ in range(2):
        resp = _complete(cached, [31, 32], temperature=0.9)
        assert resp.status_code == 200 and resp.headers["x-cache"] == "bypass"
    after = scrape(cached.url)
    key = f"llmserve:response_cache_lookups_total{LABEL}"
    assert after[key] == before[key]


def test_api_keys_do_not_share_entries(cached):
    def ask(key: str) -> str:
        return _complete(cached, [41, 42, 43], headers={"Authorization": f"Bearer {key}"}).headers["x-cache"]

    assert [ask("alice"), ask("bob"), ask("alice"), ask("bob")] == ["miss", "miss", "hit", "hit"]


def test_opting_out(cached):
    prompt = [51, 52, 53]
    assert _complete(cached, prompt, cache=False).headers["x-cache"] == "bypass"
    assert _complete(cached, prompt).headers["x-cache"] == "miss"  # cache: false stored nothing
    assert _complete(cached, prompt, headers={"Cache-Control": "no-cache"}).headers["x-cache"] == "miss"
    assert _complete(cached, prompt, headers={"Cache-Control": "no-store"}).headers["x-cache"] == "bypass"
    assert _complete(cached, prompt).headers["x-cache"] == "hit"


def test_a_stream_cut_short_is_not_stored(cached):
    body = {"model": MODEL_NAME, "prompt": [61, 62, 63], "max_tokens": 200, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", cached.base_url + "/completions", json=body, timeout=30) as resp:
        next(resp.iter_lines())  # one chunk, then hang up
    _, chunks, _ = _stream(cached, "/completions", {k: v for k, v in body.items() if k != "stream"})
    assert chunks  # it ran whole this time
    assert _stream(cached, "/completions", {k: v for k, v in body.items() if k != "stream"})[0]["x-cache"] == "hit"


def test_metrics_count_lookups_hits_and_bytes(cached):
    before = scrape(cached.url)
    _complete(cached, [71, 72])
    _complete(cached, [71, 72])
    _complete(cached, [73, 74])
    after = scrape(cached.url)

    def delta(name: str) -> float:
        return after[f"llmserve:{name}{LABEL}"] - before[f"llmserve:{name}{LABEL}"]

    assert delta("response_cache_lookups_total") == 3
    assert delta("response_cache_hits_total") == 1
    assert delta("response_cache_bytes") > 0
    assert after[f"llmserve:response_cache_evictions_total{LABEL}"] == 0


def test_redis_shares_entries_between_replicas_and_its_outage_is_a_miss(engine, caplog, monkeypatch):
    monkeypatch.setattr(response_cache, "REDIS_TIMEOUT_S", PATIENCE_S)  # a slow call on a busy machine is no outage
    with redis_server() as redis:
        config = ServerConfig(served_model_name=MODEL_NAME, response_cache=redis.url)
        with live_server(engine, config) as first, live_server(engine, config) as second:
            miss = _complete(first, [81, 82, 83])
            hit = _complete(second, [81, 82, 83])
            assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
            assert hit.json()["choices"] == miss.json()["choices"]
            redis.stop()
            with caplog.at_level(logging.WARNING, logger="llmserve.server"):
                down = [_complete(first, [84, 85]), _complete(first, [81, 82, 83])]
            assert [r.status_code for r in down] == [200, 200]
            assert [r.headers["x-cache"] for r in down] == ["miss", "miss"]
            errors = scrape(first.url)[f"llmserve:response_cache_errors_total{LABEL}"]
    assert errors >= 1
    assert sum("Redis" in r.getMessage() for r in caplog.records) == 1
