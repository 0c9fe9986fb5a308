from __future__ import annotations

import json

import pytest

from llmserve.tool_calls import ToolCallStream, get_parser, parse_tool_calls, parser_for_template
from llmserve.tool_calls.hermes import HermesParser
from llmserve.tool_calls.llama3 import Llama3Parser

HERMES = get_parser("hermes")
LLAMA3 = get_parser("llama3")


def call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def test_hermes_text_before_and_several_calls():
    text = "Let me look.\n" + call("weather", city="Paris") + "\n" + call("time", zone="CET")
    parsed = parse_tool_calls(HERMES, text)
    assert parsed.content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        ("weather", {"city": "Paris"}), ("time", {"zone": "CET"})]
    assert all(c.id.startswith("call_") for c in parsed.tool_calls)
    assert len({c.id for c in parsed.tool_calls}) == 2


def test_hermes_only_a_call_has_no_content_and_parallel_false_keeps_the_first():
    text = call("a", x=1) + call("b")
    parsed = parse_tool_calls(HERMES, text, parallel=False)
    assert parsed.content is None
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("a", '{"x": 1}')]


@pytest.mark.parametrize("body", ['{"name": "f", "arguments": {"x": 1}', "not json", '{"arguments": {}}',
                                  '{"name": "f", "arguments": [1]}', '{"name": 3}'])
def test_hermes_malformed_calls_stay_content(body):
    text = f"Hi <tool_call>{body}</tool_call>"
    parsed = parse_tool_calls(HERMES, text)
    assert parsed.tool_calls == [] and parsed.content == text


def test_hermes_plain_text_and_an_unclosed_call_at_the_end():
    assert parse_tool_calls(HERMES, "just words <tool").content == "just words <tool"
    parsed = parse_tool_calls(HERMES, '<tool_call>{"name": "f", "arguments": "{\\"k\\": true}"}')
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("f", '{"k": true}')]  # string arguments decoded


def test_llama3_json_calls_with_and_without_the_python_tag():
    parsed = parse_tool_calls(LLAMA3, '{"name": "weather", "parameters": {"city": "Oslo"}}')
    assert parsed.content is None and [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("weather", '{"city": "Oslo"}')]
    parsed = parse_tool_calls(LLAMA3, 'Checking. <|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", '
                                      '"parameters": {"n": 2}}')
    assert parsed.content == "Checking." and [c.name for c in parsed.tool_calls] == ["a", "b"]


@pytest.mark.parametrize("text", ['{"name": "a", "parameters": {', '{"city": "Oslo"}', "Hello there", "{} {"])
def test_llama3_what_is_not_a_call_is_content(text):
    parsed = parse_tool_calls(LLAMA3, text)
    assert parsed.tool_calls == [] and parsed.content == text


def test_parser_is_told_by_the_template():
    assert isinstance(parser_for_template("{{ '<tool_call>' }}"), HermesParser)
    assert isinstance(parser_for_template("{{ '<|python_tag|>' }}"), Llama3Parser)
    assert parser_for_template("{{ messages }}") is None and parser_for_template(None) is None
    with pytest.raises(ValueError, match="unknown tool call parser"):
        get_parser("mistral")


def replay(parser, text: str, step: int = 1, parallel: bool = True) -> list[dict]:
    stream = ToolCallStream(parser, parallel)
    deltas = []
    for end in range(step, len(text) + step, step):
        deltas.extend(stream.feed(text[:end], end >= len(text)))
    return deltas


def content_of(deltas: list[dict]) -> str:
    return "".join(d.get("content", "") for d in deltas)


def calls_of(deltas: list[dict]) -> list[tuple[str, str, str]]:
    """(id, name, concatenated arguments) per index, as an OpenAI client accumulates them."""
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        for part in delta.get("tool_calls", ()):
            if "id" in part:
                assert part["type"] == "function" and part["index"] == len(calls)
                calls[part["index"]] = [part["id"], part["function"]["name"], part["function"]["arguments"]]
            else:
                calls[part["index"]][2] += part["function"]["arguments"]
    return [tuple(c) for c in calls.values()]


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_streaming_equals_the_whole_parse_and_never_leaks_a_marker(step):
    text = "Let me look.\n" + call("weather", city="Paris") + "\n" + call("time") + "\n"
    deltas = replay(HERMES, text, step)
    assert content_of(deltas).strip() == "Let me look."
    assert "<" not in content_of(deltas)
    assert [(n, a) for _, n, a in calls_of(deltas)] == [("weather", '{"city": "Paris"}'), ("time", "{}")]
    # No content is sent once the first call starts.
    first_call = next(i for i, d in enumerate(deltas) if "tool_calls" in d)
    assert all("content" not in d for d in deltas[first_call:])


def test_streaming_malformed_call_and_lookalikes_come_out_as_content():
    text = "a <tools> b <tool_call>{oops}</tool_call> c"
    assert content_of(replay(HERMES, text)) == text
    assert calls_of(replay(HERMES, text)) == []


def test_streaming_parallel_false_and_llama3():
    text = call("a") + call("b")
    assert [n for _, n, _ in calls_of(replay(HERMES, text, parallel=False))] == ["a"]
    deltas = replay(LLAMA3, ' {"name": "a", "parameters": {"q": "x"}}', 3)
    assert content_of(deltas) == "" and [(n, a) for _, n, a in calls_of(deltas)] == [("a", '{"q": "x"}')]
    assert content_of(replay(LLAMA3, "plain <|pyt words")) == "plain <|pyt words"
