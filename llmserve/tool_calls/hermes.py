"""Hermes/Qwen format: each call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
anywhere in the text, as many as the model writes."""

from __future__ import annotations

import json

from llmserve.tool_calls.calls import ContentPiece, ParsedCall, call_from_object
from llmserve.tool_calls.text import held_back

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesParser:
    name = "hermes"
    markers = (OPEN,)
    trigger = OPEN

    def call_tag(self, function: str) -> tuple[str, str]:
        """What a call of `function` is written between, around its arguments (as the template shows it)."""
        return f'{OPEN}\n{{"name": {json.dumps(function, ensure_ascii=False)}, "arguments": ', f"}}\n{CLOSE}"

    def advance(self, text: str, pos: int, final: bool) -> tuple[list[ContentPiece | ParsedCall], int]:
        """What text[pos:] settles: content that cannot be part of a call, and every call whose closing
        tag arrived (or, at the end, whose body stands without one). Returns them and the new position;
        the rest waits for more text. A body that is not a call's JSON stays content, tags and all."""
        found: list[ContentPiece | ParsedCall] = []
        while pos < len(text):
            start = text.find(OPEN, pos)
            if start < 0:
                end = len(text) if final else len(text) - held_back(text[pos:], self.markers)
                if end > pos:
                    found.append(ContentPiece(text[pos:end]))
                return found, max(pos, end)
            if start > pos:
                found.append(ContentPiece(text[pos:start]))
            close = text.find(CLOSE, start)
            if close < 0 and not final:
                return found, start
            end = len(text) if close < 0 else close + len(CLOSE)
            body = text[start + len(OPEN):close if close >= 0 else len(text)]
            found.append(_call(body) or ContentPiece(text[start:end]))
            pos = end
        return found, pos


def _call(body: str) -> ParsedCall | None:
    try:
        return call_from_object(json.loads(body))
    except json.JSONDecodeError:
        return None
