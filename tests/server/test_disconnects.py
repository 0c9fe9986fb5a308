"""A client that hangs up on a non-streaming request: its engine requests are aborted, not run to the end."""

from __future__ import annotations

import logging
import time

import pytest

from tests.server.live_server import MODEL_NAME, scrape
from tests.server.raw_http import connect, post_json

STEP_DELAY = 0.05  # per engine step: 400 tokens then take 20 s at the least, however fast the machine


@pytest.fixture
def slow_engine(engine, monkeypatch):
    """Each step waits first, so a long request is surely still running when its client leaves."""
    step = engine.engine.step

    def slow_step():
        time.sleep(STEP_DELAY)
        return step()

    monkeypatch.setattr(engine.engine, "step", slow_step)
    return engine


def _wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _idle(engine) -> bool:
    stats = engine.stats()
    blocks = engine.engine.block_manager
    return stats.num_running == 0 and stats.num_waiting == 0 and blocks.num_free_blocks == blocks.num_blocks


@pytest.mark.parametrize(("endpoint", "body"), [
    ("completions", {"prompt": ["Tell me a story", "And another"]}),  # two engine requests, both aborted
    ("chat/completions", {"messages": [{"role": "user", "content": "Tell me a story"}]}),
])
def test_a_hang_up_aborts_a_non_streaming_request(server, slow_engine, caplog, endpoint, body):
    caplog.set_level(logging.INFO, logger="llmserve.server")
    _wait_until(lambda: _idle(slow_engine), "the engine is idle")
    aborted_before = scrape(server.url).get(f'llmserve:request_success_total{{finished_reason="abort",'
                                            f'model_name="{MODEL_NAME}"}}', 0)
    with connect(server.url) as sock:
        post_json(sock, f"/v1/{endpoint}", {"model": MODEL_NAME, "max_tokens": 400, "ignore_eos": True, **body})
        _wait_until(lambda: slow_engine.stats().num_running > 0, "the request runs")
    # The client is gone: the engine must drop the request (and its KV blocks) long before its
    # 400 tokens, which take 20 s of step delays alone.
    _wait_until(lambda: _idle(slow_engine), "the engine dropped the request and freed its KV blocks")
    lines = [r.getMessage() for r in caplog.records if " disconnected prompt_tokens=" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    aborted = scrape(server.url)[f'llmserve:request_success_total{{finished_reason="abort",model_name="{MODEL_NAME}"}}']
    assert aborted - aborted_before == len(body.get("prompt", [None]))
