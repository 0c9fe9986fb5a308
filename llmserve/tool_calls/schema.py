"""The JSON schema that forces a tool call (`tool_choice` "required" or a named function) through
the structured-output engine, as vLLM builds it.

- "required": the WHOLE output is a JSON array of calls, `[{"name": ..., "parameters": {...}}, ...]`,
  at least one, each item any one of the tools (at most one item with `parallel_tool_calls: false`).
  A grammar over the whole output needs no knowledge of any template's markers, and each call's
  arguments are held to its function's `parameters` schema.
- a named function: the whole output is that function's arguments, held to its `parameters`.

llmserve.tool_calls.forced reads such an output back into calls, whole or as it streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# A function without `parameters` takes any object (OpenAI's reading of an absent schema).
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def forced_function(tool_choice: str | Mapping[str, Any]) -> str | None:
    """The function a named `tool_choice` forces; None for "required"."""
    if isinstance(tool_choice, Mapping):
        return str(tool_choice["function"]["name"])
    if tool_choice != "required":
        raise ValueError(f"tool_choice {tool_choice!r} forces no call")
    return None


def forced_tool_call_schema(tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any],
                            parallel: bool = True) -> dict[str, Any]:
    """`tools` in OpenAI's shape; `tool_choice` "required" (any of them) or
    {"type": "function", "function": {"name": ...}} (that one). `parallel=False` allows one call."""
    functions = [t["function"] for t in tools]
    name = forced_function(tool_choice)
    if name is not None:
        named = [f for f in functions if f["name"] == name]
        if not named:
            raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
        return _parameters(named[0])
    if not functions:
        raise ValueError("tool_choice 'required' needs at least one tool")
    calls = [_call_schema(f) for f in functions]
    array: dict[str, Any] = {"type": "array", "minItems": 1,
                             "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if not parallel:
        array["maxItems"] = 1
    return array


def _parameters(function: Mapping[str, Any]) -> dict[str, Any]:
    return dict(function.get("parameters") or _ANY_OBJECT)


def _call_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    # "name" comes first: the grammar generates properties in order, so a stream can name the call
    # before its arguments begin.
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "parameters": _parameters(function)},
            "required": ["name", "parameters"], "additionalProperties": False}
