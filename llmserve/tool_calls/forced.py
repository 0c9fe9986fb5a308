"""An output generated under forced_tool_call_schema, read back into calls as it streams.

Under "required" the output is `[{"name": "f", "parameters": {...}}, ...]`; under a named function it
is that function's arguments. Each call goes out as OpenAI streams one: a first delta with its index,
id, type, name and empty arguments, then its arguments as they are generated, piece by piece. The
arguments are the model's own JSON text, sliced out of the array, so the deltas concatenated equal the
whole reply's `arguments` exactly; a whole reply is read by the same code (read_forced_output).

A character scanner tracks just enough JSON (nesting, strings, the keys of each call object) to find
where a name ends and where arguments begin and end. It tolerates whitespace and key order, and an
output cut short (max_tokens) gives the calls as far as they got.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmserve.tool_calls.calls import ParsedCall, ToolCall, new_call_id
from llmserve.tool_calls.parsers import ParsedMessage

_CALL_DEPTH = 2  # inside `[{` : the keys of one call object


@dataclass
class _Call:
    """One item of the array as far as it has been read; positions index the cumulative text."""

    name: str | None = None
    args_start: int | None = None
    args_end: int | None = None
    sent_to: int = 0  # the arguments went out up to here
    index: int | None = None  # set once its first delta went out


@dataclass
class _Scanner:
    """JSON structure, one character at a time, for an array of call objects."""

    stack: list[str] = field(default_factory=list)
    in_string: bool = False
    escape: bool = False
    string_start: int = 0
    string_is_key: bool = False
    expect: str = "key"  # in a call object: "key", "colon", "value", "in_value"
    key: str | None = None
    calls: list[_Call] = field(default_factory=list)

    def step(self, text: str, i: int) -> _Call | None:
        """Read text[i]; returns the call whose name it completed, if any."""
        c = text[i]
        if self.in_string:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == '"':
                self.in_string = False
                return self._string_done(text, i)
            return None
        if c.isspace():
            return None
        depth = len(self.stack)
        if depth == _CALL_DEPTH and self.expect == "value":
            self.expect = "in_value"
            if self.key == "parameters" and self.calls:
                self.calls[-1].args_start = i
        if c == '"':
            self.in_string, self.string_start = True, i
            self.string_is_key = depth == _CALL_DEPTH and self.expect == "key"
        elif c in "[{":
            if depth == _CALL_DEPTH - 1 and c == "{":
                self.calls.append(_Call())
                self.expect, self.key = "key", None
            self.stack.append(c)
        elif c in "]}":
            if self.stack:
                self.stack.pop()
            self._value_may_end(i, closed=depth == _CALL_DEPTH + 1, delimited=depth == _CALL_DEPTH)
        elif depth == _CALL_DEPTH and c == ":":
            self.expect = "value"
        elif depth == _CALL_DEPTH and c == ",":
            self._value_may_end(i, closed=False, delimited=True)
            self.expect, self.key = "key", None
        return None

    def _string_done(self, text: str, end: int) -> _Call | None:
        if len(self.stack) != _CALL_DEPTH or not self.calls:
            return None
        try:
            value = json.loads(text[self.string_start:end + 1])
        except ValueError:  # not a JSON string (the grammar never writes one): no key, no name
            return None
        if self.string_is_key:
            self.key, self.expect = value, "colon"
        elif self.key == "name" and self.calls[-1].name is None and isinstance(value, str):
            self.calls[-1].name = value
            return self.calls[-1]
        return None

    def _value_may_end(self, i: int, closed: bool, delimited: bool) -> None:
        """Arguments end after the bracket that closes them (`closed`: an object or array), or before
        the `,` or `}` that follows them in the call object (`delimited`: any other value)."""
        call = self.calls[-1] if self.calls else None
        if call is None or call.args_start is None or call.args_end is not None:
            return
        if closed and len(self.stack) == _CALL_DEPTH:
            call.args_end = i + 1
        elif delimited:
            call.args_end = i


@dataclass
class ForcedCallStream:
    """Fed the cumulative text at each step (as ToolCallStream); hands back OpenAI's deltas.
    `function`: the one a named tool_choice forces (the whole output is its arguments); None for
    "required" (the output is an array of calls)."""

    function: str | None = None
    pos: int = 0
    calls: int = 0
    _scanner: _Scanner = field(default_factory=_Scanner)

    def feed(self, text: str, final: bool) -> list[dict[str, Any]]:
        if self.function is not None:
            return self._named(text)
        deltas: list[dict[str, Any]] = []
        for i in range(self.pos, len(text)):
            named = self._scanner.step(text, i)
            if named is not None:
                deltas.extend(self._flush(text))  # the earlier calls' arguments go out before this one
                deltas.append(self._head(named))
        self.pos = len(text)
        deltas.extend(self._flush(text))
        if final and not self.calls and text.strip():
            deltas.append({"content": text})  # cut off before any call was named: the text is all there is
        return deltas

    def _named(self, text: str) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if not self.calls:
            self.calls = 1
            deltas.append(_head_delta(0, self.function or ""))
        if len(text) > self.pos:
            deltas.append(_arguments_delta(0, text[self.pos:]))
            self.pos = len(text)
        return deltas

    def _head(self, call: _Call) -> dict[str, Any]:
        call.index = self.calls
        self.calls += 1
        return _head_delta(call.index, call.name or "")

    def _flush(self, text: str) -> list[dict[str, Any]]:
        """Every named call's arguments read so far and not yet sent."""
        deltas = []
        for call in self._scanner.calls:
            if call.index is None or call.args_start is None:
                continue
            start, end = max(call.sent_to, call.args_start), len(text) if call.args_end is None else call.args_end
            if end > start:
                call.sent_to = end
                deltas.append(_arguments_delta(call.index, text[start:end]))
        return deltas

    @property
    def called(self) -> bool:
        return self.calls > 0


def _head_delta(index: int, name: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "id": new_call_id(), "type": "function",
                            "function": {"name": name, "arguments": ""}}]}


def _arguments_delta(index: int, text: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": text}}]}


def read_forced_output(text: str, function: str | None = None) -> ParsedMessage:
    """A whole output as a message: the calls as far as they were generated (arguments possibly
    incomplete when cut off), the way a stream of the same text would have sent them."""
    content, calls = "", {}
    for delta in ForcedCallStream(function).feed(text, final=True):
        content += delta.get("content", "")
        for part in delta.get("tool_calls", ()):
            if "id" in part:
                calls[part["index"]] = [part["id"], part["function"]["name"], ""]
            calls[part["index"]][2] += part["function"]["arguments"]
    return ParsedMessage(content or None, [ToolCall(*call) for call in calls.values()])


def parse_forced_output(text: str, function: str | None = None) -> list[ParsedCall]:
    """The calls of a complete output generated under forced_tool_call_schema; ValueError if it is not
    one (cut short, or not the shape the schema forces)."""
    value = json.loads(text)
    if function is None:
        if not isinstance(value, list) or not value or not all(_is_call(item) for item in value):
            raise ValueError('a forced tool call output must be a non-empty JSON array of '
                             '{"name": ..., "parameters": {...}}')
    elif not isinstance(value, dict):
        raise ValueError("a named tool call's output must be a JSON object of its arguments")
    message = read_forced_output(text, function)
    return [ParsedCall(call.name, call.arguments) for call in message.tool_calls]


def _is_call(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("parameters"), dict)
