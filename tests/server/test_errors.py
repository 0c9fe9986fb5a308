"""Bad input gets an OpenAI-shaped 4xx, never a 500 or a traceback, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from llmserve.server.app import ServerConfig
from tests.server.conftest import MAX_MODEL_LEN
from tests.server.live_server import MODEL_NAME, live_server

OK_COMPLETION = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}
OK_CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in resp.text
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/completions", {**OK_COMPLETION, "max_tokens": "lots"}, "max_tokens"),
    ("/completions", {**OK_COMPLETION, "max_tokens": 0}, "max_tokens"),
    ("/completions", {**OK_COMPLETION, "temperature": -1}, "temperature"),
    ("/completions", {**OK_COMPLETION, "temperature": 3.5}, "temperature"),
    ("/completions", {**OK_COMPLETION, "top_p": 0}, "top_p"),
    ("/completions", {**OK_COMPLETION, "n": 0}, "n"),
    ("/completions", {**OK_COMPLETION, "logprobs": 99}, "logprobs"),
    ("/completions", {**OK_COMPLETION, "stream": "yes"}, "stream"),
    ("/completions", {**OK_COMPLETION, "presence_penalty": 5}, "presence_penalty"),
    ("/completions", {"model": MODEL_NAME, "max_tokens": 2}, "prompt"),
    ("/completions", {**OK_COMPLETION, "prompt": []}, "prompt"),
    ("/completions", {**OK_COMPLETION, "prompt": ""}, "prompt"),
    ("/completions", {**OK_COMPLETION, "prompt": [1, 2, 10**9]}, "prompt"),
    ("/completions", {**OK_COMPLETION, "prompt": [1] * (MAX_MODEL_LEN + 10)}, "prompt"),
    ("/completions", {**OK_COMPLETION, "prompt": "word " * 2 * MAX_MODEL_LEN}, "prompt"),
    ("/chat/completions", {"model": MODEL_NAME}, "messages"),
    ("/chat/completions", {**OK_CHAT, "messages": []}, "messages"),
    ("/chat/completions", {**OK_CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ("/chat/completions", {**OK_CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, None),
    ("/chat/completions", {**OK_CHAT, "top_logprobs": 2}, None),
    ("/chat/completions", {**OK_CHAT, "max_completion_tokens": -4}, "max_completion_tokens"),
])
def test_invalid_fields_get_400_naming_the_field(server, path, body, param):
    error = assert_openai_error(httpx.post(server.base_url + path, json=body, timeout=30), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", "\udcff".encode("utf-8", "surrogatepass")])
def test_malformed_json_gets_400(server, raw):
    resp = httpx.post(server.base_url + "/completions", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(resp, 400)


def test_unknown_model_gets_404(server):
    for path, body in (("/completions", OK_COMPLETION), ("/chat/completions", OK_CHAT)):
        resp = httpx.post(server.base_url + path, json={**body, "model": "gpt-9"})
        error = assert_openai_error(resp, 404, "model")
        assert error["code"] == "model_not_found"


def test_unknown_route_and_wrong_method(server):
    assert_openai_error(httpx.get(server.base_url + "/nothing-here"), 404)
    assert_openai_error(httpx.get(server.base_url + "/completions"), 405)


def test_server_keeps_serving_after_bad_requests(server):
    free = server.engine.engine.block_manager.num_blocks
    for _ in range(3):
        httpx.post(server.base_url + "/completions", content=b"{oops")
        httpx.post(server.base_url + "/completions", json={**OK_COMPLETION, "prompt": [1] * 4096})
    resp = httpx.post(server.base_url + "/completions", json=OK_COMPLETION, timeout=30)
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
    assert server.engine.engine.block_manager.num_free_blocks == free


def test_api_key(engine):
    config = ServerConfig(served_model_name=MODEL_NAME, api_key="s3cret")
    with live_server(engine, config) as live:
        url = live.base_url + "/completions"
        error = assert_openai_error(httpx.post(url, json=OK_COMPLETION), 401)
        assert error["code"] == "invalid_api_key"
        assert_openai_error(httpx.post(url, json=OK_COMPLETION, headers={"Authorization": "Bearer wrong"}), 401)
        assert_openai_error(httpx.get(live.base_url + "/models", headers={"Authorization": "s3cret"}), 401)
        ok = httpx.post(url, json=OK_COMPLETION, headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert ok.status_code == 200
        assert httpx.get(live.url + "/health").status_code == 200  # probes need no key
        assert httpx.get(live.url + "/metrics").status_code == 200
