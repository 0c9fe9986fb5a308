"""POST /v1/chat/completions: messages rendered with the model's chat template, n choices."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import jinja2
from fastapi.responses import Response

from llmserve.server.chat_tools import (
    CallStream,
    call_stream,
    finish_with_calls,
    tool_deltas,
    tool_message,
    tool_parser_for,
    with_strict_tools,
)
from llmserve.server.errors import bad_request
from llmserve.server.prompt_logprobs import prompt_entries, vllm_prompt_logprobs
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
from llmserve.tool_calls import ToolCallParser

if TYPE_CHECKING:
    from llmserve.engine.outputs import CompletionOutput, TokenLogprobs


def render_prompt(serving: Serving, body: ChatCompletionRequest) -> dict[str, Any]:
    tokenizer = serving.tokenizer
    if tokenizer is None:
        raise bad_request("this model has no tokenizer, so it cannot chat; use /v1/completions with token ids")
    messages = [m.as_template_message() for m in body.messages]
    try:
        return tokenizer.render_chat(messages, add_generation_prompt=body.add_generation_prompt,
                                     tools=body.template_tools(), chat_template=serving.chat.chat_template)
    except (ValueError, jinja2.TemplateError) as exc:  # e.g. the template's own raise_exception
        raise bad_request(f"the chat template rejected these messages: {exc}", "messages") from None


async def create_chat_completion(serving: Serving, body: ChatCompletionRequest, ctx: RequestContext) -> Response:
    serving.check_model(body.model)
    parser = tool_parser_for(body, serving.tool_parser)
    params = with_strict_tools(body, parser, body.params)
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
        events = _stream(serving, shape, prepared, ctx.received, body, log, parser)
        return serving.reply_stream(cache, events, log)
    (final,) = await serving.final_outputs(prepared, ctx, log)
    choices = [_choice(shape, out, body, parser) for out in final.outputs]
    log.count(final)
    log.emit()
    reply = {**shape.header("chat.completion"), "choices": choices, "usage": log.usage()}
    if body.prompt_logprobs is not None:  # vLLM's place for them: the response's, as chat has one prompt
        reply["prompt_logprobs"] = vllm_prompt_logprobs(prompt_entries(final), serving.token_text)
    return await serving.reply(cache, reply)


def _choice(shape: _Shape, out: CompletionOutput, body: ChatCompletionRequest,
            parser: ToolCallParser | None) -> dict[str, Any]:
    message = tool_message(body, parser, out.text)
    reason = finish_with_calls(body, finish_reason(out.finish_reason), "tool_calls" in message)
    return {"index": out.index, "message": message, "logprobs": shape.logprobs(out.logprobs), "finish_reason": reason}


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

    def tool_deltas(self, out: CompletionOutput, stream: CallStream,
                    body: ChatCompletionRequest) -> list[dict[str, Any]]:
        """A choice's entries, one chunk each: logprobs ride on the first, the finish on the last."""
        deltas = tool_deltas(out, stream)
        reason = finish_with_calls(body, finish_reason(out.finish_reason), stream.called) if out.finished else None
        return [{"index": out.index, "delta": delta, "logprobs": self.logprobs(delta_logprobs(out)) if i == 0 else None,
                 "finish_reason": reason if i == len(deltas) - 1 else None} for i, delta in enumerate(deltas)]


async def _stream(serving: Serving, shape: _Shape, prepared: list, received: float, body: ChatCompletionRequest,
                  log: RequestLog, parser: ToolCallParser | None) -> AsyncIterator[dict[str, Any]]:
    # The role comes first, as OpenAI sends it, before any token is generated.
    # A forced call has no content (null, as OpenAI sends it); otherwise content may follow.
    role = {"role": "assistant", "content": None if body.forces_a_call else ""}
    yield {**shape.header(), "choices": [{"index": i, "delta": role,
                                          "logprobs": None, "finish_reason": None} for i in range(body.n)]}
    calls = {i: stream for i in range(body.n) if (stream := call_stream(body, parser)) is not None}
    ended: set[tuple[int, int]] = set()
    async for _, output in serving.streams(prepared, received):
        if output.finished and (error := stream_error(output)) is not None:
            log.count(output)
            yield error
            return
        fresh = unseen_outputs(output, ended)
        if output.finished:
            log.count(output)
        for choices in _rounds(shape, fresh, calls, body):
            if choices:
                yield {**shape.header(), "choices": choices}
    if body.include_usage:
        yield {**shape.header(), "choices": [], "usage": log.usage()}


def _rounds(shape: _Shape, fresh: list[CompletionOutput], calls: dict[int, CallStream],
            body: ChatCompletionRequest) -> list[list[dict]]:
    """The chunks' choices for this step: all choices in one chunk, unless tool calls are parsed."""
    if not calls:
        return [[shape.delta(out, out.finished) for out in fresh]]
    return [[entry] for out in fresh for entry in shape.tool_deltas(out, calls[out.index], body)]
