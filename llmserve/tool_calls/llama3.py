"""Llama 3's JSON format: the message is the call, `{"name": ..., "parameters": {...}}`, possibly
after `<|python_tag|>` (kept only when special tokens are not skipped), several joined by `;`."""

from __future__ import annotations

import json

from llmserve.tool_calls.calls import ContentPiece, ParsedCall, call_from_object
from llmserve.tool_calls.text import held_back

PYTHON_TAG = "<|python_tag|>"


class Llama3Parser:
    name = "llama3"
    markers = (PYTHON_TAG,)
    trigger = '{"name": '

    def call_tag(self, function: str) -> tuple[str, str]:
        """What a call of `function` is written between, around its arguments."""
        return f'{{"name": {json.dumps(function, ensure_ascii=False)}, "parameters": ', "}"

    def advance(self, text: str, pos: int, final: bool) -> tuple[list[ContentPiece | ParsedCall], int]:
        """As HermesParser.advance. Calls are the whole message, or all that follows `<|python_tag|>`:
        that region waits for the end of the text, then is calls if every part parses, else content."""
        start = _calls_start(text, pos)
        if start is None:
            if not final and text[pos:].strip() == "":
                return [], pos  # a message that opens with whitespace may still be a call
            end = len(text) if final else len(text) - held_back(text[pos:], self.markers)
            return ([ContentPiece(text[pos:end])] if end > pos else []), max(pos, end)
        found: list[ContentPiece | ParsedCall] = [ContentPiece(text[pos:start])] if start > pos else []
        if not final:
            return found, start
        calls = _calls(text[start:])
        found.extend(calls if calls else [ContentPiece(text[start:])])
        return found, len(text)


def _calls_start(text: str, pos: int) -> int | None:
    tag = text.find(PYTHON_TAG, pos)
    if tag >= 0:
        return tag
    stripped = text.lstrip()
    if pos <= len(text) - len(stripped) and stripped.startswith("{"):
        return pos
    return None


def _calls(region: str) -> list[ParsedCall]:
    """Every call in the region, or [] when any part of it is not one."""
    region = region.removeprefix(PYTHON_TAG)
    decoder = json.JSONDecoder()
    calls: list[ParsedCall] = []
    pos = 0
    while True:
        while pos < len(region) and (region[pos].isspace() or region[pos] == ";"):
            pos += 1
        if pos == len(region):
            return calls
        try:
            value, pos = decoder.raw_decode(region, pos)
        except json.JSONDecodeError:
            return []
        call = call_from_object(value, ("parameters", "arguments"))
        if call is None:
            return []
        calls.append(call)
