"""Forced tool calls (`tool_choice` "required" or a named function) through the official openai
client against the live tiny model: the grammar makes even a random model's calls valid, so every
call is checked against its tool's schema over several seeds, streamed and not."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from llmserve.model.templates import read_chat_template
from llmserve.server.app import ServerConfig
from llmserve.server.chat_tools import ChatSetup
from tests.server.live_server import MODEL_NAME, live_server
from tests.server.test_tool_calls import collect

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8},
                                                    "hour24": {"type": "boolean"}}, "required": ["zone"]}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = [{"role": "user", "content": "What is the weather in Paris, and the time there?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}
SEEDS = range(5)


@pytest.fixture(scope="module")
def client(engine):
    config = ServerConfig(served_model_name=MODEL_NAME, chat=ChatSetup(read_chat_template("smollm2_tools")))
    with live_server(engine, config) as live:
        yield openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def ask(client, stream: bool = False, **fields):
    fields = {"messages": QUESTION, "tools": TOOLS, "temperature": 1.0, "max_tokens": 300, **fields}
    return client.chat.completions.create(model=MODEL_NAME, stream=stream, **fields)


def assert_valid(name: str, arguments: str, tools=SCHEMAS) -> None:
    assert name in tools
    jsonschema.validate(json.loads(arguments), tools[name])


@pytest.mark.parametrize("seed", SEEDS)
def test_required_single_call_is_always_a_valid_call(client, seed):
    choice = ask(client, tool_choice="required", parallel_tool_calls=False, seed=seed).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert_valid(call.function.name, call.function.arguments)


def test_required_parallel_calls_validate_as_far_as_they_are_complete(client):
    finished = 0
    for seed in SEEDS:
        choice = ask(client, tool_choice="required", seed=seed).choices[0]
        calls = choice.message.tool_calls
        assert calls and choice.message.content is None
        assert len({c.id for c in calls}) == len(calls)
        # A random model may add calls until max_tokens cuts the last one short ("length").
        complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]
        assert choice.finish_reason in ("tool_calls", "length")
        finished += choice.finish_reason == "tool_calls"
        for call in complete:
            assert_valid(call.function.name, call.function.arguments)
    assert finished > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_a_named_function_is_the_one_called_and_finishes_with_stop(client, seed):
    choice = ask(client, tool_choice=NAMED, seed=seed).choices[0]
    # OpenAI answers "stop" for a named tool_choice (the caller chose the call), "tool_calls" otherwise.
    assert choice.finish_reason == "stop" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time"
    assert_valid("get_time", call.function.arguments)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"tool_choice": "required", "parallel_tool_calls": False}, "tool_calls"),
    ({"tool_choice": "required"}, None),
    ({"tool_choice": NAMED}, "stop"),
    ({"tool_choice": "required", "max_tokens": 30}, "length"),
])
def test_streamed_calls_equal_the_whole_reply(client, fields, reason):
    for seed in (1, 3):
        whole = ask(client, seed=seed, **fields).choices[0]
        chunks = list(ask(client, stream=True, seed=seed, **fields))
        content, calls, reasons = collect(chunks)
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content is None
        assert content == "" and whole.message.content is None and reasons[-1] == whole.finish_reason
        assert reason is None or whole.finish_reason == reason
        assert [(c["name"], c["arguments"]) for c in calls.values()] == [
            (c.function.name, c.function.arguments) for c in whole.message.tool_calls]
        # The arguments stream as they are generated: more than one delta for a call of any length.
        pieces = [part for chunk in chunks for choice in chunk.choices for part in choice.delta.tool_calls or ()
                  if part.index == 0 and part.id is None]
        assert len(pieces) > 1


def test_n_choices_each_get_their_own_valid_call(client):
    resp = ask(client, tool_choice="required", parallel_tool_calls=False, seed=7, n=3)
    assert len(resp.choices) == 3
    for choice in resp.choices:
        (call,) = choice.message.tool_calls
        assert_valid(call.function.name, call.function.arguments)


def test_round_trip_required_then_auto(client, engine):
    first = ask(client, tool_choice="required", parallel_tool_calls=False, seed=2).choices[0]
    (call,) = first.message.tool_calls
    assert_valid(call.function.name, call.function.arguments)
    messages = [*QUESTION, first.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"answer": "18C"}'}]
    second = ask(client, messages=messages, tool_choice="auto", seed=2, max_tokens=8)
    # A random model's free text is rarely a call; whatever it is, the turn went through the template.
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    rendered = engine.tokenizer.render_chat(
        [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)}}]},
         messages[-1]], tools=TOOLS, chat_template=read_chat_template("smollm2_tools"))
    assert '<tool_response>\n{"answer": "18C"}\n</tool_response>' in rendered["prompt"]
    assert second.usage.prompt_tokens == len(rendered["prompt_token_ids"])


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not among the tools"),
    ({"tool_choice": "required"}, "tool_choice", "only allowed when tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "cannot be combined with response_format"),
    ({"tools": TOOLS, "tool_choice": NAMED, "guided_regex": "a+"}, "tool_choice",
     "cannot be combined with guided_regex"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
      "tool_choice": "required"}, "tools", "does not compile"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_forced_calls_are_400s_naming_the_field(client, extra, param, words, stream):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=4, stream=stream,
                                       extra_body=extra)
    assert caught.value.body["param"] == param and words in caught.value.body["message"]


def strict(tool: dict) -> dict:
    return {**tool, "function": {**tool["function"], "strict": True}}


@pytest.mark.parametrize("stream", [False, True])
def test_strict_tools_under_auto_leave_the_choice_to_the_model(client, stream):
    """The grammar lets free text through and holds any call to its schema (tests/structured has the
    grammar itself; a random model seldom starts a call)."""
    for seed in range(3):
        if stream:
            content, calls, reasons = collect(ask(client, stream=True, tools=[strict(WEATHER), strict(TIME)],
                                                  seed=seed, max_tokens=16))
            calls = list(calls.values())
        else:
            choice = ask(client, tools=[strict(WEATHER), strict(TIME)], seed=seed, max_tokens=16).choices[0]
            reasons, calls = [choice.finish_reason], [
                {"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls or ()]
        assert reasons[-1] in ("stop", "length", "tool_calls")
        for call in calls:
            assert_valid(call["name"], call["arguments"])


@pytest.mark.parametrize(("extra", "words"), [
    ({"response_format": {"type": "json_object"}}, "cannot be combined with response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "nonsense"}}}]},
     "tool call grammar does not compile"),
])
def test_strict_tools_refusals_name_tools(client, extra, words):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, **{"tools": [strict(WEATHER)], "max_tokens": 4, **extra})
    assert caught.value.body["param"] == "tools" and words in caught.value.body["message"]
