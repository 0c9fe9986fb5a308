"""Tool calling on /v1/chat/completions: which parser a server uses, and a choice's message and
stream deltas with the calls parsed out of its text (llmserve.tool_calls does the parsing).

Under `tool_choice` "auto" the parser finds calls in free text; under "required" or a named function
the output was generated under the forced-call JSON schema, and is read as calls whatever the parser."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llmserve.guided import GuidedDecoding
from llmserve.server.errors import bad_request
from llmserve.tool_calls import (
    ForcedCallStream,
    ToolCallParser,
    ToolCallStream,
    get_parser,
    parse_tool_calls,
    parser_for_template,
    read_forced_output,
)
from llmserve.tool_calls.strict import has_strict_tools, strict_call_tag

if TYPE_CHECKING:
    from llmserve.engine.outputs import CompletionOutput
    from llmserve.sampling_params import SamplingParams
    from llmserve.server.protocol import ChatCompletionRequest


@dataclass(frozen=True)
class ChatSetup:
    """What `serve` says about chat beyond the model: `--chat-template` (its text) and `--tool-call-parser`."""

    chat_template: str | None = None
    tool_call_parser: str | None = None

    def parser(self, model_template: str | None) -> ToolCallParser | None:
        """The named parser, else the one the template in use shows its model; None: no tool calling."""
        if self.tool_call_parser:
            return get_parser(self.tool_call_parser)
        return parser_for_template(self.chat_template or model_template)


def tool_parser_for(body: ChatCompletionRequest, parser: ToolCallParser | None) -> ToolCallParser | None:
    """The parser this request's output goes through; None when calls are not looked for. Tools this
    server could not parse calls for are refused rather than silently ignored."""
    if body.template_tools() is None:
        return None
    if parser is None:
        raise bad_request("this model's chat template has no tool calling: start the server with a tool-capable "
                          "--chat-template (llmserve ships smollm2_tools) or name a --tool-call-parser", "tools")
    return parser


def with_strict_tools(body: ChatCompletionRequest, parser: ToolCallParser | None,
                      params: SamplingParams) -> SamplingParams:
    """Under "auto", tools with `strict: true` hold the calls the model writes to their schemas (a
    structural tag in the parser's format); the request's sampling is otherwise unchanged."""
    tools = body.template_tools()
    if parser is None or body.effective_tool_choice != "auto" or not tools or not has_strict_tools(tools):
        return params
    if params.guided is not None:
        raise bad_request("strict tools constrain the calls the model writes, so they cannot be combined with "
                          f"{params.guided.param or 'another constraint'}", "tools")
    tag = strict_call_tag(tools, parser, body.parallel_tool_calls)
    return replace(params, guided=GuidedDecoding(structural_tag=json.dumps(tag, ensure_ascii=False), param="tools"))


CallStream = ToolCallStream | ForcedCallStream


def call_stream(body: ChatCompletionRequest, parser: ToolCallParser | None) -> CallStream | None:
    """What turns a choice's streamed text into deltas; None: plain content."""
    if body.forces_a_call:
        return ForcedCallStream(body.forced_function)
    return None if parser is None else ToolCallStream(parser, body.parallel_tool_calls)


def finish_with_calls(body: ChatCompletionRequest, reason: str | None, called: bool) -> str | None:
    """"tool_calls" when the model stopped after calling, except under a named tool_choice, where
    OpenAI answers "stop" (the caller asked for that call: nothing was the model's choice)."""
    called = called and body.forced_function is None
    return "tool_calls" if called and reason == "stop" else reason


def tool_message(body: ChatCompletionRequest, parser: ToolCallParser | None, text: str) -> dict[str, Any]:
    """The assistant message of a whole reply: its content outside the calls, and the calls."""
    if body.forces_a_call:
        parsed = read_forced_output(text, body.forced_function)
    elif parser is not None:
        parsed = parse_tool_calls(parser, text, body.parallel_tool_calls)
    else:
        return {"role": "assistant", "content": text}
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if parsed.tool_calls:
        message["tool_calls"] = [call.as_openai() for call in parsed.tool_calls]
    return message


def tool_deltas(out: CompletionOutput, stream: CallStream) -> list[dict[str, Any]]:
    """The deltas a choice's new text settles this step, each for a chunk of its own: a step may settle
    content, a call's name and its arguments at once, and a chunk carries one delta per choice."""
    deltas = stream.feed(out.text, out.finished)
    if not deltas and (out.finished or out.delta_token_ids):
        deltas = [{}]  # the finish, or the logprobs of tokens held back, still go out
    return deltas
