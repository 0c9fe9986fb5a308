from __future__ import annotations

import jsonschema
import pytest

from llmserve.tool_calls import forced_function, forced_tool_call_schema

WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "time"}}  # no parameters: any object
NAMED_WEATHER = {"type": "function", "function": {"name": "weather"}}


def valid(schema, value) -> bool:
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def test_required_accepts_calls_of_any_tool_with_valid_arguments():
    schema = forced_tool_call_schema([WEATHER, TIME], "required", parallel=True)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert valid(schema, [{"name": "weather", "parameters": {"city": "Oslo"}}, {"name": "time", "parameters": {}}])
    assert not valid(schema, [])
    assert not valid(schema, [{"name": "weather", "parameters": {"town": "Oslo"}}])
    assert not valid(schema, [{"name": "other", "parameters": {}}])
    assert not valid(schema, [{"name": "time"}])
    assert not valid(schema, {"name": "time", "parameters": {}})
    # "name" first: the grammar generates it before the arguments, so a stream can name the call early.
    assert list(schema["items"]["anyOf"][0]["properties"]) == ["name", "parameters"]


def test_parallel_false_allows_exactly_one_call():
    schema = forced_tool_call_schema([WEATHER, TIME], "required", parallel=False)
    assert valid(schema, [{"name": "time", "parameters": {"x": 1}}])
    assert not valid(schema, [{"name": "time", "parameters": {}}] * 2)
    assert not valid(schema, [])


def test_a_named_function_is_just_its_parameters():
    assert forced_tool_call_schema([WEATHER, TIME], NAMED_WEATHER) == WEATHER["function"]["parameters"]
    assert forced_tool_call_schema([WEATHER, TIME], {"type": "function", "function": {"name": "time"}}) == {
        "type": "object"}
    assert forced_function(NAMED_WEATHER) == "weather" and forced_function("required") is None


def test_refusals():
    with pytest.raises(ValueError, match="not among the tools"):
        forced_tool_call_schema([TIME], {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValueError, match="forces no call"):
        forced_tool_call_schema([TIME], "auto")
    with pytest.raises(ValueError, match="at least one tool"):
        forced_tool_call_schema([], "required")
