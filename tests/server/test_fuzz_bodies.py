"""Property: no request body, however wrong, gets a 5xx; every 4xx is OpenAI-shaped; a 200 stream
carries no error event. Hypothesis generates a few thousand bodies for both endpoints, valid-ish and
hostile (wrong types, huge, negative and non-finite numbers, lone surrogates, empty strings, deep
nesting, integers past 4300 digits, bytes that are not JSON), against the live test server.

Derandomized, so CI sees the same bodies every run. max_tokens stays small whenever it is valid, as the
cost of a body is what the tiny model generates for it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.live_server import MODEL_NAME
from tests.server.test_errors import assert_openai_error

EXAMPLES = int(os.environ.get("LLMSERVE_FUZZ_EXAMPLES", "1250"))
# Hypothesis warns that a 100,000-deep body makes a long repr; that body is the point.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SURROGATES = st.sampled_from(["\ud800", "x\udfffy", "\udbff", "ok \ud83d", "\udc00\ud800"])
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "🙂", "<|im_end|>", "\n\n"]), SURROGATES)
EDGE_INTS = st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64,
                             10**30, -(10**30)])
INTS = st.one_of(st.integers(-5, 300), EDGE_INTS)
FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 5e-324, 2.0000001, 1.0]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)


# In-range values of each field. max_tokens stays tiny and is never null (null means: up to the context
# length), n small: a body's cost is what the tiny model generates for it.
MAX_TOKENS = st.integers(1, 3)
SAMPLING = {
    "model": st.just(MODEL_NAME),
    "n": st.integers(1, 2),
    "temperature": st.one_of(st.none(), st.floats(0, 2)),
    "top_p": st.one_of(st.none(), st.floats(0.01, 1)),
    "top_k": st.one_of(st.none(), st.integers(-1, 300)),
    "min_p": st.floats(0, 1),
    "seed": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63 - 1, -(2**63)])),
    "stop": st.one_of(st.none(), TEXT.filter(bool), st.lists(TEXT.filter(bool), max_size=3)),
    "stop_token_ids": st.lists(st.integers(0, 300), max_size=3),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.01, 100),
    "min_tokens": st.integers(0, 4),
    "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "include_stop_str_in_output": st.booleans(),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "user": TEXT,
    "priority": st.one_of(st.none(), st.integers(0, 2), st.sampled_from(["p0", "1"])),
    "cache": st.booleans(),
    "prompt_logprobs": st.integers(0, 20),
    "an_unknown_field": JUNK,
}
TOKEN_IDS = st.lists(st.integers(0, 300), min_size=1, max_size=6)
PROMPT = st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=2), TOKEN_IDS, st.lists(TOKEN_IDS, min_size=1, max_size=2))
COMPLETION = st.fixed_dictionaries(
    {"prompt": PROMPT, "max_tokens": MAX_TOKENS},
    optional={**SAMPLING, "logprobs": st.integers(0, 20), "echo": st.booleans()})

ROLE = st.sampled_from(["system", "developer", "user", "assistant"])
PARTS = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=3)
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": st.one_of(TEXT, PARTS, st.none())},
                                optional={"name": TEXT})
CHAT = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, min_size=1, max_size=3), "max_tokens": MAX_TOKENS},
    optional={**SAMPLING, "max_completion_tokens": MAX_TOKENS, "logprobs": st.booleans(),
              "top_logprobs": st.integers(0, 20), "add_generation_prompt": st.booleans()})

# Values no field takes, or that some field must refuse: wrong types, ends of the integer and float lines,
# empty and non-Unicode strings, the roles and part types OpenAI has but this server does not.
WRONG = st.one_of(JUNK, EDGE_INTS, FLOATS, SURROGATES,
                  st.sampled_from(["", [], {}, [""], [-1], [[]], -1, 0, 17, 10**6, "tool", {"type": "image_url"},
                                   [{"role": "tool", "content": "x"}], [{"type": "image_url", "text": "x"}]]))


@st.composite
def _with_one_wrong(draw: st.DrawFn, valid: st.SearchStrategy, fields: list[str]) -> dict[str, Any]:
    """A valid body with one field (top-level, or inside its first message) set to a wrong value."""
    body = dict(draw(valid))
    name = draw(st.sampled_from(fields))
    # A length limit that is null or a large integer is valid and runs to the context length: slow, not wrong.
    value = draw(WRONG.filter(_not_a_long_run) if name in ("max_tokens", "max_completion_tokens") else WRONG)
    if name.startswith("messages.0."):
        body["messages"] = [{**body["messages"][0], name.rsplit(".", 1)[1]: value}, *body["messages"][1:]]
    else:
        body[name] = value
    return body


def _not_a_long_run(value: Any) -> bool:
    return value is not None and not (type(value) is int and value > 3)


def _raw(body: dict[str, Any], hostile: str) -> str:
    """The body as JSON text with one field's value replaced by text json.dumps cannot write."""
    return json.dumps({**body, "seed": "@@"}).replace('"@@"', hostile)


