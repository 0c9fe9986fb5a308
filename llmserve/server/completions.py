"""POST /v1/completions: one choice per (prompt, n) pair, streamed as SSE or returned whole.

With `echo`, each choice's text (and logprobs) start with its prompt, as OpenAI's legacy API and
vLLM give them: a stream sends the prompt in each choice's first chunk. `max_tokens: 0` (echo
only) returns the prompt alone. Token-id prompts echo their decoded text.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response

from llmserve.server.prompt_logprobs import completion_logprobs, prompt_entries, vllm_prompt_logprobs
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
    from llmserve.engine.outputs import CompletionOutput, RequestOutput, TokenLogprobs
    from llmserve.server.streams import QueuedPrompt

Tokens = list[tuple[int, "TokenLogprobs | None"]]


async def create_completion(serving: Serving, body: CompletionRequest, ctx: RequestContext) -> Response:
    serving.check_model(body.model)
    params = body.params
    request_id, created = new_id("cmpl"), int(time.time())
    log = RequestLog(request_id, ctx.received)
    cache = serving.cache_use("completions", body, params, body.prompts(), ctx)
    if (cached := await serving.cached_reply(cache, request_id, created, log)) is not None:
        return cached
    prompts = [{"prompt_token_ids": p} if isinstance(p, list) else p for p in body.prompts()]
    prepared = await serving.queue_prompts(request_id, prompts, params, ctx.rank)
    log.prompt_tokens = sum(len(q.prepared.prompt_token_ids) for q in prepared)
    echoes = await serving.off_loop(_echo_texts, serving, prepared) if body.echo else None
    placed = await serving.place(prepared)
    shape = _Shape(serving, request_id, created, body, echoes)
    if body.stream:
        return serving.reply_stream(cache, _stream(serving, shape, prepared, ctx.received, body.include_usage, log),
                                    log, placed)
    finals = await serving.final_outputs(prepared, ctx, log)
    choices = [shape.choice(i, final, out) for i, final in enumerate(finals) for out in final.outputs]
    for final in finals:
        log.count(final)
    log.emit()
    return await serving.reply(cache, {**shape.header(), "choices": choices, "usage": log.usage()}, placed)


def _echo_texts(serving: Serving, prepared: list[QueuedPrompt]) -> list[str]:
    """Each prompt as echoed: its text as sent, or its token ids decoded (special tokens kept, as
    the echoed logprobs list them)."""
    return [q.prepared.prompt if q.prepared.prompt is not None else serving.decode(q.prepared.prompt_token_ids)
            for q in prepared]


class _Shape:
    """Builds response objects for one request."""

    def __init__(self, serving: Serving, request_id: str, created: int, body: CompletionRequest,
                 echoes: list[str] | None) -> None:
        self.serving = serving
        self.request_id = request_id
        self.created = created
        self.n = body.n
        self.num_logprobs = body.logprobs
        self.with_prompt_logprobs = body.prompt_logprobs is not None
        self.echoes = echoes
        self.streamed: dict[int, int] = {}  # choice index -> characters sent: its next text_offset

    def header(self) -> dict[str, Any]:
        return {"id": self.request_id, "object": "text_completion", "created": self.created,
                "model": self.serving.model_name}

    def choice(self, prompt_index: int, final: RequestOutput, out: CompletionOutput) -> dict[str, Any]:
        """A whole reply's choice."""
        text, tokens = out.text, _tokens(out.logprobs)
        if self.echoes is not None:
            text, tokens = self.echoes[prompt_index] + text, self._prompt_tokens(final) + tokens
        choice = self._entry(prompt_index * self.n + out.index, text, tokens, out.finish_reason)
        if self.with_prompt_logprobs:
            choice["prompt_logprobs"] = vllm_prompt_logprobs(prompt_entries(final), self.serving.token_text)
        return choice

    def chunk_choice(self, prompt_index: int, output: RequestOutput, out: CompletionOutput) -> dict[str, Any]:
        """A stream chunk's choice: this step's news, after the prompt when the choice echoes and starts."""
        index = prompt_index * self.n + out.index
        text, tokens = out.delta_text, _tokens(delta_logprobs(out))
        offset = self.streamed.get(index)
        if offset is None and self.echoes is not None:
            text, tokens = self.echoes[prompt_index] + text, self._prompt_tokens(output) + tokens
        offset = offset or 0
        self.streamed[index] = offset + len(text)
        return self._entry(index, text, tokens, out.finish_reason, offset)

    def _entry(self, index: int, text: str, tokens: Tokens, reason: str | None, offset: int = 0) -> dict[str, Any]:
        logprobs = None
        if self.num_logprobs is not None:
            logprobs = completion_logprobs(tokens, self.num_logprobs, self.serving.token_text, offset)
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(reason)}

    def _prompt_tokens(self, output: RequestOutput) -> Tokens:
        if self.num_logprobs is None:
            return []
        return list(zip(output.prompt_token_ids, prompt_entries(output), strict=True))


def _tokens(entries: list[TokenLogprobs] | None) -> Tokens:
    return [(e.token_id, e) for e in entries or ()]



async def _stream(serving: Serving, shape: _Shape, prepared: list[QueuedPrompt], received: float,
                  include_usage: bool, log: RequestLog) -> AsyncIterator[dict[str, Any]]:
    ended: set[tuple[int, int]] = set()  # choices whose finish_reason was sent
    async for index, output in serving.streams(prepared, received):
        error = stream_error(output) if output.finished else None
        if error is not None:
            log.count(output)
            yield error
            return
        choices = [shape.chunk_choice(index, output, out) for out in unseen_outputs(output, ended, index)]
        if output.finished:
            log.count(output)
        if choices:
            yield {**shape.header(), "choices": choices}
    if include_usage:
        yield {**shape.header(), "choices": [], "usage": log.usage()}
