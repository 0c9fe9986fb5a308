"""Tool calling through the official openai client: a round trip (tools -> tool_calls -> a tool
message -> the answer) on scripted model output, streaming and not, and the template on a live model."""

from __future__ import annotations

import json

import openai
import pytest

from llmserve.model.templates import read_chat_template
from llmserve.server.app import ServerConfig
from llmserve.server.chat_tools import ChatSetup
from tests.server.live_server import MODEL_NAME, live_server
from tests.server.scripted_engine import ScriptedEngine

TEMPLATE = read_chat_template("smollm2_tools")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ANSWER = "It is 18C and sunny in Paris."
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def scripted(engine):
    scripted = ScriptedEngine(engine)
    config = ServerConfig(served_model_name=MODEL_NAME, warmup=False, chat=ChatSetup(TEMPLATE))
    with live_server(scripted, config) as live:
        yield scripted, openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def live_tools(engine):
    """The tiny model itself, rendering with the tools template."""
    with live_server(engine, ServerConfig(served_model_name=MODEL_NAME, chat=ChatSetup(TEMPLATE))) as live:
        yield live, openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)


def tool_reply(call_id: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": '{"temperature": "18C"}'}


def assert_answer_turn_rendered(prompt: str) -> None:
    assert "<tools>\n" + json.dumps(WEATHER, ensure_ascii=False) + "\n</tools>" in prompt
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' in prompt
    assert '<|im_start|>tool\n<tool_response>\n{"temperature": "18C"}\n</tool_response><|im_end|>' in prompt


def test_round_trip(scripted):
    engine, client = scripted
    engine.replies = [CALL, ANSWER]
    first = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert "<tools>" in engine.prompts[-1]
    messages = [*QUESTION, choice.message.model_dump(exclude_none=True), tool_reply(call.id)]
    second = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == ANSWER and second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason == "stop"
    assert_answer_turn_rendered(engine.prompts[-1])


def collect(stream) -> tuple[str, dict[int, dict], list[str | None]]:
    """A streamed reply as an OpenAI client accumulates it: content, calls by index, finish reasons."""
    content, calls, reasons = "", {}, []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            content += choice.delta.content or ""
            for part in choice.delta.tool_calls or ():
                if part.id is not None:
                    assert part.index not in calls and part.type == "function"
                    calls[part.index] = {"id": part.id, "name": part.function.name, "arguments": ""}
                calls[part.index]["arguments"] += part.function.arguments or ""
    return content, calls, reasons


def test_streamed_round_trip_with_text_before_two_calls(scripted):
    engine, client = scripted
    second_call = CALL.replace("Paris", "Oslo")
    engine.replies = ["Let me check.\n" + CALL + "\n" + second_call, ANSWER]
    stream = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, tools=[WEATHER], stream=True)
    content, calls, reasons = collect(stream)
    assert content.strip() == "Let me check." and "<" not in content
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]
    assert [r for r in reasons if r] == ["tool_calls"] and reasons[-1] == "tool_calls"
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls.values()]}
    messages = [*QUESTION, assistant, tool_reply(calls[0]["id"]), tool_reply(calls[1]["id"])]
    content, calls, reasons = collect(client.chat.completions.create(
        model=MODEL_NAME, messages=messages, tools=[WEATHER], stream=True))
    assert content == ANSWER and calls == {} and reasons[-1] == "stop"
    assert_answer_turn_rendered(engine.prompts[-1])


def test_parallel_false_none_and_malformed(scripted):
    engine, client = scripted
    engine.replies = [CALL + CALL]
    single = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, tools=[WEATHER],
                                            parallel_tool_calls=False)
    assert len(single.choices[0].message.tool_calls) == 1
    # "none": the tools are not shown to the model, and nothing it writes is taken for a call.
    none = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, tools=[WEATHER], tool_choice="none")
    assert none.choices[0].message.content == CALL + CALL and none.choices[0].finish_reason == "stop"
    assert "<tools>" not in engine.prompts[-1]
    engine.replies = [CALL + CALL.replace("Paris", "Oslo")]
    content, calls, reasons = collect(client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, tools=[WEATHER], parallel_tool_calls=False, stream=True))
    assert [json.loads(c["arguments"]) for c in calls.values()] == [{"city": "Paris"}] and reasons[-1] == "tool_calls"
    engine.replies = ["<tool_call>{not json}</tool_call>"]
    bad = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, tools=[WEATHER], stream=True)
    content, calls, reasons = collect(bad)
    assert content == "<tool_call>{not json}</tool_call>" and calls == {} and reasons[-1] == "stop"


def test_live_model_renders_tools_and_tool_messages(live_tools, engine):
    live, client = live_tools
    messages = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        tool_reply("call_1")]
    resp = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER], max_tokens=4,
                                          temperature=0)
    rendered = engine.tokenizer.render_chat([*QUESTION, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        tool_reply("call_1")], tools=[WEATHER], chat_template=TEMPLATE)
    assert_answer_turn_rendered(rendered["prompt"])
    assert resp.usage.prompt_tokens == len(rendered["prompt_token_ids"])


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"tool_choice": "auto"}, "tool_choice", "only allowed when tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not among the tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type", "function"),
])
def test_bad_tool_requests_get_400(live_tools, extra, param, words):
    _, client = live_tools
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=1, extra_body=extra)
    assert caught.value.body["param"] == param and words in caught.value.body["message"]


def test_tool_message_needs_its_call_id(live_tools):
    _, client = live_tools
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=[*QUESTION, {"role": "tool", "content": "x"}],
                                       max_tokens=1)
    assert "tool_call_id" in caught.value.body["message"] and caught.value.body["param"] == "messages.1"


def test_tools_on_a_template_without_tool_calling_are_refused(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, tools=[WEATHER], max_tokens=1)
    assert caught.value.body["param"] == "tools" and "--chat-template" in caught.value.body["message"]
    # Without tools, a tool message still renders through the model's own template (as its content).
    resp = client.chat.completions.create(model=MODEL_NAME, max_tokens=1, messages=[
        *QUESTION, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "42"}])
    assert resp.choices[0].finish_reason in ("stop", "length")
