"""GET /dashboard: the page and its vendored assets, the JSON it polls, and the page itself in a
real headless Chromium while requests run (skipped where Chromium is missing)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import threading

import httpx
import pytest

from tests.server.live_server import MODEL_NAME, scrape
from tests.server.test_metrics import series
from tests.timing import PATIENCE_S

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def test_page_and_assets_are_served(server):
    page = httpx.get(server.url + "/dashboard", timeout=PATIENCE_S)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/assets/uPlot.iife.min.js" in page.text and "/dashboard/assets/dashboard.js" in page.text
    for name, kind in (("uPlot.iife.min.js", "text/javascript"), ("uPlot.min.css", "text/css"),
                       ("dashboard.js", "text/javascript")):
        asset = httpx.get(f"{server.url}/dashboard/assets/{name}", timeout=PATIENCE_S)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
    assert "uPlot (v1.6.32)" in httpx.get(server.url + "/dashboard/assets/uPlot.iife.min.js").text[:100]
    for bad in ("nope.js", "..%2Fdashboard.py", "dashboard.html"):
        assert httpx.get(f"{server.url}/dashboard/assets/{bad}", timeout=PATIENCE_S).status_code == 404, bad


def test_data_moves_with_known_requests_and_matches_metrics(server):
    url = server.url
    before = httpx.get(url + "/dashboard/data", timeout=PATIENCE_S).json()
    for prompt, max_tokens in (([4, 5, 6], 3), ([7, 8], 5)):
        resp = httpx.post(url + "/v1/completions", json={"model": MODEL_NAME, "prompt": prompt,
                                                         "max_tokens": max_tokens, "ignore_eos": True},
                          timeout=PATIENCE_S)
        assert resp.status_code == 200
    after = httpx.get(url + "/dashboard/data", timeout=PATIENCE_S).json()
    metrics = scrape(url)

    def delta(key: str) -> float:
        return after["counters"][key] - before["counters"][key]

    assert after["model"] == MODEL_NAME and after["gauges"]["engine_up"] == 1
    assert delta("api_requests") == 2 and delta("api_errors") == 0
    assert delta("prompt_tokens") == 5 and delta("generation_tokens") == 8
    assert delta("steps") == 8 and delta("step_tokens") == (3 + 3 - 1) + (2 + 5 - 1)
    assert after["counters"]["generation_tokens"] == metrics[series("generation_tokens_total")]
    ttft = after["histograms"]["ttft"]
    assert ttft["le"][-1] == "+Inf" and ttft["counts"] == sorted(ttft["counts"])
    earlier = before["histograms"]["ttft"]["counts"]  # empty before this server's first request
    assert ttft["counts"][-1] - (earlier[-1] if earlier else 0) == 2


def _chromium(*args: str) -> subprocess.CompletedProcess:
    # --virtual-time-budget lets the page's timers run ~6 s of page time; fetches to the server pause it.
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=6000", *args], capture_output=True, text=True, timeout=PATIENCE_S * 2)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_the_page_draws_changing_values_in_headless_chromium(server, tmp_path):
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=PATIENCE_S) as client:
            i = 0
            while not stop.is_set():
                client.post(server.base_url + "/completions",
                            json={"model": MODEL_NAME, "prompt": [3 + i % 50, 4, 5], "max_tokens": 6,
                                  "ignore_eos": True, "cache": False})
                i += 1

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        page = server.url + "/dashboard?interval=300"
        dom = _chromium("--dump-dom", page)
        shot = tmp_path / "dashboard.png"
        _chromium("--window-size=1280,900", f"--screenshot={shot}", page)
    finally:
        stop.set()
        thread.join(PATIENCE_S)
    assert dom.returncode == 0, dom.stderr[-2000:]
    readout = re.search(r'<pre id="readout"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert readout, dom.stdout[-2000:]
    state = json.loads(html.unescape(readout.group(1)))
    assert state["polls"] >= 3 and state["points"] >= 2
    answered = state["values"]["requests"][0]
    generated = state["values"]["tokens"][1]
    assert max(answered) > 0 and max(generated) > 0  # requests ran while the page watched
    assert len(set(generated)) > 1 or len(set(answered)) > 1  # and the charts' values changed
    assert dom.stdout.count('class="chart"') == 6 and dom.stdout.count("<canvas") >= 6  # uPlot drew six charts
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
