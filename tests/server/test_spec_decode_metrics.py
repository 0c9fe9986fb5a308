"""A server with speculative decoding reports vLLM's spec_decode counters, and its greedy text is unchanged."""

from __future__ import annotations

import httpx
import pytest

from llmserve.engine.async_engine import AsyncEngine
from tests.server.conftest import BLOCK_SIZE, MAX_MODEL_LEN, NUM_BLOCKS
from tests.server.live_server import MODEL_NAME, live_server, scrape

LABEL = f'model_name="{MODEL_NAME}"'
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1}


@pytest.fixture(scope="module")
def spec_server(chat_model_path):
    engine = AsyncEngine.from_args(str(chat_model_path), max_model_len=MAX_MODEL_LEN, block_size=BLOCK_SIZE,
                                   num_kv_blocks=NUM_BLOCKS, speculative_config=NGRAM)
    with live_server(engine) as live:
        yield live
    engine.shutdown()


def _complete(url: str, prompt: list[int]) -> dict:
    resp = httpx.post(url + "/v1/completions", json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": 24,
                                                    "temperature": 0, "ignore_eos": True}, timeout=60)
    assert resp.status_code == 200
    return resp.json()


def test_counters_move_and_text_matches_a_server_without_drafts(spec_server, server):
    prompt = [5, 6, 7, 8, 9, 10, 11, 12] * 4
    before = scrape(spec_server.url)
    spec = _complete(spec_server.url, prompt)
    after = scrape(spec_server.url)
    assert spec["choices"][0]["text"] == _complete(server.url, prompt)["choices"][0]["text"]
    drafted = after[f"llmserve:spec_decode_num_draft_tokens_total{{{LABEL}}}"] - before.get(
        f"llmserve:spec_decode_num_draft_tokens_total{{{LABEL}}}", 0.0)
    accepted = after[f"llmserve:spec_decode_num_accepted_tokens_total{{{LABEL}}}"] - before.get(
        f"llmserve:spec_decode_num_accepted_tokens_total{{{LABEL}}}", 0.0)
    assert drafted > 0 and 0 <= accepted <= drafted
    assert spec["usage"]["completion_tokens"] == 24
