"""Structured outputs through the official openai client against a live server: response_format
(json_schema, json_object) and vLLM's guided_* fields, streaming and not; bad constraints are 400s
naming their field; the response cache keys the constraint."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from llmserve.server.cached_responses import ResponseCacheFront
from llmserve.server.protocol import ChatCompletionRequest
from llmserve.server.response_cache import MemoryResponseCache
from tests.server.live_server import MODEL_NAME
from tests.server.test_errors import assert_openai_error

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12},
                   "population": {"type": "integer", "minimum": 0, "maximum": 100000},
                   "capital": {"type": "boolean"}},
    "required": ["city", "population", "capital"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "user", "content": "Describe a city as JSON."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_chat_json_schema_outputs_validate_over_many_seeds(client):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=10, seed=11, temperature=1.0,
                                          max_tokens=60, response_format=RESPONSE_FORMAT)
    assert len(resp.choices) == 10
    for choice in resp.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_streamed_json_schema_output_validates(client):
    stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, seed=5, temperature=1.0,
                                            max_tokens=60, response_format=RESPONSE_FORMAT, stream=True)
    chunks = [c for c in stream if c.choices]
    assert len(chunks) > 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_json_object_with_logprobs(client):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=0, max_tokens=40,
                                          logprobs=True, top_logprobs=2, response_format={"type": "json_object"})
    choice = resp.choices[0]
    assert choice.message.content.startswith("{")
    assert choice.finish_reason == "length" or isinstance(json.loads(choice.message.content), dict)
    assert len(choice.logprobs.content) == resp.usage.completion_tokens


def test_completions_with_vllm_guided_fields(client):
    regex = r"[A-Z][a-z]{2,5} \d{1,3}"
    resp = client.completions.create(model=MODEL_NAME, prompt="Name and age:", n=4, seed=2, temperature=1.0,
                                     max_tokens=20, extra_body={"guided_regex": regex})
    assert all(re.fullmatch(regex, c.text) for c in resp.choices)
    choices = ["positive", "negative", "neutral"]
    resp = client.completions.create(model=MODEL_NAME, prompt="Sentiment:", max_tokens=10, temperature=0,
                                     extra_body={"guided_choice": choices})
    assert resp.choices[0].text in choices and resp.choices[0].finish_reason == "stop"
    stream = client.completions.create(model=MODEL_NAME, prompt="JSON:", max_tokens=60, temperature=1.0, seed=3,
                                       stream=True, extra_body={"guided_json": SCHEMA})
    jsonschema.validate(json.loads("".join(c.choices[0].text for c in stream if c.choices)), SCHEMA)
    resp = client.completions.create(model=MODEL_NAME, prompt="Answer:", max_tokens=10, temperature=0,
                                     extra_body={"guided_grammar": 'root ::= "A" | "B" "!"'})
    assert resp.choices[0].text in ("A", "B!")


def test_text_response_format_is_unconstrained(client):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=0, max_tokens=5,
                                          response_format={"type": "text"})
    plain = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=0, max_tokens=5)
    assert resp.choices[0].message.content == plain.choices[0].message.content


CHAT = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 5}
COMPLETION = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 5}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "body", "param"), [
    ("/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "nonsense"}}}}, "response_format.json_schema.schema"),
    ("/chat/completions", {**CHAT, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ("/chat/completions", {**CHAT, "response_format": {"type": "xml"}}, "response_format.type"),
    ("/completions", {**COMPLETION, "guided_regex": "a(b"}, "guided_regex"),
    ("/completions", {**COMPLETION, "guided_grammar": "root ::= undefined_rule"}, "guided_grammar"),
    ("/completions", {**COMPLETION, "guided_json": "{not json"}, "guided_json"),
    ("/completions", {**COMPLETION, "guided_choice": []}, "guided_choice"),
    ("/completions", {**COMPLETION, "guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ("/chat/completions", {**CHAT, "response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
])
def test_bad_constraints_are_400s_naming_the_field(server, path, body, param, stream):
    resp = httpx.post(server.base_url + path, json={**body, "stream": stream}, timeout=30)
    assert_openai_error(resp, 400, param)


def test_the_response_cache_keys_the_constraint():
    front = ResponseCacheFront(MemoryResponseCache(1000, 60), "model")

    def key(**fields):
        body = ChatCompletionRequest(messages=MESSAGES, temperature=0, **fields)
        return front.use("chat/completions", body, body.params, MESSAGES, None, "").key

    plain, with_schema = key(), key(response_format=RESPONSE_FORMAT)
    assert len({plain, with_schema, key(guided_regex="a"), key(guided_regex="b"),
                key(response_format={"type": "json_object"})}) == 5
    assert key(guided_json=SCHEMA) == with_schema  # one constraint, however it is spelled
    assert key(response_format={"type": "text"}) == plain
