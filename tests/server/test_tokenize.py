"""POST /tokenize and /detokenize in vLLM's shapes: the served tokenizer and chat template, exactly."""

from __future__ import annotations

import httpx
import openai
import pytest

from llmserve.server.app import ServerConfig
from tests.server.conftest import MAX_MODEL_LEN
from tests.server.live_server import MODEL_NAME, live_server
from tests.server.test_errors import assert_openai_error

TEXT = "The quick brown fox jumps over the lazy dog. Ünïcödé 🙂!"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def post(server, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def tokenizer(server):
    return server.engine.tokenizer


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_a_prompt_tokenizes_as_the_served_tokenizer_does(server, tokenizer, add_special_tokens):
    resp = post(server, "/tokenize", {"model": MODEL_NAME, "prompt": TEXT, "add_special_tokens": add_special_tokens})
    assert resp.status_code == 200, resp.text
    expected = tokenizer.encode(TEXT, add_special_tokens=add_special_tokens)
    assert resp.json() == {"count": len(expected), "max_model_len": MAX_MODEL_LEN, "tokens": expected,
                           "token_strs": None}


def test_token_strs_are_the_vocabulary_entries_when_asked_for(server, tokenizer):
    body = post(server, "/tokenize", {"prompt": TEXT, "return_token_strs": True}).json()
    assert body["token_strs"] == [tokenizer.backend.id_to_token(i) for i in body["tokens"]]
    assert len(body["token_strs"]) == body["count"]


def test_messages_count_exactly_the_prompt_tokens_a_chat_completion_uses(server, tokenizer):
    body = post(server, "/tokenize", {"model": MODEL_NAME, "messages": MESSAGES}).json()
    assert body["tokens"] == tokenizer.render_chat(MESSAGES)["prompt_token_ids"]
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=1)
    assert chat.usage.prompt_tokens == body["count"]


def test_messages_follow_add_generation_prompt_and_text_parts(server, tokenizer):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    body = post(server, "/tokenize", {"messages": parts, "add_generation_prompt": False}).json()
    plain = [{"role": "user", "content": "Hi there"}]
    assert body["tokens"] == tokenizer.render_chat(plain, add_generation_prompt=False)["prompt_token_ids"]
    assert body["count"] < len(tokenizer.render_chat(plain)["prompt_token_ids"])


def test_the_openai_client_round_trips_tokenize_and_detokenize(server):
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    tokens = client.post("/tokenize", body={"model": MODEL_NAME, "prompt": TEXT, "add_special_tokens": False},
                         cast_to=object)["tokens"]
    assert client.post("/detokenize", body={"model": MODEL_NAME, "tokens": tokens}, cast_to=object) == {"prompt": TEXT}


def test_detokenize_keeps_special_tokens(server, tokenizer):
    tokens = tokenizer.render_chat(MESSAGES)["prompt_token_ids"]
    resp = post(server, "/detokenize", {"tokens": tokens})
    assert resp.json() == {"prompt": tokenizer.apply_chat_template(MESSAGES)}
    assert post(server, "/detokenize", {"tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize(("tokens", "param"), [
    ([1, 10**6], "tokens"), ([-1], "tokens"), ([2**63], "tokens"), ([1, "2"], "tokens.1"), ("12", "tokens"),
    ([1.5], "tokens.0"),
])
def test_token_ids_outside_the_vocabulary_are_400(server, tokens, param):
    error = assert_openai_error(post(server, "/detokenize", {"model": MODEL_NAME, "tokens": tokens}), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {"model": MODEL_NAME}, "prompt"),
    ("/tokenize", {"prompt": 17}, "prompt"),
    ("/tokenize", {"prompt": "hi", "add_special_tokens": "yes"}, "add_special_tokens"),
    ("/tokenize", {"messages": []}, "messages"),
    ("/tokenize", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0"),
    ("/tokenize", {"messages": MESSAGES, "continue_final_message": True}, "continue_final_message"),
    ("/tokenize", {"messages": MESSAGES, "chat_template": "{{ messages }}"}, "chat_template"),
    ("/detokenize", {"model": MODEL_NAME}, "tokens"),
])
def test_bad_bodies_are_400_naming_the_field(server, path, body, param):
    assert_openai_error(post(server, path, body), 400, param)


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
def test_another_model_name_is_404(server, path):
    body = {"model": "gpt-4", "prompt": "hi", "tokens": [1]}
    assert assert_openai_error(post(server, path, body), 404, "model")["code"] == "model_not_found"


def test_the_api_key_guards_the_tokenizer_routes(engine):
    with live_server(engine, ServerConfig(served_model_name=MODEL_NAME, api_key="s3cret")) as live:
        for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [1]})):
            assert_openai_error(post(live, path, body), 401)
            assert_openai_error(post(live, path, body, headers={"Authorization": "Bearer wrong"}), 401)
            assert post(live, path, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_both_bodies_are_in_the_openapi_document(server):
    document = httpx.get(server.url + "/openapi.json", timeout=30).json()
    schemas = document["components"]["schemas"]
    tokenize = document["paths"]["/tokenize"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in tokenize["anyOf"]] == ["TokenizeCompletionRequest",
                                                                          "TokenizeChatRequest"]
    assert set(schemas["TokenizeCompletionRequest"]["required"]) == {"prompt"}
    assert set(schemas["TokenizeChatRequest"]["required"]) == {"messages"}
    assert set(schemas["DetokenizeRequest"]["required"]) == {"tokens"}
