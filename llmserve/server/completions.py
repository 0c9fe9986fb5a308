"""POST /v1/completions: one choice per (prompt, n) pair, streamed as SSE or returned whole."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response

from llmserve.server.errors import bad_request
from llmserve.server.protocol import CompletionRequest
from llmserve.server.serving import (
    RequestContext,
    RequestLog,
    Serving,
    delta_logprobs,
    finish_reason,
    new_id,
    stream_error,
    unseen_outputs,
)

if TYPE_CHECKING:
    from llmserve.engine.outputs import CompletionOutput, TokenLogprobs
    from llmserve.server.streams import QueuedPrompt


async def create_completion(serving: Serving, body: CompletionRequest, ctx: RequestContext) -> Response:
    serving.check_model(body.model)
    if body.echo:
        raise bad_request("echo is not supported", "echo")
    params = body.params
    request_id, created = new_id("cmpl"), int(time.time())
    log = RequestLog(request_id, ctx.received)
    cache = serving.cache_use("completions", body, params, body.prompts(), ctx)
    if (cached := await serving.cached_reply(cache, request_id, created, log)) is not None:
        return cached
    prompts = [{"prompt_token_ids": p} if isinstance(p, list) else p for p in body.prompts()]
    prepared = await serving.queue_prompts(request_id, prompts, params, ctx.rank)
    log.prompt_tokens = sum(len(q.prepared.prompt_token_ids) for q in prepared)
    placed = await serving.place(prepared)
    shape = _Shape(serving, request_id, created, body.n)
    if body.stream:
        return serving.reply_stream(cache, _stream(serving, shape, prepared, ctx.received, body.include_usage, log),
                                    log, placed)
    finals = await serving.final_outputs(prepared, ctx, log)
    choices = [shape.choice(i, out, out.text, out.logprobs) for i, final in enumerate(finals) for out in final.outputs]
    for final in finals:
        log.count(final)
    log.emit()
    return await serving.reply(cache, {**shape.header(), "choices": choices, "usage": log.usage()}, placed)


class _Shape:
    """Builds response objects for one request."""

    def __init__(self, serving: Serving, request_id: str, created: int, n: int) -> None:
        self.serving = serving
        self.request_id = request_id
        self.created = created
        self.n = n

    def header(self) -> dict[str, Any]:
        return {"id": self.request_id, "object": "text_completion", "created": self.created,
                "model": self.serving.model_name}

    def choice(self, prompt_index: int, out: CompletionOutput, text: str,
               logprobs: list[TokenLogprobs] | None, final: bool = True) -> dict[str, Any]:
        return {"index": prompt_index * self.n + out.index, "text": text,
                "logprobs": None if logprobs is None else self.logprobs(logprobs),
                "finish_reason": finish_reason(out.finish_reason) if final else None}

    def logprobs(self, entries: list[TokenLogprobs]) -> dict[str, Any]:
        text = self.serving.token_text
        tokens = [text(e.token_id) for e in entries]
        offsets, offset = [], 0
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}


async def _stream(serving: Serving, shape: _Shape, prepared: list[QueuedPrompt], received: float,
                  include_usage: bool, log: RequestLog) -> AsyncIterator[dict[str, Any]]:
    ended: set[tuple[int, int]] = set()  # choices whose finish_reason was sent
    async for index, output in serving.streams(prepared, received):
        error = stream_error(output) if output.finished else None
        if error is not None:
            log.count(output)
            yield error
            return
        choices = [shape.choice(index, out, out.delta_text, delta_logprobs(out), final=out.finished)
                   for out in unseen_outputs(output, ended, index)]
        if output.finished:
            log.count(output)
        if choices:
            yield {**shape.header(), "choices": choices}
    if include_usage:
        yield {**shape.header(), "choices": [], "usage": log.usage()}
