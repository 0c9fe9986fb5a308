"""vLLM's `prompt_logprobs` on both generation endpoints: vLLM's shape (per choice on completions,
on the response for chat), its numbers held to transformers' float32 log-softmax, and its 400s;
and the response cache replaying echo and prompt-logprob replies byte for byte."""

from __future__ import annotations

import json

import httpx
import pytest

from llmserve.server.app import ServerConfig
from tests.server.fp32_server import TOLERANCE, assert_close
from tests.server.live_server import MODEL_NAME, live_server
from tests.server.test_errors import assert_openai_error

PROMPT_IDS = [1, 504, 2113, 314, 260, 1345, 28, 9]
CHAT = [{"role": "user", "content": "Name a colour."}]


def _post(server, path: str, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 3, **fields}
    return httpx.post(server.base_url + path, json=body, timeout=60)


def _decoded(server, token_id: int) -> str:
    return httpx.post(server.url + "/detokenize", json={"tokens": [token_id]}, timeout=30).json()["prompt"]


def _check_against_transformers(server, reference, entries: list, prompt_ids: list[int], k: int) -> None:
    assert len(entries) == len(prompt_ids) and entries[0] is None
    expected = reference.prompt_logprobs(prompt_ids)
    for i, (entry, token_id) in enumerate(zip(entries[1:], prompt_ids[1:], strict=True)):
        row = expected[i]
        own = entry[str(token_id)]  # the prompt's own token, first, with its rank in the vocabulary
        assert list(entry)[0] == str(token_id)
        # Deep in the vocabulary neighbours lie closer than float rounding: the rank is exact up to those.
        value = row[token_id]
        assert 1 + int((row > value + TOLERANCE).sum()) <= own["rank"] <= 1 + int((row > value - TOLERANCE).sum())
        assert_close([own["logprob"]], [row[token_id].item()])
        assert own["decoded_token"] == _decoded(server, token_id)
        values, ids = row.topk(k)
        top = [(int(key), value) for key, value in entry.items() if value["rank"] <= k]
        assert sorted(t for t, _ in top) == sorted(ids.tolist())
        assert len(entry) == k + (token_id not in ids.tolist())
        for token, value in top:
            assert value["rank"] == 1 + ids.tolist().index(token)
            assert_close([value["logprob"]], [row[token].item()])


def test_completions_give_every_choice_the_prompt_logprobs(fp32_server, reference):
    plain = _post(fp32_server, "/completions", prompt=PROMPT_IDS, n=2, seed=1, temperature=0.7).json()
    resp = _post(fp32_server, "/completions", prompt=PROMPT_IDS, n=2, seed=1, temperature=0.7, prompt_logprobs=3)
    assert resp.status_code == 200, resp.text
    choices = resp.json()["choices"]
    assert [c["text"] for c in choices] == [c["text"] for c in plain["choices"]]  # the tokens are unchanged
    assert choices[0]["prompt_logprobs"] == choices[1]["prompt_logprobs"]
    _check_against_transformers(fp32_server, reference, choices[0]["prompt_logprobs"], PROMPT_IDS, 3)
    assert "prompt_logprobs" not in plain["choices"][0]


def test_prompt_logprobs_0_hold_only_the_prompt_s_tokens(fp32_server, reference):
    choice = _post(fp32_server, "/completions", prompt=PROMPT_IDS, prompt_logprobs=0).json()["choices"][0]
    entries = choice["prompt_logprobs"]
    assert [list(e) for e in entries[1:]] == [[str(t)] for t in PROMPT_IDS[1:]]
    _check_against_transformers(fp32_server, reference, entries, PROMPT_IDS, 0)


def test_each_prompt_of_a_list_gets_its_own(fp32_server, reference):
    prompts = [PROMPT_IDS, PROMPT_IDS[2:6]]
    choices = _post(fp32_server, "/completions", prompt=prompts, prompt_logprobs=2).json()["choices"]
    for choice, prompt in zip(choices, prompts, strict=True):
        _check_against_transformers(fp32_server, reference, choice["prompt_logprobs"], prompt, 2)


