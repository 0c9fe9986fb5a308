"""A choice's text as it streams, turned into OpenAI's deltas: content until a call starts, then
each call as a `tool_calls` delta with its index, the first carrying id, type and name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmserve.tool_calls.calls import ParsedCall, new_call_id
from llmserve.tool_calls.parsers import ToolCallParser


@dataclass
class ToolCallStream:
    """Fed the cumulative text at each step; hands back the deltas it settles. Text that may be the
    start of a call's marker is held back until the next step tells. A call is sent once it is
    complete (its arguments in one delta after the one naming it), so a body that turns out not to
    parse can still go out as plain content."""

    parser: ToolCallParser
    parallel: bool = True
    pos: int = 0
    calls: int = 0

    def feed(self, text: str, final: bool) -> list[dict[str, Any]]:
        found, self.pos = self.parser.advance(text, self.pos, final)
        deltas: list[dict[str, Any]] = []
        for piece in found:
            if isinstance(piece, ParsedCall):
                deltas.extend(self._call(piece))
            elif piece.text and not (self.calls and piece.text.isspace()):  # no blank lines between calls
                deltas.append({"content": piece.text})
        return deltas

    def _call(self, call: ParsedCall) -> list[dict[str, Any]]:
        if self.calls and not self.parallel:
            return []
        index = self.calls
        self.calls += 1
        head = {"index": index, "id": new_call_id(), "type": "function",
                "function": {"name": call.name, "arguments": ""}}
        return [{"tool_calls": [head]}, {"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}]

    @property
    def called(self) -> bool:
        return self.calls > 0
