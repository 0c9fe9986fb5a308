"""The streaming client against a scripted fake OpenAI server on a free local port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from llmserve.bench.client import build_payload, endpoint_url, run_load, send_request
from llmserve.bench.result import RequestResult, request_itls, request_tpot, request_ttft
from llmserve.bench.stats import summarize, wall_duration
from llmserve.bench.workload import BenchRequest, Endpoint
from tests.bench.fake_openai import BODIES, Handler, Script, fake_server, scripted, sse
from tests.net import free_port

FIRST_DELAY_S = 0.05
GAP_S = 0.02
TEXTS = ["a", "b", "c", "d", "e"]
USAGE_TOKENS = 6  # one more than the text chunks: the last token decoded to no text
EARLY_S = 0.005  # timer granularity. A busy machine makes a scripted delay longer by any amount,
# never shorter, so the tests bound times from below only.
REQUEST = BenchRequest([101, 102, 103], output_len=USAGE_TOKENS, input_len=3)



async def _scripted_stream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    request.app[BODIES].append(body)
    chat = request.path.endswith("/chat/completions")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await asyncio.sleep(FIRST_DELAY_S)
    for i, text in enumerate([*TEXTS, ""]):
        if i:
            await asyncio.sleep(GAP_S)
        choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
        await response.write(sse({"choices": [choice]}))
    await response.write(b": a comment line, ignored\n\n")
    await response.write(sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": USAGE_TOKENS}}))
    await response.write(b"data: [DONE]\n\n")
    return response


async def _too_many(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "slow down"}}, status=429)


async def _broken(request: web.Request) -> web.Response:
    return web.Response(text="boom", status=500)


async def _malformed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"data: {not json\n\n")
    return response


async def _no_done(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(sse({"choices": [{"index": 0, "text": "x"}]}))
    return response


async def _error_in_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(sse({"error": {"message": "engine died", "code": 500}}))
    return response


async def _send_one(handler: Handler, req: BenchRequest = REQUEST,
                    endpoint: Endpoint = "completions") -> tuple[RequestResult, list[dict[str, Any]]]:
    async with fake_server(handler) as (url, bodies), aiohttp.ClientSession() as session:
        return await send_request(session, url, "m", req, endpoint), bodies


def test_stream_timings_follow_the_script() -> None:
    result, bodies = asyncio.run(_send_one(_scripted_stream))
    assert result.ok, result.error
    assert result.status == 200 and result.text == "abcde"
    assert result.output_tokens == USAGE_TOKENS  # from usage, not the 5 text chunks
    assert result.prompt_tokens == 3
    assert len(result.chunk_times) == len(TEXTS)
    # Each chunk is timed no earlier than the server sent it: the first after FIRST_DELAY_S, the
    # i-th i gaps later; E2EL (at the last chunk with choices, the textless 6th) 5 gaps after that.
    for i, at in enumerate(result.chunk_times):
        assert at - result.send_time >= FIRST_DELAY_S + i * GAP_S - EARLY_S, i
    assert request_ttft(result) == result.chunk_times[0] - result.send_time
    assert request_itls(result) == [b - a for a, b in zip(result.chunk_times, result.chunk_times[1:], strict=False)]
    assert result.end_time - result.send_time >= FIRST_DELAY_S + 5 * GAP_S - EARLY_S
    # E2EL - TTFT spans 5 gaps (the last chunk has no text) over 6 - 1 tokens.
    assert request_tpot(result) == pytest.approx((result.end_time - result.chunk_times[0]) / 5)
    assert bodies[0] == {"model": "m", "prompt": [101, 102, 103], "max_tokens": USAGE_TOKENS, "temperature": 0.0,
                         "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def test_chat_endpoint_reads_delta_content() -> None:
    req = BenchRequest("hi", output_len=4, input_len=1, priority=2)
    result, bodies = asyncio.run(_send_one(_scripted_stream, req, "chat"))
    assert result.ok, result.error
    assert result.text == "abcde" and result.priority == 2
    assert bodies[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert bodies[0]["priority"] == 2


@pytest.mark.parametrize(("handler", "status", "message"), [
    (_too_many, 429, "slow down"),
    (_broken, 500, "boom"),
    (_malformed, 200, "JSONDecodeError"),
    (_no_done, 200, "[DONE]"),
    (_error_in_stream, 200, "engine died"),
])
def test_server_failures_are_recorded_not_raised(handler: Handler, status: int, message: str) -> None:
    result, _ = asyncio.run(_send_one(handler))
    assert not result.ok
    assert result.status == status
    assert message in result.error
    assert result.end_time >= result.send_time


def test_connection_refused_is_recorded_not_raised() -> None:
    async def go() -> list[RequestResult]:
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
        return await run_load(url, "m", [REQUEST, REQUEST], [0.0, 0.0])

    results = asyncio.run(go())
    assert [r.ok for r in results] == [False, False]
    assert all(r.status is None and r.error for r in results)
    assert summarize(results, wall_duration(results)).errors_by_status == {"no response": 2}


def test_run_load_sends_at_the_arrival_offsets() -> None:
    arrivals = [0.0, 0.1, 0.25]

    async def go() -> list[RequestResult]:
        async with fake_server(_scripted_stream) as (url, _):
            return await run_load(url + "/v1/", "m", [REQUEST] * 3, arrivals)

    before = time.perf_counter()  # the run's start is later than this
    results = asyncio.run(go())
    assert all(r.ok for r in results)
    sends = [r.send_time for r in results]
    assert sends == sorted(sends)
    for sent, offset in zip(sends, arrivals, strict=True):
        assert sent - before >= offset - EARLY_S  # never early; how late is the machine's business


def test_run_load_concurrency_cap_serializes() -> None:
    async def go() -> list[RequestResult]:
        async with fake_server(_scripted_stream) as (url, _):
            return await run_load(url, "m", [REQUEST] * 3, [0.0] * 3, max_concurrency=1)

    results = asyncio.run(go())
    assert all(r.ok for r in results)
    ordered = sorted(results, key=lambda r: r.send_time)
    assert all(later.send_time >= earlier.end_time for earlier, later in zip(ordered, ordered[1:], strict=False))
    summary = summarize(results, wall_duration(results))
    assert summary.completed == 3 and summary.output_tokens == 3 * USAGE_TOKENS
    assert summary.ttft.median >= FIRST_DELAY_S - EARLY_S  # each TTFT starts at its own send


def test_run_load_rejects_token_prompts_for_chat_before_sending() -> None:
    with pytest.raises(ValueError, match="text prompts"):
        asyncio.run(run_load("http://127.0.0.1:9", "m", [REQUEST], [0.0], endpoint="chat"))


def test_endpoint_url_and_payload_overrides() -> None:
    assert endpoint_url("http://h:8/", "completions") == "http://h:8/v1/completions"
    assert endpoint_url("http://h:8/v1", "chat") == "http://h:8/v1/chat/completions"
    body = build_payload("m", REQUEST, "completions", {"temperature": 0.7, "top_p": 0.9})
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and "priority" not in body
    assert "ignore_eos" not in build_payload("m", REQUEST, "completions", {"ignore_eos": None})


async def _one_scripted(script: Script, endpoint: Endpoint = "completions") -> RequestResult:
    req = REQUEST if endpoint == "completions" else BenchRequest("hi", output_len=5, input_len=1)
    async with fake_server(scripted(lambda body, k: script)) as (url, _), aiohttp.ClientSession() as session:
        return await send_request(session, url, "m", req, endpoint)


@pytest.mark.parametrize("usage", [{"completion_tokens": None}, [1, 2], {"prompt_tokens": 3}, "x"])
def test_a_malformed_usage_chunk_falls_back_to_counting_chunks(usage: object) -> None:
    result = asyncio.run(_one_scripted(Script(first_delay_s=0.0, gap_s=0.0, usage=usage)))
    assert result.ok, result.error
    assert result.output_tokens == 5 and not result.usage_reported


def test_a_stream_without_content_is_a_failure() -> None:
    result = asyncio.run(_one_scripted(Script(first_delay_s=0.0, texts=(), usage_tokens=4)))
    assert not result.ok and result.status == 200 and "no content" in result.error


def test_e2el_ends_at_the_last_chunk_not_at_done() -> None:
    result = asyncio.run(_one_scripted(Script(first_delay_s=0.01, gap_s=0.01, usage_tokens=5, done_delay_s=0.3)))
    assert result.ok and result.usage_reported
    assert result.end_time == result.chunk_times[-1]  # the last chunk, not the 0.3 s pause before [DONE]


def test_reasoning_tokens_count_as_content_on_chat() -> None:
    result = asyncio.run(_one_scripted(Script(first_delay_s=0.0, gap_s=0.0, field="reasoning_content"), "chat"))
    assert result.ok and result.text == "abcde" and len(result.chunk_times) == 5