def test_chat_puts_them_on_the_response_as_vllm_does(fp32_server, reference):
    resp = _post(fp32_server, "/chat/completions", messages=CHAT, prompt_logprobs=2, n=2, seed=0)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    rendered = httpx.post(fp32_server.url + "/tokenize", json={"messages": CHAT}, timeout=30).json()["tokens"]
    assert body["usage"]["prompt_tokens"] == len(rendered)
    _check_against_transformers(fp32_server, reference, body["prompt_logprobs"], rendered, 2)
    assert all("prompt_logprobs" not in c for c in body["choices"])


@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
def test_bad_values_and_streams_are_400s(fp32_server, path):
    prompt = {"prompt": "hi"} if path == "/completions" else {"messages": CHAT}
    for value in (-1, 21, "2", 1.5, True):
        assert_openai_error(_post(fp32_server, path, **prompt, prompt_logprobs=value), 400, "prompt_logprobs")
    # As vLLM: a stream has no place for them.
    error = assert_openai_error(_post(fp32_server, path, **prompt, prompt_logprobs=1, stream=True), 400,
                                "prompt_logprobs")
    assert "stream" in error["message"]
    assert _post(fp32_server, path, **prompt, prompt_logprobs=None, stream=True).status_code == 200


@pytest.fixture(scope="module")
def cached(fp32_engine):
    with live_server(fp32_engine, ServerConfig(served_model_name=MODEL_NAME, response_cache="4MiB")) as live:
        yield live


def assert_same_bytes(miss: httpx.Response, hit: httpx.Response) -> None:
    """The hit's body is the miss's, byte for byte, but for its fresh id and time and the cached flag."""
    first, second = miss.json(), hit.json()
    expected = miss.content.replace(first["id"].encode(), second["id"].encode())
    expected = expected.replace(b'"created":%d' % first["created"], b'"created":%d' % second["created"])
    assert hit.content.replace(b',"cached":true', b"") == expected


@pytest.mark.parametrize(("path", "fields"), [
    ("/completions", {"prompt": PROMPT_IDS, "echo": True, "logprobs": 2}),
    ("/completions", {"prompt": PROMPT_IDS, "echo": True, "logprobs": 2, "prompt_logprobs": 2}),
    ("/completions", {"prompt": "Once upon", "echo": True, "max_tokens": 0, "logprobs": 1}),
    ("/chat/completions", {"messages": CHAT, "prompt_logprobs": 1}),
])
def test_a_cached_reply_holds_the_same_bytes(cached, path, fields):
    miss, hit = _post(cached, path, **fields), _post(cached, path, **fields)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit"), miss.text
    assert_same_bytes(miss, hit)
    assert hit.json()["usage"]["cached"] is True


def test_echo_with_and_without_prompt_logprobs_are_different_entries(cached):
    # Both ask the engine for the same prompt logprobs; only the body says whether they are shown.
    first = _post(cached, "/completions", prompt=PROMPT_IDS[:5], echo=True, logprobs=1)
    second = _post(cached, "/completions", prompt=PROMPT_IDS[:5], echo=True, logprobs=1, prompt_logprobs=1)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "miss")
    assert "prompt_logprobs" in second.json()["choices"][0]
    assert "prompt_logprobs" not in first.json()["choices"][0]


def _stream_lines(server, **fields) -> tuple[str, list[str]]:
    body = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 3, "stream": True, **fields}
    with httpx.stream("POST", server.base_url + "/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        return resp.headers["x-cache"], [line for line in resp.iter_lines() if line]


def test_a_cached_echo_stream_replays_the_same_bytes(cached):
    fields = {"prompt": [PROMPT_IDS, PROMPT_IDS[:3]], "echo": True, "logprobs": 2, "n": 2, "seed": 4,
              "temperature": 0.9, "stream_options": {"include_usage": True}}
    (miss_status, miss), (hit_status, hit) = _stream_lines(cached, **fields), _stream_lines(cached, **fields)
    assert (miss_status, hit_status) == ("miss", "hit")
    first, second = json.loads(miss[0][6:]), json.loads(hit[0][6:])
    expected = [line.replace(first["id"], second["id"]).replace(f'"created":{first["created"]}',
                                                                 f'"created":{second["created"]}') for line in miss]
    assert [line.replace(',"cached":true', "") for line in hit] == expected
