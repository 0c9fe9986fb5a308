"""Behaviour under load: a full queue answers 429 before reading the body, disconnects free their KV
blocks, one failing request does not take down the others, and the event loop answers while the
engine computes. Speed-independent: the engine is held still where a test needs it to be, and polls
wait up to a minute for what normally takes milliseconds."""

from __future__ import annotations

import asyncio
import threading

import httpx

from llmserve.engine.async_engine import AsyncEngine
from llmserve.server.app import ServerConfig
from tests.server.live_server import MODEL_NAME, live_server, scrape
from tests.timing import PATIENCE_S, wait_until

LONG = {"model": MODEL_NAME, "prompt": "Tell me a long story", "max_tokens": 400, "ignore_eos": True,
        "stream": True}


def all_blocks_free(engine: AsyncEngine) -> bool:
    manager = engine.engine.block_manager
    return manager.num_free_blocks == manager.num_blocks and not engine.engine.has_unfinished_requests()


def test_queue_full_gets_429_with_retry_after_before_any_work(engine, monkeypatch):
    gate = threading.Event()  # holds the engine still, so the queue cannot drain under the test
    original_step = engine.engine.step

    def gated_step():
        gate.wait(PATIENCE_S)
        return original_step()

    config = ServerConfig(served_model_name=MODEL_NAME, max_queued_requests=1)
    with live_server(engine, config) as live, httpx.Client(timeout=PATIENCE_S) as client:
        monkeypatch.setattr(engine.engine, "step", gated_step)  # after the warm-up, which needs steps
        url = live.base_url + "/completions"
        tokens = f'llmserve:prompt_tokens_total{{model_name="{MODEL_NAME}"}}'
        waiting = threading.Thread(target=lambda: httpx.post(url, json={**LONG, "max_tokens": 4, "stream": False},
                                                             timeout=PATIENCE_S))
        waiting.start()
        assert wait_until(lambda: live.state.shedder.total_queued == 1)
        prompt_tokens_before = scrape(live.url).get(tokens, 0.0)
        # A body the server would choke on: refused before it is even read (a 429, not a 400), and
        # while the engine is held, so the answer cannot have waited for any engine work.
        rejected = client.post(url, content=b"{never parsed", headers={"content-type": "application/json"})
        assert rejected.status_code == 429 and rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        assert scrape(live.url).get(tokens, 0.0) == prompt_tokens_before
        gate.set()
        monkeypatch.undo()
        waiting.join(timeout=PATIENCE_S)
        assert wait_until(lambda: all_blocks_free(engine))
        ok = client.post(url, json={"model": MODEL_NAME, "prompt": "again", "max_tokens": 3})
        assert ok.status_code == 200


def test_client_disconnect_mid_stream_frees_the_kv_blocks(server):
    engine = server.engine
    with httpx.Client(timeout=PATIENCE_S) as client, client.stream("POST", server.base_url + "/completions",
                                                             json=LONG) as resp:
        lines = resp.iter_lines()
        for _ in range(5):
            next(lines)
        assert engine.engine.block_manager.num_free_blocks < engine.engine.block_manager.num_blocks
    # The connection is closed: the request must be aborted at the next engine step.
    assert wait_until(lambda: all_blocks_free(engine))
    usage = scrape(server.url)[f'llmserve:kv_cache_usage_perc{{model_name="{MODEL_NAME}"}}']
    assert usage == 0.0


def test_engine_failure_of_one_request_is_a_500_and_others_carry_on(server, monkeypatch):
    engine = server.engine.engine
    poison = 4242  # any request whose prompt holds this token fails inside the engine
    original = engine._stop_status

    def flaky(request, token_id):
        if poison in request.prompt_token_ids:
            raise RuntimeError("injected failure")
        return original(request, token_id)

    monkeypatch.setattr(engine, "_stop_status", flaky)
    url = server.base_url + "/completions"

    async def main():
        async with httpx.AsyncClient(timeout=PATIENCE_S) as client:
            bad = client.post(url, json={"model": MODEL_NAME, "prompt": [5, poison, 6], "max_tokens": 8})
            goods = [client.post(url, json={"model": MODEL_NAME, "prompt": [5, 6, i], "max_tokens": 8,
                                            "ignore_eos": True}) for i in range(7, 11)]
            bad_stream = client.post(url, json={"model": MODEL_NAME, "prompt": [poison], "max_tokens": 8,
                                                "stream": True})
            return await asyncio.gather(bad, bad_stream, *goods)

    bad, bad_stream, *goods = asyncio.run(main())
    assert bad.status_code == 500
    error = bad.json()["error"]
    assert error["type"] == "server_error" and "injected failure" in error["message"]
    assert "Traceback" not in bad.text
    # A stream has sent its 200 already: the failure arrives as an error event, then [DONE].
    assert bad_stream.status_code == 200
    assert '"error"' in bad_stream.text and bad_stream.text.rstrip().endswith("data: [DONE]")
    assert all(g.status_code == 200 and g.json()["usage"]["completion_tokens"] == 8 for g in goods)
    monkeypatch.undo()
    still_here = {"model": MODEL_NAME, "prompt": "still here", "max_tokens": 2}
    assert httpx.post(url, json=still_here, timeout=PATIENCE_S).status_code == 200
    assert wait_until(lambda: all_blocks_free(server.engine))


def test_health_answers_while_the_engine_is_stuck_in_a_step_of_32_streams(server, monkeypatch):
    """The engine computes on its own thread: with 32 streams in flight and a step that does not
    return, the event loop still answers /health. A blocked loop would never answer, however long
    the wait, so this holds on any machine, unlike a latency bound."""
    url = server.base_url + "/completions"
    engine = server.engine.engine
    original_step = engine.step
    arrived, stuck, release = threading.Event(), threading.Event(), threading.Event()

    def sticky_step():
        arrived.wait(PATIENCE_S)  # the engine starts once all 32 requests are queued
        outputs = original_step()
        if outputs and not stuck.is_set():
            stuck.set()  # the streams are running: hold this step until the probes are done
            release.wait(PATIENCE_S)
        return outputs

    async def stream(client: httpx.AsyncClient, i: int) -> int:
        body = {**LONG, "prompt": f"stream {i}", "max_tokens": 120}
        async with client.stream("POST", url, json=body) as resp:
            return len([line async for line in resp.aiter_lines() if line.startswith("data: {")])

    async def probe(client: httpx.AsyncClient) -> list[int]:
        try:
            assert await asyncio.to_thread(wait_until, lambda: server.state.shedder.total_queued == 32)
            arrived.set()
            assert await asyncio.to_thread(stuck.wait, PATIENCE_S), "the engine never stepped"
            return [(await client.get(server.url + "/health")).status_code for _ in range(5)]
        finally:
            release.set()

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=PATIENCE_S, limits=limits) as client, \
                httpx.AsyncClient(timeout=PATIENCE_S) as prober:
            probe_task = asyncio.create_task(probe(prober))
            counts = await asyncio.gather(*(stream(client, i) for i in range(32)))
            return counts, await probe_task

    monkeypatch.setattr(engine, "step", sticky_step)
    try:
        counts, statuses = asyncio.run(main())
    finally:
        release.set()
    assert statuses == [200] * 5
    assert all(c >= 2 for c in counts)
