"""http_requests_total counts every answer by route and status, refusals before any route included;
engine_up follows /health."""

from __future__ import annotations

import httpx

from tests.server.live_server import MODEL_NAME, scrape
from tests.server.test_metrics import LABEL, series
from tests.timing import PATIENCE_S


def _http(handler: str, status: int) -> str:
    return f'llmserve:http_requests_total{{handler="{handler}",{LABEL},status="{status}"}}'


def test_responses_are_counted_by_route_and_status(server):
    url = server.url
    before = scrape(url)
    completions = url + "/v1/completions"
    ok = {"model": MODEL_NAME, "prompt": [1, 2, 3], "max_tokens": 2}
    assert httpx.post(completions, json=ok, timeout=PATIENCE_S).status_code == 200
    assert httpx.post(completions, json=ok, timeout=PATIENCE_S).status_code == 200
    assert httpx.post(completions, json={**ok, "max_tokens": -1}, timeout=PATIENCE_S).status_code == 400
    assert httpx.post(completions, json={**ok, "model": "nope"}, timeout=PATIENCE_S).status_code == 404
    assert httpx.get(url + "/no/such/route/123", timeout=PATIENCE_S).status_code == 404
    too_big = b"x" * (server.state.config.max_request_body + 1)
    assert httpx.post(completions, content=too_big, timeout=PATIENCE_S).status_code == 413
    assert httpx.get(url + "/health", timeout=PATIENCE_S).status_code == 200
    after = scrape(url)

    def delta(handler: str, status: int) -> float:
        key = _http(handler, status)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("/v1/completions", 200) == 2
    assert delta("/v1/completions", 400) == 1
    assert delta("/v1/completions", 404) == 1
    assert delta("/v1/completions", 413) == 1
    assert delta("other", 404) == 1  # an unknown path is not a label value of its own
    assert delta("/health", 200) == 1
    # The scrape that took `before` was answered (and counted) before `after` was taken.
    assert delta("/metrics", 200) == 1
    assert not any("/no/such/route" in key for key in after)


def test_engine_up_follows_health(server):
    assert scrape(server.url)[series("engine_up")] == 1
