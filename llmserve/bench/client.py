"""Streaming OpenAI-compatible client that timestamps every chunk.

Failures of the server under test (HTTP errors, refused or dropped connections, malformed streams)
are results to count, so they land in `RequestResult.error` and are never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from llmserve.bench.result import RequestResult
from llmserve.bench.workload import ENDPOINT_PATHS, BenchRequest, Endpoint

# One long run of a slow server may take hours; the run itself, not this timeout, should bound it.
DEFAULT_TIMEOUT_S = 6 * 3600.0
ERROR_BODY_CHARS = 300
logger = logging.getLogger(__name__)


class MalformedStream(ValueError):
    """The server answered 200 but the SSE stream does not have the OpenAI shape."""


def endpoint_url(base_url: str, endpoint: Endpoint) -> str:
    """'http://h:8000' or 'http://h:8000/v1' -> 'http://h:8000/v1/completions'."""
    base = base_url.rstrip("/")
    base = base.removesuffix("/v1")
    return base + ENDPOINT_PATHS[endpoint]


def build_payload(model: str, req: BenchRequest, endpoint: Endpoint,
                  extra_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Greedy, fixed-length, streamed with a final usage chunk; `extra_body` overrides any field (null drops it)."""
    body: dict[str, Any] = {
        "model": model, "max_tokens": req.output_len, "temperature": 0.0,
        "ignore_eos": True,  # vLLM extension: every request produces exactly output_len tokens
        "stream": True, "stream_options": {"include_usage": True},
    }
    conversation = isinstance(req.prompt, list) and bool(req.prompt) and isinstance(req.prompt[0], dict)
    if endpoint == "chat":
        if isinstance(req.prompt, str):
            body["messages"] = [{"role": "user", "content": req.prompt}]
        elif conversation:
            body["messages"] = req.prompt
        else:
            raise ValueError("the chat endpoint needs text prompts, not token ids")
    elif endpoint == "completions":
        if conversation:
            raise ValueError("conversations need the chat endpoint (--endpoint chat)")
        body["prompt"] = req.prompt
    else:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {sorted(ENDPOINT_PATHS)}")
    if req.priority is not None:
        body["priority"] = req.priority
    body.update(extra_body or {})
    return {key: value for key, value in body.items() if value is not None}  # null in extra_body drops a field


