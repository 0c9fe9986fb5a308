"""The response cache's stores and keys, without a model: LRU in bytes, TTL, Redis up and down."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from llmserve.sampling_params import SamplingParams
from llmserve.server.cached_responses import NO_CACHE, ResponseCacheFront
from llmserve.server.protocol import ChatCompletionRequest, CompletionRequest
from llmserve.server.response_cache import (
    REDIS_KEY_PREFIX,
    MemoryResponseCache,
    RedisResponseCache,
    open_response_cache,
)
from tests.server.redis_server import redis_server
from tests.timing import PATIENCE_S, FakeClock


def run(coro):
    return asyncio.run(coro)


def test_memory_cache_is_lru_bounded_in_bytes():
    cache = MemoryResponseCache(capacity_bytes=30, ttl_s=60)

    async def scenario():
        await cache.put("a", b"x" * 10)
        await cache.put("b", b"y" * 10)
        await cache.put("c", b"z" * 10)
        assert cache.stats.stored_bytes == 30
        assert await cache.get("a") == b"x" * 10  # a is now the most recent
        await cache.put("d", b"w" * 15)  # needs 15 bytes: evicts b, then c
        assert await cache.get("b") is None and await cache.get("c") is None
        assert await cache.get("a") == b"x" * 10 and await cache.get("d") == b"w" * 15
        await cache.put("huge", b"h" * 31)  # larger than the whole cache: not stored, nothing evicted
        assert await cache.get("huge") is None and await cache.get("a") is not None

    run(scenario())
    assert cache.stats.evictions == 2
    assert cache.stats.stored_bytes == 25 and len(cache) == 2
    assert (cache.stats.lookups, cache.stats.hits) == (7, 4)


def test_memory_cache_entries_expire():
    clock = FakeClock()
    cache = MemoryResponseCache(capacity_bytes=100, ttl_s=10, clock=clock)

    async def scenario():
        await cache.put("k", b"value")
        clock.now += 9.9
        assert await cache.get("k") == b"value"
        clock.now += 0.1
        assert await cache.get("k") is None
        assert cache.stats.stored_bytes == 0 and len(cache) == 0
        await cache.put("k", b"new")  # a replaced entry gets a fresh TTL and its bytes once
        await cache.put("k", b"newer")
        assert cache.stats.stored_bytes == 5

    run(scenario())


def test_open_response_cache_reads_sizes_and_urls():
    assert isinstance(open_response_cache("1MiB", 60), MemoryResponseCache)
    assert open_response_cache("1MiB", 60).capacity_bytes == 1 << 20
    assert isinstance(open_response_cache("redis://127.0.0.1:1/0", 60), RedisResponseCache)
    with pytest.raises(ValueError, match="memory size"):
        open_response_cache("lots", 60)
    assert "***@" in open_response_cache("redis://user:secret@127.0.0.1:1/0", 60).description


def test_redis_cache_round_trip_and_ttl():
    with redis_server() as server:
        async def scenario():
            writer = RedisResponseCache(server.url, ttl_s=60, timeout_s=PATIENCE_S)
            reader = RedisResponseCache(server.url, ttl_s=60, timeout_s=PATIENCE_S)  # another replica
            await writer.put("key", b"\x00bytes\xff")
            assert await reader.get("key") == b"\x00bytes\xff"
            assert await reader.get("other") is None
            # Expiry is Redis's job: the entry carries the TTL (a sleep past it would race a busy machine).
            assert 0 < await writer.client.pttl(REDIS_KEY_PREFIX + "key") <= 60_000
            brief = RedisResponseCache(server.url, ttl_s=0.05, timeout_s=PATIENCE_S)
            await brief.put("brief", b"gone soon")
            deadline = time.monotonic() + PATIENCE_S
            while await brief.get("brief") is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await brief.get("brief") is None
            for cache in (writer, reader, brief):
                await cache.close()
            return reader.stats

        stats = run(scenario())
    assert (stats.lookups, stats.hits, stats.errors) == (2, 1, 0)


def test_redis_down_is_a_miss_and_one_warning(caplog):
    clock = FakeClock()
    with redis_server() as server:
        async def scenario():
            cache = RedisResponseCache(server.url, ttl_s=60, clock=clock, timeout_s=PATIENCE_S)
            await cache.put("key", b"v")
            server.stop()
            with caplog.at_level(logging.WARNING, logger="llmserve.server"):
                assert await cache.get("key") is None  # a failed call: counted, warned once
                assert await cache.get("key") is None  # resting: Redis is not even tried
                await cache.put("key", b"w")
                clock.now += 10
                assert await cache.get("key") is None  # tried again, fails again: no second warning
            return cache.stats

        stats = run(scenario())
    warnings = [r for r in caplog.records if "Redis" in r.getMessage()]
    assert len(warnings) == 1 and "miss" in warnings[0].getMessage()
    assert stats.errors == 2 and stats.hits == 0 and stats.lookups == 3


def _completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "hi", **fields})


def _params(body: CompletionRequest) -> SamplingParams:
    return body.sampling_params(body.max_tokens, body.logprobs)


def _chat_params(body: ChatCompletionRequest) -> SamplingParams:
    return body.sampling_params(body.requested_max_tokens, body.num_logprobs)


def test_only_determined_requests_get_a_key():
    front = ResponseCacheFront(MemoryResponseCache(1000, 60), "model")

    def use(**fields):
        body = _completion(**fields)
        return front.use("completions", body, _params(body), body.prompts(), None, "")

    assert use(temperature=0).key is not None
    assert use(temperature=0.7, seed=3).key is not None
    assert use() is NO_CACHE  # temperature defaults to 1
    assert use(temperature=0.7) is NO_CACHE
    assert use(temperature=0, cache=False) is NO_CACHE


def test_keys_normalize_defaults_and_separate_what_changes_the_answer():
    front = ResponseCacheFront(MemoryResponseCache(1000, 60), "model")

    def key(endpoint="completions", api_key=None, **fields):
        body = _completion(**fields)
        return front.use(endpoint, body, _params(body), body.prompts(), api_key, "").key

    base = key(temperature=0)
    assert key(temperature=0.0, top_p=1.0, max_tokens=16, user="bob", priority="p0", model="x") == base
    for changed in ({"max_tokens": 17}, {"stop": ["."]}, {"logprobs": 1}, {"stream": True}, {"n": 2},
                    {"prompt": "ho"}, {"top_k": 5}):
        assert key(temperature=0, **changed) != base, changed
    assert key(temperature=0, api_key="a") != key(temperature=0, api_key="b") != base
    assert key("chat/completions", temperature=0) != base
    shared = ResponseCacheFront(MemoryResponseCache(1000, 60), "model", share_across_api_keys=True)
    body = _completion(temperature=0)
    assert (shared.use("completions", body, _params(body), body.prompts(), "a", "").key
            == shared.use("completions", body, _params(body), body.prompts(), "b", "").key)
    other_model = ResponseCacheFront(MemoryResponseCache(1000, 60), "other")
    assert other_model.use("completions", body, _params(body), body.prompts(), None, "").key != base


def test_cache_control_directives():
    front = ResponseCacheFront(MemoryResponseCache(1000, 60), "model")
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "seed": 1})
    plain = front.use("chat/completions", body, _chat_params(body), ["hi"], None, "")
    no_cache = front.use("chat/completions", body, _chat_params(body), ["hi"], None, "No-Cache")
    no_store = front.use("chat/completions", body, _chat_params(body), ["hi"], None, "max-age=0, no-store")
    assert (plain.read, plain.write) == (True, True)
    assert (no_cache.read, no_cache.write, no_cache.key) == (False, True, plain.key)
    assert no_store is NO_CACHE
    assert plain.headers() == {"X-Cache": "miss"} and no_store.headers() == {"X-Cache": "bypass"}


def test_an_unreadable_entry_is_a_miss():
    store = MemoryResponseCache(1000, 60)
    front = ResponseCacheFront(store, "model")
    body = _completion(temperature=0)
    use = front.use("completions", body, _params(body), body.prompts(), None, "")

    async def scenario():
        for junk in (b"\xff not json", b"[1, 2]", b'{"body": "text"}'):
            await store.put(use.key, junk)
            assert await front.lookup(use) is None
        await front.store_body(use, {"choices": []})
        assert await front.lookup(use) == {"body": {"choices": []}}

    run(scenario())
