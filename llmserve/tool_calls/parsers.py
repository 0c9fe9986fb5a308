"""Choosing a parser (by name, or from the markers in a chat template) and parsing a whole text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmserve.tool_calls.calls import ContentPiece, ParsedCall, ToolCall, new_call_id
from llmserve.tool_calls.hermes import HermesParser
from llmserve.tool_calls.llama3 import Llama3Parser

PARSER_NAMES = ("hermes", "llama3")


class ToolCallParser(Protocol):
    name: str
    markers: tuple[str, ...]
    trigger: str  # what every call written in this format starts with

    def call_tag(self, function: str) -> tuple[str, str]: ...

    def advance(self, text: str, pos: int, final: bool) -> tuple[list[ContentPiece | ParsedCall], int]: ...


def get_parser(name: str) -> ToolCallParser:
    if name == "hermes":
        return HermesParser()
    if name == "llama3":
        return Llama3Parser()
    raise ValueError(f"unknown tool call parser {name!r}; choose one of: {', '.join(PARSER_NAMES)}")


def parser_for_template(template: str | None) -> ToolCallParser | None:
    """The format a chat template teaches its model, told by the markers it writes; None when it
    shows no tool calls at all (such a template cannot have taught the model to call)."""
    if not template:
        return None
    if "<tool_call>" in template:
        return HermesParser()
    if "<|python_tag|>" in template or ("<|start_header_id|>" in template and "tools" in template):
        return Llama3Parser()
    return None


@dataclass(frozen=True)
class ParsedMessage:
    content: str | None  # the text outside the calls; None when there is none
    tool_calls: list[ToolCall]


def parse_tool_calls(parser: ToolCallParser, text: str, parallel: bool = True) -> ParsedMessage:
    """A whole generated text as a message. Text that only looks like a call (bad JSON, no name)
    stays in the content. `parallel=False` keeps the first call only."""
    found, _ = parser.advance(text, 0, final=True)
    calls = [ToolCall(new_call_id(), p.name, p.arguments) for p in found if isinstance(p, ParsedCall)]
    content = "".join(p.text for p in found if isinstance(p, ContentPiece))
    if calls:
        content = content.strip()
    return ParsedMessage(content or None, calls if parallel else calls[:1])
