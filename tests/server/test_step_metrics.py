"""/metrics' engine-step series: tokens and sequences per step, preemptions, cache_config_info, bandwidth."""

from __future__ import annotations

import httpx
import pytest

from llmserve.engine.async_engine import AsyncEngine
from llmserve.server.app import ServerConfig
from tests.server.live_server import MODEL_NAME, live_server, scrape
from tests.server.test_metrics import series
from tests.timing import PATIENCE_S, classes_without_targets


def _complete(url: str, prompt: list[int], max_tokens: int, n: int = 1) -> dict:
    resp = httpx.post(url + "/v1/completions", json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
                                                     "n": n, "temperature": 0, "ignore_eos": True},
                      timeout=PATIENCE_S)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_tokens_and_sequences_per_step_add_up(server):
    # Prompts under one 16-token block: nothing of them can come from the prefix cache.
    plan = [([3, 1, 4, 1, 5, 9, 2, 6], 5), ([2, 7, 1, 8, 2, 8], 3), ([1, 6, 1, 8, 0, 3, 3, 9, 8, 8, 7], 1)]
    before = scrape(server.url)
    for prompt, max_tokens in plan:
        _complete(server.url, prompt, max_tokens)
    after = scrape(server.url)

    def delta(name: str) -> float:
        return after[series(name)] - before[series(name)]

    # One request at a time: a prefill step, then a step per further token (the last is never run).
    assert delta("iteration_tokens_total_sum") == sum(len(p) + n - 1 for p, n in plan)
    assert delta("iteration_tokens_total_count") == sum(n for _, n in plan)
    assert delta("iteration_sequences_sum") == delta("iteration_sequences_count") == sum(n for _, n in plan)
    assert after[series("iteration_tokens_total_bucket", 'le="+Inf"')] == after[
        series("iteration_tokens_total_count")]
    # Every step but the 11-token prefill runs at most 8 tokens.
    assert (after[series("iteration_tokens_total_bucket", 'le="8.0"')]
            - before[series("iteration_tokens_total_bucket", 'le="8.0"')]) == sum(n for _, n in plan) - 1


def test_cache_config_info_and_bandwidth_gauges(server):
    _complete(server.url, [5, 4, 3, 2], 4)
    text = httpx.get(server.url + "/metrics", timeout=PATIENCE_S).text
    values = scrape(server.url)
    info = [line for line in text.splitlines() if line.startswith("llmserve:cache_config_info{")]
    assert len(info) == 1 and info[0].endswith(" 1.0")
    for label in ('block_size="16"', 'num_gpu_blocks="256"', 'enable_prefix_caching="True"',
                  f'model_name="{MODEL_NAME}"'):
        assert label in info[0]
    assert "# TYPE llmserve:iteration_tokens_total histogram" in text
    assert "# TYPE llmserve:num_preemptions_total counter" in text
    assert values[series("model_weight_bytes")] == server.engine.engine.weight_bytes_per_step > 0
    assert values[series("memory_bandwidth_bytes_per_second")] > 0
    # A step ran within the last 10 s, so weights were read.
    assert values[series("model_bandwidth_utilization")] > 0


def test_a_given_bandwidth_is_reported_as_is(engine):
    with live_server(engine, ServerConfig(served_model_name=MODEL_NAME, memory_bandwidth=2.5e9)) as live:
        values = scrape(live.url)
    assert values[series("memory_bandwidth_bytes_per_second")] == 2.5e9


@pytest.fixture(scope="module")
def tiny_pool_engine(chat_model_path):
    # 10 blocks of 16 tokens: six 52-token sequences at once (24 blocks) cannot all stay resident.
    eng = AsyncEngine.from_args(str(chat_model_path), max_model_len=128, block_size=16, num_kv_blocks=10,
                                max_num_seqs=8, service_classes=classes_without_targets())
    yield eng
    eng.shutdown()


def test_preemptions_under_a_tiny_kv_pool_are_counted_and_change_no_token(server, tiny_pool_engine):
    prompt = [(13 * i + 7) % 200 + 3 for i in range(12)]
    alone = _complete(server.url, prompt, 40)["choices"][0]["text"]
    with live_server(tiny_pool_engine) as live:
        before = scrape(live.url)
        body = _complete(live.url, prompt, 40, n=6)  # six sequences enter the engine together
        after = scrape(live.url)
    assert [c["text"] for c in body["choices"]] == [alone] * 6
    assert after[series("num_preemptions_total")] > before.get(series("num_preemptions_total"), 0.0)
    assert after[series("kv_cache_usage_perc")] == 0