async def send_request(session: aiohttp.ClientSession, url: str, model: str, req: BenchRequest,
                       endpoint: Endpoint = "completions", extra_body: dict[str, Any] | None = None) -> RequestResult:
    """POST one streaming request to the server at base `url` and time each chunk of its answer."""
    payload = build_payload(model, req, endpoint, extra_body)  # a bad request is the caller's bug: raise
    result = RequestResult(priority=req.priority, prompt_tokens=req.input_len)
    result.send_time = time.perf_counter()
    try:
        async with session.post(endpoint_url(url, endpoint), json=payload) as response:
            result.status = response.status
            result.cache = response.headers.get("X-Cache")
            if response.status == 200:
                await _read_stream(response, endpoint, result)
            else:
                body = await response.text(errors="replace")
                result.error = f"HTTP {response.status}: {body[:ERROR_BODY_CHARS]}"
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # OSError covers TimeoutError
        result.error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 (whatever a broken server provokes is its failure, not the run's)
        result.error = f"unexpected {type(exc).__name__}: {exc}"
    if not result.end_time:
        result.end_time = time.perf_counter()
    result.ok = not result.error
    return result


async def _read_stream(response: aiohttp.ClientResponse, endpoint: Endpoint, result: RequestResult) -> None:
    """E2EL ends at the last chunk with choices, as vLLM's bench: whatever the server does
    between its last token and '[DONE]' is not generation latency. '[DONE]' decides success."""
    pieces: list[str] = []
    usage: Any = None
    last_choice_time: float | None = None
    async for raw in response.content:
        now = time.perf_counter()  # before parsing, so the JSON work is not counted as server time
        data = _sse_data(raw)
        if data is None:
            continue
        if data == "[DONE]":
            result.end_time = now if last_choice_time is None else last_choice_time
            break
        chunk = json.loads(data)  # a JSONDecodeError is a ValueError: recorded by the caller
        if not isinstance(chunk, dict):
            raise MalformedStream(f"chunk is not a JSON object: {data[:ERROR_BODY_CHARS]}")
        if "error" in chunk:  # servers report failures after the 200 header this way
            result.error = f"error in stream: {json.dumps(chunk['error'])[:ERROR_BODY_CHARS]}"
            return
        if chunk.get("choices"):
            last_choice_time = now
        text = _chunk_text(chunk, endpoint)
        if text:
            result.chunk_times.append(now)
            pieces.append(text)
        if chunk.get("usage"):
            usage = chunk["usage"]
    else:
        result.error = "stream ended before 'data: [DONE]'"
        return
    result.text = "".join(pieces)
    result.first_token_time = result.chunk_times[0] if result.chunk_times else None
    if not result.chunk_times:
        result.error = "the stream carried no content"
        return
    result.output_tokens = len(result.chunk_times)
    if usage is not None:
        _apply_usage(usage, result)


def _apply_usage(usage: Any, result: RequestResult) -> None:
    """A usage chunk without a sane completion count is ignored: the chunk count stands, flagged as an estimate."""
    counts = usage if isinstance(usage, dict) else {}
    completion, prompt = counts.get("completion_tokens"), counts.get("prompt_tokens")
    if not isinstance(completion, int) or isinstance(completion, bool) or completion < 1:
        return
    result.output_tokens = completion
    if isinstance(prompt, int) and not isinstance(prompt, bool):
        result.prompt_tokens = prompt
    result.usage_reported = True


def _sse_data(raw: bytes) -> str | None:
    """The payload of a 'data:' line; None for blank lines, comments and other SSE fields."""
    line = raw.decode("utf-8").rstrip("\r\n")
    if not line.startswith("data:"):
        return None
    value = line[len("data:"):]
    return value[1:] if value.startswith(" ") else value


def _chunk_text(chunk: dict[str, Any], endpoint: Endpoint) -> str:
    choices = chunk.get("choices") or []  # the usage chunk has choices: []
    if not isinstance(choices, list) or (choices and not isinstance(choices[0], dict)):
        raise MalformedStream(f"bad 'choices' in chunk: {json.dumps(chunk)[:ERROR_BODY_CHARS]}")
    if not choices:
        return ""
    if endpoint == "chat":
        delta = choices[0].get("delta") or {}
        # A reasoning model streams its thinking first; those are generated tokens too.
        text = next((delta[key] for key in ("content", "reasoning_content", "reasoning") if delta.get(key)),
                    None) if isinstance(delta, dict) else None
    else:
        text = choices[0].get("text")
    if text is not None and not isinstance(text, str):
        raise MalformedStream(f"chunk text is not a string: {json.dumps(chunk)[:ERROR_BODY_CHARS]}")
    return text or ""


async def run_load(url: str, model: str, requests: Sequence[BenchRequest], arrivals: Sequence[float],
                   max_concurrency: int | None = None, endpoint: Endpoint = "completions",
                   api_key: str | None = None, extra_body: dict[str, Any] | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S,
                   on_done: Callable[[RequestResult], None] | None = None) -> list[RequestResult]:
    """Send request i at `arrivals[i]` seconds after the start; results come back in request order.

    With `max_concurrency`, a request that arrives while that many are in flight waits for a slot,
    and its send_time (hence its TTFT) starts when it actually goes out. `on_done` sees each
    result as it finishes (a progress bar).
    """
    if len(arrivals) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(arrivals)} arrival times")
    for req in requests:  # fail before sending anything, not half-way through a run
        build_payload(model, req, endpoint, extra_body)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limiter = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    # limit=0 lifts aiohttp's default cap of 100 connections, which would queue requests silently.
    connector = aiohttp.TCPConnector(limit=max_concurrency or 0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        start = time.perf_counter()
        sends = [_send_at(start + offset, limiter, session, url, model, req, endpoint, extra_body, on_done)
                 for req, offset in zip(requests, arrivals, strict=True)]
        return list(await asyncio.gather(*sends))


async def _send_at(due: float, limiter: asyncio.Semaphore | None, session: aiohttp.ClientSession, url: str,
                   model: str, req: BenchRequest, endpoint: Endpoint, extra_body: dict[str, Any] | None,
                   on_done: Callable[[RequestResult], None] | None) -> RequestResult:
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    if limiter is None:
        result = await send_request(session, url, model, req, endpoint, extra_body)
    else:
        async with limiter:
            result = await send_request(session, url, model, req, endpoint, extra_body)
    if on_done is not None:
        try:
            on_done(result)
        except Exception:  # a broken progress display must not lose the run
            logger.exception("on_done callback failed")
    return result


async def first_model_id(url: str, api_key: str | None = None, timeout_s: float = 30.0) -> str:
    """The first model id that GET /v1/models lists: what to put in each request's `model` field."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session, \
            session.get(url.rstrip("/").removesuffix("/v1") + "/v1/models") as response:
        response.raise_for_status()
        listing = await response.json()
    models = listing.get("data") if isinstance(listing, dict) else None
    if not models or not isinstance(models[0], dict) or "id" not in models[0]:
        raise ValueError(f"GET /v1/models listed no model: {json.dumps(listing)[:ERROR_BODY_CHARS]}")
    return str(models[0]["id"])
