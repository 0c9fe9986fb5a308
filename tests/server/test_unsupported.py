"""What we do not honour is refused with a 400 naming it, never silently ignored; what asks for
nothing (a field at its default) still passes, and fields nobody knows are ignored, as vLLM does."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai
import pytest

from llmserve.server.protocol import ChatMessage
from llmserve.server.unsupported import CHAT, COMPLETIONS, UNSUPPORTED, refused_fields
from tests.server.live_server import MODEL_NAME
from tests.server.test_errors import assert_openai_error

README = Path(__file__).resolve().parents[2] / "README.md"
PROMPT = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}
CHAT_BODY = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BODIES = {COMPLETIONS: ("/completions", PROMPT), CHAT: ("/chat/completions", CHAT_BODY)}

# A value of each refused field that asks for something we would not do, per endpoint.
REFUSED = {
    COMPLETIONS: {"logit_bias": {"50": 5}, "best_of": 3, "suffix": " end", "use_beam_search": True,
                  "length_penalty": 0.5, "allowed_token_ids": [1, 2], "bad_words": ["no"],
                  "logits_processors": ["x"], "truncate_prompt_tokens": 8, "return_tokens_as_token_ids": True,
                  "add_special_tokens": False, "guided_decoding_backend": "outlines",
                  "guided_whitespace_pattern": " *"},
    CHAT: {"logit_bias": {"50": -100}, "functions": [{"name": "f", "parameters": {}}], "function_call": "auto",
           "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
           "prediction": {"type": "content", "content": "x"}, "store": True, "metadata": {"k": "v"},
           "service_tier": "flex", "web_search_options": {}, "reasoning_effort": "low", "verbosity": "low",
           "moderation": {"mode": "block"}, "prompt_cache_retention": "24h", "prompt_cache_options": {"ttl": 60},
           "use_beam_search": True, "length_penalty": 2.0, "allowed_token_ids": [1], "bad_words": ["no"],
           "logits_processors": ["x"], "truncate_prompt_tokens": 8, "return_tokens_as_token_ids": True,
           "add_special_tokens": True, "continue_final_message": True, "chat_template": "{{ messages }}",
           "chat_template_kwargs": {"enable_thinking": False}, "documents": [{"text": "d"}],
           "guided_decoding_backend": "outlines", "guided_whitespace_pattern": " *", "echo": True},
}
# Values that ask for nothing: a client sending its full default parameter set keeps working.
ACCEPTED = {
    COMPLETIONS: {"logit_bias": {}, "best_of": 1, "suffix": None, "use_beam_search": False, "length_penalty": 1.0,
                  "bad_words": [], "add_special_tokens": True, "user": "someone"},
    CHAT: {"logit_bias": None, "functions": None, "modalities": ["text"], "store": False, "metadata": {},
           "service_tier": "auto", "reasoning_effort": None, "continue_final_message": False,
           "add_special_tokens": False, "chat_template_kwargs": {}, "user": "someone", "echo": False,
           "safety_identifier": "hash", "prompt_cache_key": "k", "some_future_field": 1},
}


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_every_refused_field_has_a_test_value():
    for endpoint in (COMPLETIONS, CHAT):
        assert set(REFUSED[endpoint]) == set(refused_fields(endpoint))


@pytest.mark.parametrize(("endpoint", "field"), [(e, f) for e in (COMPLETIONS, CHAT) for f in REFUSED[e]])
def test_each_refused_field_is_a_400_naming_it(server, endpoint, field):
    path, body = BODIES[endpoint]
    error = assert_openai_error(post(server, path, {**body, field: REFUSED[endpoint][field]}), 400, field)
    assert f"{field} is not supported" in error["message"]


@pytest.mark.parametrize("endpoint", [COMPLETIONS, CHAT])
def test_default_values_and_unknown_fields_pass(server, endpoint):
    path, body = BODIES[endpoint]
    resp = post(server, path, {**body, **ACCEPTED[endpoint]})
    assert resp.status_code == 200, resp.text


def test_best_of_equal_to_n_passes_and_returns_n_choices(client):
    out = client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2, n=2, best_of=2, temperature=0.0)
    assert len(out.choices) == 2
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2, n=2, best_of=4)
    assert caught.value.body["param"] == "best_of"


def test_the_openai_client_s_logit_bias_is_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2, logit_bias={"50": 100})
    assert caught.value.body["param"] == "logit_bias"


@pytest.mark.parametrize(("part", "kind"), [
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "image_url"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "input_audio"),
    ({"type": "file", "file": {"file_id": "file-1"}}, "file"),
    ({"type": "image_url"}, "image_url"),  # whatever its shape
])
@pytest.mark.parametrize("stream", [False, True])
def test_media_parts_say_the_model_takes_text_only(client, part, kind, stream):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=2, stream=stream)
    error = caught.value.body
    assert error["param"] == "messages.1.content.1"
    assert "text only" in error["message"] and kind in error["message"]
    assert "string" not in error["message"]


def test_a_message_s_name_reaches_the_template(server):
    message = ChatMessage.model_validate({"role": "user", "content": "hi", "name": "alice"})
    assert message.as_template_message() == {"role": "user", "content": "hi", "name": "alice"}
    messages = [{"role": "user", "content": "hi", "name": "alice"}]  # the embedded template ignores it
    assert post(server, "/chat/completions", {**CHAT_BODY, "messages": messages}).status_code == 200


def test_the_readme_lists_every_refused_field():
    section = README.read_text(encoding="utf-8").split("### Request fields", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", section))
    missing = {e.field for e in UNSUPPORTED} - listed
    assert not missing, f"the README's request-field section does not list {sorted(missing)}"
