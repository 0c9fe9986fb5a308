"""Strict tools under `tool_choice` "auto": the model still chooses between answering and calling,
but once it starts a call (the parser's trigger, `<tool_call>` for Hermes) the rest of the call is
held to the format and to the function's `parameters`. An xgrammar structural tag says this: free
text, and after a trigger one of the tags, `begin` + arguments + `end`.

OpenAI's `strict: true` promises arguments that match the schema; the other tools in the same
request get a tag too (the trigger must lead somewhere), whose arguments may be any JSON object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmserve.tool_calls.parsers import ToolCallParser

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def has_strict_tools(tools: Sequence[Mapping[str, Any]]) -> bool:
    return any(t["function"].get("strict") is True for t in tools)


def strict_call_tag(tools: Sequence[Mapping[str, Any]], parser: ToolCallParser, parallel: bool) -> dict[str, Any]:
    """The structural tag for these tools in the parser's format; `parallel=False` ends the output
    after the first call."""
    tags = []
    for tool in tools:
        function = tool["function"]
        begin, end = parser.call_tag(function["name"])
        schema = (function.get("parameters") or _ANY_OBJECT) if function.get("strict") is True else _ANY_OBJECT
        tags.append({"type": "tag", "begin": begin, "content": {"type": "json_schema", "json_schema": schema},
                     "end": end})
    return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [parser.trigger],
                                                 "tags": tags, "at_least_one": False,
                                                 "stop_after_first": not parallel}}
