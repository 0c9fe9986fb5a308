from __future__ import annotations

import json

import pytest

from llmserve.tool_calls import ForcedCallStream, parse_forced_output, read_forced_output

TWO_CALLS = ('[{"name": "weather", "parameters": {"city": "O\\"s}lo", "days": [1, {"a": "]"}]}}, '
             '{"name": "time", "parameters": {}}]')


def streamed(text: str, step: int, function: str | None = None) -> list[dict]:
    stream = ForcedCallStream(function)
    deltas = [d for end in range(step, len(text), step) for d in stream.feed(text[:end], final=False)]
    return deltas + stream.feed(text, final=True)


def accumulate(deltas: list[dict]) -> tuple[str, dict[int, list[str]]]:
    content, calls = "", {}
    for delta in deltas:
        content += delta.get("content", "")
        for part in delta.get("tool_calls", ()):
            if "id" in part:
                assert part["index"] not in calls and part["type"] == "function" and part["id"].startswith("call_")
                assert part["function"]["arguments"] == ""
                calls[part["index"]] = [part["function"]["name"], ""]
            calls[part["index"]][1] += part["function"]["arguments"]
    return content, calls


def test_parse_a_whole_output_keeps_the_model_s_argument_text():
    calls = parse_forced_output(TWO_CALLS)
    assert [(c.name, c.arguments) for c in calls] == [
        ("weather", '{"city": "O\\"s}lo", "days": [1, {"a": "]"}]}'), ("time", "{}")]
    assert json.loads(calls[0].arguments) == {"city": 'O"s}lo', "days": [1, {"a": "]"}]}
    assert [(c.name, c.arguments) for c in parse_forced_output('{"zone": "CET"}', "time")] == [
        ("time", '{"zone": "CET"}')]


@pytest.mark.parametrize("text", ["[]", '[{"name": "f"}]', '{"name": "f", "parameters": {}}', '[{"name": "f", '])
def test_parse_refuses_what_the_schema_does_not_produce(text):
    with pytest.raises(ValueError):
        parse_forced_output(text)


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_a_stream_in_any_steps_sends_the_whole_reply_s_calls(step):
    whole = read_forced_output(TWO_CALLS)
    content, calls = accumulate(streamed(TWO_CALLS, step))
    assert content == "" and whole.content is None
    assert list(calls.values()) == [[c.name, c.arguments] for c in whole.tool_calls]


def test_arguments_stream_as_they_are_generated_and_a_call_is_named_before_them():
    deltas = streamed(TWO_CALLS, 3)
    parts = [d["tool_calls"][0] for d in deltas]
    first_args = [i for i, part in enumerate(parts) if "id" not in part and part["index"] == 0]
    head = [i for i, part in enumerate(parts) if "id" in part and part["index"] == 1]
    assert len(first_args) > 5 and max(first_args) < head[0]  # call 0's arguments all go before call 1 starts


def test_keys_in_either_order_and_whitespace():
    text = '[ {"parameters" : {"x": 1} , "name" : "f" } ]'
    content, calls = accumulate(streamed(text, 1))
    assert content == "" and calls == {0: ["f", '{"x": 1}']}


def test_cut_short_output_gives_the_calls_as_far_as_they_got():
    assert read_forced_output('[{"name": "weath').content == '[{"name": "weath'  # no call named yet
    cut = read_forced_output('[{"name": "weather", "parameters": {"ci')
    assert cut.content is None and [(c.name, c.arguments) for c in cut.tool_calls] == [("weather", '{"ci')]


def test_a_named_function_streams_the_whole_output_as_its_arguments():
    text = '{"zone": "CET", "hour24": true}'
    deltas = streamed(text, 4, "time")
    assert deltas[0]["tool_calls"][0]["function"] == {"name": "time", "arguments": ""}
    assert accumulate(deltas) == ("", {0: ["time", text]}) and len(deltas) > 3
