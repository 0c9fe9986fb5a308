"""`echo` on /v1/completions: each choice's text and logprobs start with its prompt (the prompt's
logprobs held to transformers' log-softmax in float32), streamed in each choice's first chunk;
`max_tokens: 0` gives the prompt alone, and only with echo."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.server.fp32_server import assert_close
from tests.server.live_server import MODEL_NAME
from tests.server.test_errors import assert_openai_error

PROMPT_IDS = [1, 504, 2113, 314, 260, 1345, 28, 9]


def _complete(server, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 4, **fields}
    return httpx.post(server.base_url + "/completions", json=body, timeout=60)


def _stream(server, **fields) -> list[dict]:
    body = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 4, "stream": True, **fields}
    with httpx.stream("POST", server.base_url + "/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def _detokenize(server, ids: list[int]) -> str:
    return httpx.post(server.url + "/detokenize", json={"tokens": ids}, timeout=30).json()["prompt"]


def _token_texts(server, ids: list[int]) -> list[str]:
    return [_detokenize(server, [i]) for i in ids]


@pytest.fixture(scope="module")
def client(fp32_server):
    return openai.OpenAI(base_url=fp32_server.base_url, api_key="unused", max_retries=0)


def test_the_text_starts_with_the_prompt(client):
    plain = client.completions.create(model=MODEL_NAME, prompt="The sea is", max_tokens=5, temperature=0)
    echoed = client.completions.create(model=MODEL_NAME, prompt="The sea is", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "The sea is" + plain.choices[0].text
    assert echoed.usage.prompt_tokens == plain.usage.prompt_tokens
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens == 5


def test_echoed_logprobs_are_transformers_log_softmax_over_the_prompt(fp32_server, reference):
    plain = _complete(fp32_server, prompt=PROMPT_IDS, logprobs=3).json()["choices"][0]
    resp = _complete(fp32_server, prompt=PROMPT_IDS, logprobs=3, echo=True)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    logprobs = choice["logprobs"]
    prompt_len = len(PROMPT_IDS)
    assert len(logprobs["tokens"]) == prompt_len + 4
    assert logprobs["tokens"][:prompt_len] == _token_texts(fp32_server, PROMPT_IDS)
    # The first prompt token has nothing before it: null, as vLLM gives it.
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    expected = reference.prompt_logprobs(PROMPT_IDS)
    actual_ids = PROMPT_IDS[1:]
    assert_close(logprobs["token_logprobs"][1:prompt_len], [expected[i, t].item() for i, t in enumerate(actual_ids)])
    for i, top in enumerate(logprobs["top_logprobs"][1:prompt_len]):
        values, ids = expected[i].topk(3)
        texts = _token_texts(fp32_server, ids.tolist())
        assert list(top) == texts
        assert_close(list(top.values()), values.tolist())
    # The generated part is what the same request without echo returns; offsets run over prompt + completion.
    assert choice["text"] == _detokenize(fp32_server, PROMPT_IDS) + plain["text"]
    for key in ("tokens", "token_logprobs", "top_logprobs"):
        assert logprobs[key][prompt_len:] == plain["logprobs"][key]
    offsets = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(logprobs["tokens"]))]
    assert logprobs["text_offset"] == offsets


def test_a_token_id_prompt_echoes_its_decoded_text(fp32_server):
    choice = _complete(fp32_server, prompt=PROMPT_IDS, echo=True, max_tokens=2).json()["choices"][0]
    assert choice["text"].startswith(_detokenize(fp32_server, PROMPT_IDS))
    assert choice["logprobs"] is None


def test_max_tokens_0_with_echo_returns_just_the_prompt(fp32_server, reference):
    resp = _complete(fp32_server, prompt=[PROMPT_IDS, PROMPT_IDS[:4]], echo=True, max_tokens=0, logprobs=1)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    texts = [_detokenize(fp32_server, PROMPT_IDS), _detokenize(fp32_server, PROMPT_IDS[:4])]
    assert [c["text"] for c in body["choices"]] == texts
    assert [c["finish_reason"] for c in body["choices"]] == ["length", "length"]
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] == len(PROMPT_IDS) + 4
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(PROMPT_IDS)
    expected = reference.prompt_logprobs(PROMPT_IDS)
    assert_close(logprobs["token_logprobs"], [None] + [expected[i, t].item() for i, t in enumerate(PROMPT_IDS[1:])])


def test_max_tokens_0_without_echo_is_a_400(fp32_server):
    assert_openai_error(_complete(fp32_server, prompt="hi", max_tokens=0), 400, "max_tokens")
    assert_openai_error(_complete(fp32_server, prompt="hi", max_tokens=0, stream=True), 400, "max_tokens")
    assert_openai_error(_complete(fp32_server, prompt="hi", max_tokens=-1, echo=True), 400, "max_tokens")


def test_a_stream_sends_the_prompt_in_each_choice_s_first_chunk(fp32_server):
    fields = {"prompt": [PROMPT_IDS, PROMPT_IDS[:3]], "logprobs": 2, "echo": True, "n": 2, "seed": 3,
              "temperature": 0.8}
    whole = {c["index"]: c for c in _complete(fp32_server, **fields).json()["choices"]}
    chunks = _stream(fp32_server, **fields)
    prompts = {0: _detokenize(fp32_server, PROMPT_IDS), 2: _detokenize(fp32_server, PROMPT_IDS[:3])}
    streamed: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            index = choice["index"]
            if index not in streamed:  # its first chunk carries the prompt and its logprobs
                assert choice["text"].startswith(prompts[index - index % 2])
                assert choice["logprobs"]["token_logprobs"][0] is None
                streamed[index] = {"text": "", "tokens": [], "token_logprobs": [], "top_logprobs": [],
                                   "text_offset": []}
            seen = streamed[index]
            seen["text"] += choice["text"]
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                seen[key] += choice["logprobs"][key]
    assert sorted(streamed) == [0, 1, 2, 3]
    for index, seen in streamed.items():
        assert seen["text"] == whole[index]["text"]
        assert {k: v for k, v in seen.items() if k != "text"} == whole[index]["logprobs"]


def test_a_stream_of_max_tokens_0_is_the_prompt_then_the_finish(fp32_server):
    chunks = _stream(fp32_server, prompt="Once upon", echo=True, max_tokens=0,
                     stream_options={"include_usage": True})
    choices = [c for chunk in chunks for c in chunk["choices"]]
    assert [(c["text"], c["finish_reason"]) for c in choices] == [("Once upon", "length")]
    assert chunks[-1]["usage"]["completion_tokens"] == 0


def test_echo_through_the_openai_client_stream(client):
    stream = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=3, temperature=0, echo=True,
                                       stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    plain = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=3, temperature=0)
    assert text == "Hello" + plain.choices[0].text
