"""What both OpenAI endpoints share: model check, prompt preparation, streams, SSE and usage."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmserve.server.cached_responses import (
    NO_CACHE,
    CacheUse,
    ResponseCacheFront,
    is_stream_entry,
    replay_body,
    replay_chunks,
)
from llmserve.server.chat_tools import ChatSetup
from llmserve.server.errors import APIError, bad_request, error_body
from llmserve.server.metrics import ServerMetrics
from llmserve.server.shedding import Shed
from llmserve.server.streams import QueuedPrompt, merge, tracked_stream, unless_disconnected

if TYPE_CHECKING:
    from starlette.types import Receive

    from llmserve.engine.async_engine import AsyncEngine
    from llmserve.engine.engine import PreparedRequest, Prompt
    from llmserve.engine.outputs import CompletionOutput, RequestOutput, TokenLogprobs
    from llmserve.pooling_params import PoolingParams
    from llmserve.sampling_params import SamplingParams
    from llmserve.server.shedding import LoadShedder

logger = logging.getLogger("llmserve.server")
T = TypeVar("T")


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n"


SSE_DONE = sse("[DONE]")


@dataclass(frozen=True)
class RequestContext:
    """What the HTTP layer knows about a request besides its body."""

    received: float  # time.monotonic() when it arrived
    rank: int  # its service class
    api_key: str | None = None  # the bearer token it came with, if any
    cache_control: str = ""  # its Cache-Control header
    receive: Receive | None = None  # its ASGI channel, watched for a disconnect while a whole reply is computed


@dataclass
class RequestLog:
    """The one log line each HTTP request gets when it ends."""

    request_id: str
    received: float
    status: int | str = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV the prefix cache held

    def usage(self) -> dict[str, Any]:
        return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def count(self, output: RequestOutput) -> None:
        """Add a finished engine request's generated and prefix-cached tokens."""
        self.completion_tokens += output.num_generated_tokens
        self.cached_tokens += output.num_cached_tokens or 0

    def emit(self) -> None:
        logger.info("%s %s prompt_tokens=%d completion_tokens=%d latency=%.3fs", self.request_id, self.status,
                    self.prompt_tokens, self.completion_tokens, time.monotonic() - self.received)


class Serving:
    def __init__(self, engine: AsyncEngine, model_name: str, metrics: ServerMetrics, shedder: LoadShedder,
                 responses: ResponseCacheFront | None = None, chat: ChatSetup | None = None) -> None:
        self.engine = engine
        self.model_name = model_name
        self.metrics = metrics
        self.shedder = shedder
        self.responses = responses
        self.tokenizer = engine.tokenizer
        self.chat = chat or ChatSetup()
        self.tool_parser = self.chat.parser(self.tokenizer.chat_template if self.tokenizer else None)
        # A few threads: one huge prompt being tokenized does not hold up everyone else's.
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="llmserve-tokenize")
        self.in_flight: set[str] = set()  # engine request ids being streamed, for cut_off()
        self.closing = False

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)

    def cut_off(self) -> None:
        """The shutdown timeout has run out: abort every engine request, and refuse any new one.
        Each caller then sees its request aborted, and answers 503 server_shutting_down."""
        self.closing = True
        for request_id in list(self.in_flight):
            self.engine.abort(request_id)

    def check_open(self) -> None:
        if self.closing:
            raise shutting_down()

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.model_name:
            raise APIError(404, f"the model {requested!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    async def queue_prompts(self, request_id: str, prompts: Iterable[Prompt], params: SamplingParams | PoolingParams,
                            rank: int, field: str = "prompt") -> list[QueuedPrompt]:
        """Tokenize and validate every prompt before any reaches the engine (all or nothing), on a
        worker thread: a long prompt must not stall every other request's event loop. The class is
        checked before (no tokenizer spent on a request that would be refused) and again after, with
        no await between that check and the queue entry, so a burst cannot overfill the queue."""
        self.check_class(rank)
        prepared = await self.off_loop(self._tokenized, request_id, list(prompts), params, rank, field)
        self.check_open()
        self.check_class(rank)
        # n sequences each compute the prompt: all of it is work ahead of whoever queues next.
        return [QueuedPrompt(p, self.shedder.enter(rank, len(p.prompt_token_ids) * _copies(p.params)))
                for p in prepared]

    def _tokenized(self, request_id: str, prompts: list[Prompt], params: SamplingParams | PoolingParams,
                   rank: int, field: str) -> list[PreparedRequest]:
        """`field`: the body's name for the prompts, which a prompt's error names."""
        prepared = []
        for index, prompt in enumerate(prompts):
            try:
                prepared.append(self.engine.prepare(f"{request_id}-{index}", prompt, params, rank))
            except ValueError as exc:
                raise bad_request(str(exc), getattr(exc, "param", field)) from None  # InvalidParameter names it
        return prepared

    async def off_loop(self, function: Callable[..., T], *args: Any) -> T:
        """Run CPU work (tokenizing, rendering a chat template) on the server's worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self._workers, functools.partial(function, *args))

    def check_class(self, rank: int) -> None:
        """Refuse with 429 (and count it) when class `rank` should be shed now."""
        try:
            self.shedder.check(rank)
        except Shed as shed:
            self.metrics.record_shed(self.shedder.classes[rank], shed.reason)
            raise

    def cache_use(self, endpoint: str, body: Any, params: SamplingParams | PoolingParams, prompts: list[Any],
                  ctx: RequestContext) -> CacheUse:
        if self.responses is None:
            return NO_CACHE
        return self.responses.use(endpoint, body, params, prompts, ctx.api_key, ctx.cache_control)

    async def cached_reply(self, use: CacheUse, request_id: str, created: int, log: RequestLog) -> Response | None:
        """The stored response for this request, replayed with a fresh id; None on a miss."""
        entry = await self.responses.lookup(use) if self.responses is not None else None
        if entry is None:
            return None
        headers = use.headers(hit=True)
        if is_stream_entry(entry):
            return StreamingResponse(sse_events(replay_chunks(entry, request_id, created), log),
                                     media_type="text/event-stream", headers=headers)
        body = replay_body(entry, request_id, created)
        log.status = "200 cached"
        log.emit()
        return JSONResponse(body, headers=headers)

    async def reply(self, use: CacheUse, body: dict[str, Any]) -> JSONResponse:
        if self.responses is not None:
            await self.responses.store_body(use, body)
        return JSONResponse(body, headers=use.headers() if self.responses is not None else None)

    def reply_stream(self, use: CacheUse, events: AsyncIterator[dict[str, Any]], log: RequestLog) -> StreamingResponse:
        headers = None
        if self.responses is not None:
            events = self.responses.recorded(use, events)
            headers = use.headers()
        return StreamingResponse(sse_events(events, log), media_type="text/event-stream", headers=headers)

    def streams(self, queued: list[QueuedPrompt], received: float) -> AsyncIterator[tuple[int, RequestOutput]]:
        self.check_open()  # cut off between prepare() and the stream's start
        return merge([tracked_stream(self.engine, q, self.metrics, received, self.in_flight) for q in queued])

    async def final_outputs(self, prepared: list[QueuedPrompt], ctx: RequestContext,
                            log: RequestLog) -> list[RequestOutput]:
        """Runs every prompt to the end; an engine failure of any becomes a 500 (and its log line).
        A client that hangs up meanwhile has its engine requests aborted, and gets logged as such."""
        finals: list[RequestOutput | None] = [None] * len(prepared)

        async def collect() -> None:
            async for index, output in self.streams(prepared, ctx.received):
                finals[index] = output

        try:
            if not await unless_disconnected(collect(), ctx.receive):
                log.status = "disconnected"
                raise client_gone()
            for output in finals:
                raise_if_failed(output)
        except Exception as exc:
            if log.status != "disconnected":
                log.status = getattr(exc, "status", 500)
            for output in finals:  # what was generated before the failure, cut-off or hang-up
                if output is not None:
                    log.count(output)
            log.emit()
            raise
        return finals  # type: ignore[return-value]

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False) if self.tokenizer else str(token_id)

    def decode(self, token_ids: list[int]) -> str:
        """Token ids as text, special tokens kept (a model without a tokenizer has no text: "")."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=False) if self.tokenizer else ""