HOSTILE_TEXT = st.sampled_from(["NaN", "-Infinity", "1e999", "9" * 5000, "-" + "9" * 4301,
                                "[" * 100_000 + "]" * 100_000, "{\"a\":" * 5000 + "1" + "}" * 5000,
                                '"\\ud800"', '"\\udfff\\ud800"', "[1,]", "tru"])


def bodies(valid: st.SearchStrategy, fields: list[str]) -> st.SearchStrategy:
    """A body as bytes: valid, or with one wrong field, or with one value json cannot express, or not
    an object at all (binary: mostly neither UTF-8 nor JSON)."""
    wrong = _with_one_wrong(valid, fields)
    text = st.one_of(valid.map(json.dumps), wrong.map(json.dumps), wrong.map(json.dumps),
                     st.builds(_raw, valid, HOSTILE_TEXT), JUNK.map(json.dumps))
    return st.one_of(text.map(str.encode), st.binary(max_size=20))


EMBEDDING = st.fixed_dictionaries(
    {"input": PROMPT},
    optional={"model": st.just(MODEL_NAME), "encoding_format": st.sampled_from(["float", "base64"]),
              "dimensions": st.just(64), "user": TEXT, "priority": SAMPLING["priority"], "cache": st.booleans(),
              "an_unknown_field": JUNK})

COMPLETION_FIELDS = ["prompt", "max_tokens", "logprobs", "echo", *SAMPLING]
EMBEDDING_FIELDS = ["input", "encoding_format", "dimensions", "user", "priority"]
CHAT_FIELDS = ["messages", "messages.0.role", "messages.0.content", "max_tokens", "max_completion_tokens",
               "logprobs", "top_logprobs", *SAMPLING]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def check(resp: httpx.Response, raw: bytes) -> None:
    assert resp.status_code < 500, f"{resp.status_code} for {raw[:500]!r}: {resp.text[:500]}"
    if resp.status_code >= 400:
        assert_openai_error(resp, resp.status_code)
    elif resp.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        for event in events[:-1]:
            assert "error" not in json.loads(event), f"an error in a 200 stream for {raw[:500]!r}: {event}"
    else:
        assert resp.json().get("choices") or resp.json()["data"]


def post(client: httpx.Client, path: str, raw: bytes) -> None:
    check(client.post(path, content=raw, headers={"content-type": "application/json"}), raw)


@SETTINGS
@given(raw=bodies(COMPLETION, COMPLETION_FIELDS))
def test_completions_never_5xx(client, raw):
    post(client, "/completions", raw)


@SETTINGS
@given(raw=bodies(CHAT, CHAT_FIELDS))
def test_chat_completions_never_5xx(client, raw):
    post(client, "/chat/completions", raw)


@settings(SETTINGS, max_examples=max(1, EXAMPLES // 5))  # a smaller body: fewer shapes to try
@given(raw=bodies(EMBEDDING, EMBEDDING_FIELDS))
def test_embeddings_never_5xx(client, raw):
    post(client, "/embeddings", raw)


def test_the_server_still_serves_after_the_fuzzing(client, server):
    resp = client.post("/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
    resp = client.post("/chat/completions", json={"model": MODEL_NAME, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["role"] == "assistant"
    assert not server.engine.engine.has_unfinished_requests()
