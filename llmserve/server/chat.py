"""POST /v1/chat/completions: messages rendered with the model's chat template, n choices."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import jinja2
from fastapi.responses import Response

from llmserve.server.errors import bad_request
from llmserve.server.protocol import ChatCompletionRequest
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


def render_prompt(serving: Serving, body: ChatCompletionRequest) -> dict[str, Any]:
    tokenizer = serving.tokenizer
    if tokenizer is None:
        raise bad_request("this model has no tokenizer, so it cannot chat; use /v1/completions with token ids")
    messages = [m.as_template_message() for m in body.messages]
    try:
        return tokenizer.render_chat(messages, add_generation_prompt=body.add_generation_prompt)
    except (ValueError, jinja2.TemplateError) as exc:  # e.g. the template's own raise_exception
        raise bad_request(f"the chat template rejected these messages: {exc}", "messages") from None


async def create_chat_completion(serving: Serving, body: ChatCompletionRequest, ctx: RequestContext) -> Response:
    serving.check_model(body.model)
    params = body.params
    request_id, created = new_id("chatcmpl"), int(time.time())
    log = RequestLog(request_id, ctx.received)
    prompt = await serving.off_loop(render_prompt, serving, body)  # a template over long messages takes a while
    cache = serving.cache_use("chat/completions", body, params, [prompt["prompt"]], ctx)
    if (cached := await serving.cached_reply(cache, request_id, created, log)) is not None:
        return cached
    prepared = await serving.queue_prompts(request_id, [prompt], params, ctx.rank)
    log.prompt_tokens = len(prepared[0].prepared.prompt_token_ids)
    shape = _Shape(serving, request_id, created)
    if body.stream:
        return serving.reply_stream(cache, _stream(serving, shape, prepared, ctx.received, body, log), log)
    (final,) = await serving.final_outputs(prepared, ctx, log)
    choices = [{"index": out.index, "message": {"role": "assistant", "content": out.text},
                "logprobs": shape.logprobs(out.logprobs), "finish_reason": finish_reason(out.finish_reason)}
               for out in final.outputs]
    log.count(final)
    log.emit()
    return await serving.reply(cache, {**shape.header("chat.completion"), "choices": choices, "usage": log.usage()})


class _Shape:
    def __init__(self, serving: Serving, request_id: str, created: int) -> None:
        self.serving = serving
        self.request_id = request_id
        self.created = created

    def header(self, kind: str = "chat.completion.chunk") -> dict[str, Any]:
        return {"id": self.request_id, "object": kind, "created": self.created, "model": self.serving.model_name}

    def logprobs(self, entries: list[TokenLogprobs] | None) -> dict[str, Any] | None:
        if entries is None:
            return None
        return {"content": [{**self._token(e.token_id, e.logprob),
                             "top_logprobs": [self._token(t, lp) for t, lp in e.top]} for e in entries]}

    def _token(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.serving.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def delta(self, out: CompletionOutput, final: bool) -> dict[str, Any]:
        return {"index": out.index, "delta": {"content": out.delta_text} if out.delta_text else {},
                "logprobs": self.logprobs(delta_logprobs(out)),
                "finish_reason": finish_reason(out.finish_reason) if final else None}


async def _stream(serving: Serving, shape: _Shape, prepared: list, received: float, body: ChatCompletionRequest,
                  log: RequestLog) -> AsyncIterator[dict[str, Any]]:
    # The role comes first, as OpenAI sends it, before any token is generated.
    yield {**shape.header(), "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None} for i in range(body.n)]}
    ended: set[tuple[int, int]] = set()
    async for _, output in serving.streams(prepared, received):
        if output.finished and (error := stream_error(output)) is not None:
            log.count(output)
            yield error
            return
        choices = [shape.delta(out, out.finished) for out in unseen_outputs(output, ended)]
        if output.finished:
            log.count(output)
        if choices:
            yield {**shape.header(), "choices": choices}
    if body.include_usage:
        yield {**shape.header(), "choices": [], "usage": log.usage()}
