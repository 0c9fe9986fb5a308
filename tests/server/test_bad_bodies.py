"""Bodies that once reached a 500 (or a 200 stream carrying an error): each is a 400 that names the field,
on both endpoints and before any stream starts."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.live_server import MODEL_NAME
from tests.server.test_errors import assert_openai_error

COMPLETION = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ENDPOINTS = [("/completions", COMPLETION), ("/chat/completions", CHAT)]
STREAMING = [False, True]


def post_raw(server, path: str, raw: str | bytes) -> httpx.Response:
    return httpx.post(server.base_url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)


def post(server, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes non-ASCII, so a lone surrogate travels as the "\ud800" escape a client would send.
    return post_raw(server, path, json.dumps(body))


def with_value(body: dict, field: str, literal: str) -> str:
    """`body` as JSON text with `field` set to `literal`, written as is (json.dumps refuses huge ints)."""
    return json.dumps({**body, field: "@@"}).replace('"@@"', literal)


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
@pytest.mark.parametrize("stream", STREAMING)
@pytest.mark.parametrize(("changes", "param"), [
    ({"stop": ""}, "stop"),
    ({"stop": ["ok", ""]}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": [10**6]}, "stop_token_ids"),  # past the vocabulary: the engine's check
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"repetition_penalty": 1e300}, "repetition_penalty"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"top_k": -7}, "top_k"),
])
def test_sampling_values_get_400_naming_the_field(server, path, body, stream, changes, param):
    error = assert_openai_error(post(server, path, {**body, **changes, "stream": stream}), 400, param)
    assert error["type"] == "invalid_request_error"


def test_min_tokens_is_checked_against_max_completion_tokens(server):
    body = {**CHAT, "max_tokens": None, "max_completion_tokens": 3, "min_tokens": 4}
    assert_openai_error(post(server, "/chat/completions", body), 400, "min_tokens")


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
@pytest.mark.parametrize("stream", STREAMING)
def test_a_seed_at_the_top_of_the_range_with_n_2_generates(server, path, body, stream):
    for seed in (2**63 - 1, -(2**63)):
        resp = post(server, path, {**body, "seed": seed, "n": 2, "temperature": 1.0, "stream": stream})
        assert resp.status_code == 200, resp.text
        assert '"error"' not in resp.text


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
@pytest.mark.parametrize("stream", STREAMING)
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_get_400(server, path, body, stream, literal):
    raw = with_value({**body, "stream": stream}, "temperature", literal)
    error = assert_openai_error(post_raw(server, path, raw), 400)
    assert error["param"] in (None, "temperature")  # the literals fail parsing; 1e999 (inf) fails the field


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
@pytest.mark.parametrize("field", ["max_tokens", "seed", "unknown_field"])
def test_an_integer_of_5000_digits_gets_400(server, path, body, field):
    error = assert_openai_error(post_raw(server, path, with_value(body, field, "9" * 5000)), 400)
    assert "5000 digits (the limit is 4300)" in error["message"] and "sys." not in error["message"]


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
@pytest.mark.parametrize("field", ["model", "unknown_field"])
def test_json_nested_100000_deep_gets_400(server, path, body, field):
    deep = "[" * 100_000 + "]" * 100_000
    error = assert_openai_error(post_raw(server, path, with_value(body, field, deep)), 400)
    assert "nested" in error["message"]


@pytest.mark.parametrize("stream", STREAMING)
@pytest.mark.parametrize(("path", "body", "param"), [
    ("/completions", {**COMPLETION, "prompt": "x\ud800y"}, "prompt"),
    ("/completions", {**COMPLETION, "prompt": ["fine", "x\udfff"]}, "prompt.1"),
    ("/completions", {**COMPLETION, "stop": "\ud800"}, "stop"),
    ("/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x\ud800y"}]}, "messages.0.content"),
    ("/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
     "messages.0.content.0.text"),
    ("/chat/completions", {**CHAT, "user": "\ud83d"}, "user"),
    # In a key: the param quotes it, escaped, or the error itself could not be encoded (found by fuzzing).
    ("/completions", {**COMPLETION, "extra": {"\ud800": 1}}, "extra"),
    ("/completions", {**COMPLETION, "extra": {"k\udc00": {"\udfff": 1}}}, "extra.k\\udc00"),
])
def test_lone_surrogates_get_400_naming_the_field(server, path, body, param, stream):
    error = assert_openai_error(post(server, path, {**body, "stream": stream}), 400, param)
    assert "surrogate" in error["message"]


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_surrogate_pairs_are_ordinary_text(server, path, body):
    # "\ud83d\ude42" is one character (🙂) written as a UTF-16 pair: valid, and generated for.
    text = '"x\\ud83d\\ude42y"'
    raw = with_value(body, "prompt", text) if "prompt" in body else json.dumps(body).replace('"hi"', text)
    assert post_raw(server, path, raw).status_code == 200


@pytest.mark.parametrize(("path", "body", "param"), [
    # Not "prompt.str": the union member pydantic tried first is no part of the body.
    ("/completions", {**COMPLETION, "prompt": [1, "a"]}, "prompt"),
    ("/completions", {**COMPLETION, "prompt": [[1, 2], [3, "x"]]}, "prompt"),
    ("/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages.0.content"),
    ("/chat/completions", {**CHAT, "messages": [{"role": "user"}, {"content": "x"}]}, "messages.1.role"),
])
def test_param_names_what_the_client_wrote(server, path, body, param):
    assert_openai_error(post(server, path, body), 400, param)


def test_the_server_still_serves(server):
    for path, body in ENDPOINTS:
        resp = post(server, path, body)
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
