"""POST /v1/embeddings: OpenAI's request and response, each embedding equal (1e-4) to transformers'
mean-pooled, L2-normalised AutoModel last_hidden_state over the tiny model in float32; float and
base64 encodings; the 400s, 401 and 404; the response cache."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

from llmserve.server.app import ServerConfig
from tests.server.fp32_server import assert_close
from tests.server.live_server import MODEL_NAME, live_server, scrape
from tests.server.test_errors import assert_openai_error
from tests.server.test_prompt_logprobs import assert_same_bytes

HIDDEN_SIZE = 64  # tests/tiny_models.py
IDS = [[1, 504, 2113, 314, 260], [9, 28, 1345], [77]]


def _embed(server, headers=None, **fields) -> httpx.Response:
    return httpx.post(server.base_url + "/embeddings", json={"model": MODEL_NAME, **fields}, headers=headers,
                      timeout=60)


def _tokens(server, text: str) -> list[int]:
    return httpx.post(server.url + "/tokenize", json={"prompt": text}, timeout=30).json()["tokens"]


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.fixture(scope="module")
def client(fp32_server):
    return openai.OpenAI(base_url=fp32_server.base_url, api_key="unused", max_retries=0)


def test_token_id_inputs_embed_as_transformers_pools(fp32_server, reference):
    resp = _embed(fp32_server, input=IDS)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) >= {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == MODEL_NAME
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1), ("embedding", 2)]
    for data, ids in zip(body["data"], IDS, strict=True):
        assert len(data["embedding"]) == HIDDEN_SIZE
        assert_close(data["embedding"], reference.embedding(ids))


def test_the_openai_client_gets_strings_embedded(client, fp32_server, reference):
    texts = ["The sea is calm tonight.", "Hello"]
    result = client.embeddings.create(model=MODEL_NAME, input=texts)  # the client asks for base64 by default
    assert [d.index for d in result.data] == [0, 1]
    for data, text in zip(result.data, texts, strict=True):
        assert_close(data.embedding, reference.embedding(_tokens(fp32_server, text)))
    prompt_tokens = sum(len(_tokens(fp32_server, t)) for t in texts)
    assert result.usage.prompt_tokens == result.usage.total_tokens == prompt_tokens


def test_base64_holds_the_same_float32_values(fp32_server):
    floats = _embed(fp32_server, input="Hello there", encoding_format="float").json()["data"][0]["embedding"]
    encoded = _embed(fp32_server, input="Hello there", encoding_format="base64").json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert _floats(encoded) == floats  # float32 values, little-endian, exactly


def test_single_inputs_of_each_kind(fp32_server, reference):
    one_list = _embed(fp32_server, input=IDS[0]).json()["data"]
    assert len(one_list) == 1
    assert_close(one_list[0]["embedding"], reference.embedding(IDS[0]))
    text = _embed(fp32_server, input="Hello", dimensions=HIDDEN_SIZE, user="someone").json()["data"]
    assert_close(text[0]["embedding"], reference.embedding(_tokens(fp32_server, "Hello")))


def test_batched_inputs_equal_lone_ones(fp32_server):
    together = _embed(fp32_server, input=IDS).json()["data"]
    for data, ids in zip(together, IDS, strict=True):
        alone = _embed(fp32_server, input=ids).json()["data"][0]["embedding"]
        assert_close(data["embedding"], alone, 1e-5)


def test_an_embedding_beside_a_completion_leaves_its_tokens_alone(client):
    before = client.completions.create(model=MODEL_NAME, prompt="Once upon", max_tokens=8, temperature=0)
    client.embeddings.create(model=MODEL_NAME, input=["Once upon"] * 4)  # runs and leaves its blocks
    after = client.completions.create(model=MODEL_NAME, prompt="Once upon", max_tokens=8, temperature=0)
    assert after.choices[0].text == before.choices[0].text


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": [""]}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": ["a", 5]}, "input"),
    ({"input": [[1, 2], ["a"]]}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({}, "input"),
    ({"input": "hi", "dimensions": 32}, "dimensions"),
    ({"input": "hi", "dimensions": 0}, "dimensions"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "hi", "priority": "no-such-class"}, "priority"),
    ({"input": [[1, 10**9]]}, "input"),
    ({"input": [5] * 600}, "input"),
])
def test_bad_requests_are_400s_naming_the_field(fp32_server, fields, param):
    assert_openai_error(_embed(fp32_server, **fields), 400, param)


def test_the_dimensions_refusal_says_the_size(fp32_server):
    error = assert_openai_error(_embed(fp32_server, input="hi", dimensions=HIDDEN_SIZE + 1), 400, "dimensions")
    assert str(HIDDEN_SIZE) in error["message"]


def test_an_unknown_model_is_a_404(fp32_server):
    assert_openai_error(_embed(fp32_server, input="hi", model="other"), 404, "model")


def test_the_api_key_guards_it(fp32_engine):
    config = ServerConfig(served_model_name=MODEL_NAME, api_key="sesame")
    with live_server(fp32_engine, config) as live:
        assert_openai_error(_embed(live, input="hi"), 401)
        assert _embed(live, headers={"Authorization": "Bearer sesame"}, input="hi").status_code == 200


def test_the_response_cache_replays_an_embedding(fp32_engine):
    with live_server(fp32_engine, ServerConfig(served_model_name=MODEL_NAME, response_cache="1MiB")) as live:
        for encoding in ("float", "base64"):
            miss = _embed(live, input=["cache me", "too"], encoding_format=encoding)
            hit = _embed(live, input=["cache me", "too"], encoding_format=encoding)
            assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
            assert_same_bytes(miss, hit)
        assert _embed(live, input=["cache me", "too"], cache=False).headers["x-cache"] == "bypass"


def test_an_embedding_is_served_and_measured_like_a_prompt(fp32_server):
    before = scrape(fp32_server.url)
    assert _embed(fp32_server, input=IDS[:2]).status_code == 200
    after = scrape(fp32_server.url)

    def delta(name: str, extra: str = "") -> float:
        labels = ",".join(sorted(filter(None, [f'model_name="{MODEL_NAME}"', extra])))
        key = f"llmserve:{name}{{{labels}}}"
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("prompt_tokens_total") == 8 and delta("generation_tokens_total") == 0
    assert delta("request_success_total", 'finished_reason="length"') == 2
    # Its prompt computed is its first (and only) result: it counts towards the drain rate the shedder predicts by.
    assert delta("time_to_first_token_seconds_count") == 2
    assert fp32_server.state.shedder.total_queued == 0 and fp32_server.state.shedder.drain_rate() is not None


def test_a_full_queue_sheds_embeddings_too(fp32_engine):
    with live_server(fp32_engine, ServerConfig(served_model_name=MODEL_NAME, max_queued_requests=2)) as live:
        held = [live.state.shedder.enter(0, 10) for _ in range(2)]  # what two queued prompts would hold
        resp = _embed(live, input="hi")
        assert_openai_error(resp, 429)
        assert int(resp.headers["retry-after"]) >= 1
        for ticket in held:
            ticket.leave(served=False)
        assert _embed(live, input="hi").status_code == 200


def test_an_input_may_fill_the_whole_context(fp32_server, reference):
    ids = [(7 * i) % 300 + 5 for i in range(512)]  # max_model_len: nothing is generated, so all of it fits
    data = _embed(fp32_server, input=ids).json()["data"]
    assert_close(data[0]["embedding"], reference.embedding(ids))
    assert_openai_error(_embed(fp32_server, input=ids + [5]), 400, "input")
