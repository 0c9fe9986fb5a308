from __future__ import annotations

import json

import jsonschema
import pytest

from llmserve.tool_calls import forced_tool_call_schema
from llmserve.tool_calls.schema import parse_forced_output

WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "time"}}  # no parameters: any object


def valid(schema, value) -> bool:
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def test_required_accepts_calls_of_any_tool_with_valid_arguments():
    schema = forced_tool_call_schema([WEATHER, TIME], "required", parallel=True)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert valid(schema, [{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": "time", "arguments": {}}])
    assert not valid(schema, [])
    assert not valid(schema, [{"name": "weather", "arguments": {"town": "Oslo"}}])
    assert not valid(schema, [{"name": "other", "arguments": {}}])
    assert not valid(schema, [{"name": "time"}])
    assert not valid(schema, {"name": "time", "arguments": {}})


def test_named_choice_and_parallel_false():
    schema = forced_tool_call_schema([WEATHER, TIME], {"type": "function", "function": {"name": "weather"}},
                                     parallel=False)
    assert valid(schema, [{"name": "weather", "arguments": {"city": "Rome"}}])
    assert not valid(schema, [{"name": "time", "arguments": {}}])
    assert not valid(schema, [{"name": "weather", "arguments": {"city": "a"}}] * 2)


def test_refusals_and_reading_a_forced_output():
    with pytest.raises(ValueError, match="not among the tools"):
        forced_tool_call_schema([TIME], {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValueError):
        forced_tool_call_schema([TIME], "auto")
    calls = parse_forced_output(json.dumps([{"name": "weather", "arguments": {"city": "Oslo"}}]))
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", {"city": "Oslo"})]
    with pytest.raises(ValueError):
        parse_forced_output("[]")
