"""/metrics moves by exactly what known requests contribute."""

from __future__ import annotations

import json

import httpx

from tests.server.live_server import MODEL_NAME, scrape

LABEL = f'model_name="{MODEL_NAME}"'


def series(name: str, extra: str = "") -> str:
    labels = sorted([LABEL, extra] if extra else [LABEL])  # the exposition sorts labels by name
    return f"llmserve:{name}{{{','.join(labels)}}}"


def test_metrics_move_by_known_amounts(server):
    before = scrape(server.url)
    url = server.base_url + "/completions"
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    for prompt, max_tokens in zip(prompts, (4, 6), strict=True):
        resp = httpx.post(url, json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
                                     "ignore_eos": True}, timeout=30)
        assert resp.status_code == 200
    with httpx.stream("POST", url, json={"model": MODEL_NAME, "prompt": [5, 6], "max_tokens": 5, "stream": True,
                                         "ignore_eos": True}, timeout=30) as resp:
        assert [line for line in resp.iter_lines() if line][-1] == "data: [DONE]"
    after = scrape(server.url)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta(series("prompt_tokens_total")) == 3 + 5 + 2
    assert delta(series("generation_tokens_total")) == 4 + 6 + 5
    assert delta(series("request_success_total", 'finished_reason="length"')) == 3
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert delta(series(f"{histogram}_count")) == 3, histogram
        assert delta(series(f"{histogram}_sum")) > 0, histogram
    # One gap between each pair of consecutive tokens: (4-1) + (6-1) + (5-1).
    assert delta(series("inter_token_latency_seconds_count")) == 12
    assert after[series("num_requests_running")] == 0
    assert after[series("num_requests_waiting")] == 0
    assert after[series("kv_cache_usage_perc")] == 0


def test_metrics_text_is_prometheus_exposition(server):
    resp = httpx.get(server.url + "/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds"):
        assert f"# TYPE llmserve:{name} histogram" in text
    for name in ("prompt_tokens", "generation_tokens", "request_success"):
        assert f"# TYPE llmserve:{name}_total counter" in text
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert f"# TYPE llmserve:{name} gauge" in text


def test_prefix_cache_hits_show_in_usage_and_metrics(server):
    url = server.base_url + "/completions"
    prefix = [(37 * i) % 190 + 5 for i in range(40)]  # 2 full 16-token blocks and 8 tokens more
    before = scrape(server.url)

    def complete(prompt: list[int], stream: bool) -> dict:
        body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 3, "ignore_eos": True}
        if not stream:
            return httpx.post(url, json=body, timeout=30).json()["usage"]
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url, json=body, timeout=30) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
        return json.loads(lines[-1].removeprefix("data: "))["usage"]

    first = complete(prefix + [1, 2, 3], stream=False)
    second = complete(prefix + [4, 5], stream=False)
    third = complete(prefix + [6], stream=True)
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["prompt_tokens_details"] == {"cached_tokens": 32}
    assert third["prompt_tokens_details"] == {"cached_tokens": 32}
    after = scrape(server.url)

    def delta(name: str) -> float:
        return after[series(name)] - before.get(series(name), 0.0)

    assert delta("prefix_cache_queries_total") == 43 + 42 + 41
    assert delta("prefix_cache_hits_total") == 32 + 32
    assert 0 < after[series("prefix_cache_hit_rate")] <= 1


def test_a_shed_request_is_shed_against_each_target_of_its_class():
    from llmserve.engine.outputs import EngineStats
    from llmserve.server.metrics import ServerMetrics
    from llmserve.service_classes import DEFAULT_SERVICE_CLASSES

    metrics = ServerMetrics("m", lambda: EngineStats(0, 0, 0.0))
    p0, p3 = DEFAULT_SERVICE_CLASSES[0], DEFAULT_SERVICE_CLASSES[3]
    metrics.record_shed(p0, "predicted_wait")
    metrics.record_shed(p3, "queue_full")  # p3 has no target: shed, but no SLO verdict
    text = metrics.render()[0].decode()
    for target in ("ttft", "e2e"):
        assert ('llmserve:service_class_slo_requests_total{model_name="m",result="shed",service_class="p0",'
                f'target="{target}"}} 1.0') in text
    assert 'service_class="p3",target=' not in text
    assert 'llmserve:service_class_requests_shed_total{model_name="m",reason="queue_full",service_class="p3"} 1.0' \
        in text