def _copies(params: SamplingParams | PoolingParams) -> int:
    """How many sequences compute the prompt: n for generation, one for pooling."""
    return getattr(params, "n", 1)


def shutting_down() -> APIError:
    return APIError(503, "the request was cut off: the server is shutting down", code="server_shutting_down")


def client_gone() -> APIError:
    """Raised for a client that has hung up: nobody reads the response, but the route must end."""
    return APIError(499, "the client disconnected", code="client_disconnected")


def raise_if_failed(output: RequestOutput | None) -> None:
    if output is None or not output.finished:
        raise shutting_down()
    if output.error:
        raise APIError(500, f"the request failed inside the engine: {output.error}", code="engine_error")
    # Only cut_off() aborts a request whose caller still listens; a departed caller's own abort is never seen.
    if any(o.finish_reason == "abort" for o in output.outputs):
        raise shutting_down()


def stream_error(output: RequestOutput) -> dict[str, Any] | None:
    """The SSE error event for a stream whose engine request failed, or None if it did not."""
    try:
        raise_if_failed(output)
    except APIError as exc:
        return exc.body()
    return None


def unseen_outputs(output: RequestOutput, ended: set[tuple[int, int]], prompt_index: int = 0) -> list[CompletionOutput]:
    """The choices with news for the client this step: new text or tokens, or a finish not yet sent.
    `ended` remembers (prompt, choice) pairs whose finish was sent, as finished siblings of a
    running request keep appearing in later outputs."""
    fresh = []
    for out in output.outputs:
        key = (prompt_index, out.index)
        if key in ended or not (out.delta_text or out.delta_token_ids or out.finished):
            continue
        if out.finished:
            ended.add(key)
        fresh.append(out)
    return fresh


def delta_logprobs(out: CompletionOutput) -> list[TokenLogprobs] | None:
    """Logprobs of this step's new tokens (`out.logprobs` is cumulative)."""
    if out.logprobs is None:
        return None
    return out.logprobs[len(out.logprobs) - len(out.delta_token_ids):]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def finish_reason(reason: str | None) -> str | None:
    return reason if reason in (None, "stop", "length") else "stop"


async def sse_events(events: AsyncIterator[dict[str, Any]], log: RequestLog) -> AsyncIterator[str]:
    """Frames chunks as SSE and ends with [DONE]; logs the request however the stream ends."""
    log.status = "disconnected"
    try:
        async for event in events:
            if "error" in event:
                log.status = event["error"].get("code") or "error"
            yield sse(event)
        yield SSE_DONE
        if log.status == "disconnected":
            log.status = 200
    except APIError as exc:
        log.status = exc.status
        yield sse(exc.body())
        yield SSE_DONE
    except Exception:  # headers are sent: the error can only travel in the stream
        logger.exception("stream %s failed", log.request_id)
        log.status = 500
        yield sse(error_body(500, "internal server error"))
        yield SSE_DONE
    finally:
        log.emit()
