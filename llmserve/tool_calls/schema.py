"""The JSON schema that forces a tool call (`tool_choice` "required" or a named function) through
the structured-output engine, and the reading of an output generated under it.

Under it the WHOLE output is a JSON array of calls, `[{"name": ..., "arguments": {...}}, ...]`, as
vLLM forces them: a grammar over the whole output needs no knowledge of any template's markers,
and each call's arguments are held to its function's `parameters` schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmserve.tool_calls.calls import ParsedCall, call_from_object

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def forced_tool_call_schema(tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any],
                            parallel: bool = True) -> dict[str, Any]:
    """`tools` in OpenAI's shape; `tool_choice` "required" (any of them) or
    {"type": "function", "function": {"name": ...}} (that one). `parallel=False` allows one call."""
    functions = [t["function"] for t in tools]
    if isinstance(tool_choice, Mapping):
        name = tool_choice["function"]["name"]
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    elif tool_choice != "required":
        raise ValueError(f"tool_choice {tool_choice!r} forces no call")
    if not functions:
        raise ValueError("tool_choice 'required' needs at least one tool")
    calls = [_call_schema(f) for f in functions]
    array: dict[str, Any] = {"type": "array", "minItems": 1,
                             "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if not parallel:
        array["maxItems"] = 1
    return array


def _call_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": function["name"]},
                                             "arguments": dict(function.get("parameters") or _ANY_OBJECT)},
            "required": ["name", "arguments"], "additionalProperties": False}


def parse_forced_output(text: str) -> list[ParsedCall]:
    """The calls of an output generated under forced_tool_call_schema; ValueError if it is not one."""
    value = json.loads(text)
    if not isinstance(value, list) or not value:
        raise ValueError("a forced tool call output must be a non-empty JSON array of calls")
    calls = [call_from_object(item, ("arguments",)) for item in value]
    if any(c is None for c in calls):
        raise ValueError("every item of a forced tool call output must be {\"name\": ..., \"arguments\": {...}}")
    return calls  # type: ignore[return-value]
