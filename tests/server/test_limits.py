"""Request bodies: capped in size (413), read within a deadline (408), and tokenized off the event loop."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from llmserve.server.app import ServerConfig
from tests.server.live_server import MODEL_NAME, live_server
from tests.server.raw_http import chunk, connect, head, read_until_closed, status_and_json

LIMIT = 64 << 10


@pytest.fixture(scope="module")
def capped(engine):
    with live_server(engine, ServerConfig(served_model_name=MODEL_NAME, max_request_body=LIMIT)) as live:
        yield live


def _wait_for_log(caplog, text: str, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        if lines:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"no log line with {text!r}: {[r.getMessage() for r in caplog.records]}")


def test_a_content_length_over_the_limit_is_refused_unread(capped, caplog):
    caplog.set_level(logging.INFO, logger="llmserve.server")
    with connect(capped.url) as sock:
        sock.sendall(head("/v1/completions", length=LIMIT + 1))  # and not one byte of the body
        status, headers, body = status_and_json(read_until_closed(sock))
    assert status == 413 and headers["connection"] == "close"
    assert body["error"]["code"] == "request_too_large" and body["error"]["type"] == "invalid_request_error"
    assert str(LIMIT) in body["error"]["message"]
    _wait_for_log(caplog, f"413 request_too_large (Content-Length {LIMIT + 1})")


def test_a_chunked_body_is_cut_off_at_the_limit(capped, caplog):
    caplog.set_level(logging.INFO, logger="llmserve.server")
    piece = b"x" * (16 << 10)
    with connect(capped.url) as sock:
        sock.sendall(head("/v1/completions", chunked=True))
        for _ in range(LIMIT // len(piece) + 1):  # one piece past the limit, and no end of body
            sock.sendall(chunk(piece))
        status, headers, body = status_and_json(read_until_closed(sock))
    assert status == 413 and headers["connection"] == "close"
    assert body["error"]["code"] == "request_too_large"
    _wait_for_log(caplog, "413 request_too_large (after")


def test_a_body_under_the_limit_is_read(capped):
    # Far past the tiny model's context, so the engine refuses it: proof that it was read and tokenized.
    prompt = "word " * ((LIMIT - 200) // 5)
    resp = httpx.post(capped.base_url + "/completions", json={"model": MODEL_NAME, "prompt": prompt}, timeout=60)
    assert resp.status_code == 400 and "tokens" in resp.json()["error"]["message"]


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closed(engine, caplog):
    caplog.set_level(logging.INFO, logger="llmserve.server")
    config = ServerConfig(served_model_name=MODEL_NAME, request_read_timeout=0.5)
    with live_server(engine, config) as live, connect(live.url) as sock:
        sock.sendall(head("/v1/completions", length=100) + b'{"model": ')  # then nothing more
        status, headers, body = status_and_json(read_until_closed(sock))
        assert status == 408 and headers["connection"] == "close"
        assert body["error"]["code"] == "request_timeout" and "0.5s" in body["error"]["message"]
        _wait_for_log(caplog, "408 request_timeout (after 10 bytes)")
        # The deadline bounds the body only: a complete request is served as usual.
        ok = httpx.post(live.base_url + "/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2},
                        timeout=60)
        assert ok.status_code == 200


def test_a_client_that_leaves_mid_body_is_one_log_line(capped, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    # uvicorn's own loggers stop at "uvicorn": listen there too, for its "Exception in ASGI application".
    monkeypatch.setattr(logging.getLogger("uvicorn"), "handlers", [caplog.handler])
    with connect(capped.url) as sock:
        sock.sendall(head("/v1/completions", length=100) + b'{"model": ')
        time.sleep(0.2)  # not a timing assumption: the log line is awaited below however long this takes
    _wait_for_log(caplog, "disconnected mid-body after 10 bytes")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert httpx.get(capped.url + "/health", timeout=30).status_code == 200


def test_tokenizing_runs_off_the_event_loop(capped, engine, monkeypatch):
    """While a prompt is being tokenized (held here until /health has answered), the server still
    answers; were tokenizing on the event loop, /health could not answer and this would fail."""
    tokenizer = engine.tokenizer
    entered, release = threading.Event(), threading.Event()
    threads: list[str] = []
    encode = tokenizer.encode

    def held_encode(text: str, *args, **kwargs):
        threads.append(threading.current_thread().name)
        if text.startswith("HOLD"):
            entered.set()
            release.wait(30)
        return encode(text, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", held_encode)
    body = {"model": MODEL_NAME, "prompt": "HOLD " + "word " * 4000, "max_tokens": 1}
    result: list[httpx.Response] = []
    client = threading.Thread(target=lambda: result.append(httpx.post(capped.base_url + "/completions", json=body,
                                                                       timeout=60)))
    client.start()
    try:
        assert entered.wait(30), "the prompt never reached the tokenizer"
        assert httpx.get(capped.url + "/health", timeout=30).status_code == 200
    finally:
        release.set()
        client.join(60)
    assert result and result[0].status_code == 400  # longer than the tiny model's context
    assert threads and all(name.startswith("llmserve-tokenize") for name in threads)


def test_chat_templates_are_rendered_off_the_event_loop(capped, engine, monkeypatch):
    tokenizer = engine.tokenizer
    render = tokenizer.render_chat
    threads: list[str] = []

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return render(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "render_chat", recorded)
    resp = httpx.post(capped.base_url + "/chat/completions", timeout=60,
                      json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert resp.status_code == 200
    assert threads and all(name.startswith("llmserve-tokenize") for name in threads)
