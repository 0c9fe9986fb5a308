"""Tool calls in generated text: parsed out (Hermes/Qwen `<tool_call>` JSON, Llama 3 JSON), streamed
as OpenAI's deltas, and the JSON schema that forces a call with the reading of an output made under
it. Text in, text out: no tensors, no HTTP."""

from __future__ import annotations

from llmserve.tool_calls.calls import ContentPiece, ParsedCall, ToolCall, new_call_id
from llmserve.tool_calls.forced import ForcedCallStream, parse_forced_output, read_forced_output
from llmserve.tool_calls.parsers import (
    PARSER_NAMES,
    ParsedMessage,
    ToolCallParser,
    get_parser,
    parse_tool_calls,
    parser_for_template,
)
from llmserve.tool_calls.schema import forced_function, forced_tool_call_schema
from llmserve.tool_calls.streaming import ToolCallStream

__all__ = ["PARSER_NAMES", "ContentPiece", "ForcedCallStream", "ParsedCall", "ParsedMessage", "ToolCall",
           "ToolCallParser", "ToolCallStream", "forced_function", "forced_tool_call_schema", "get_parser",
           "new_call_id", "parse_forced_output", "parse_tool_calls", "parser_for_template", "read_forced_output"]
