"""A real Prometheus scrapes a live server under a short bounded load: every dashboard and rule
expression returns data (or is listed with the signal this test does not cause), promtool accepts
the rules, and an overload of p0 fires p0's fast-burn SLO alert (the rules' windows divided by 60).

Bounded: about a minute on a busy 2-core machine; nothing here asserts speed."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from llmserve.observability import grafana
from llmserve.observability.alerts import AlertSettings, render
from tests.observability.conftest import CLASSES
from tests.observability.load import Overload, normal_load
from tests.observability.prometheus import Prometheus, prometheus
from tests.observability.promql import expand, rule_exprs
from tests.timing import PATIENCE_S, wait_until

TIME_SCALE = 60  # 5m -> 5s, 1h -> 1m, 6h -> 6m
# Rule expressions that are empty unless something happens that this test does not cause.
NOT_CAUSED = {
    "LLMServeQueueGrowing/": "needs the engine's queue to grow for 5 (scaled) minutes; the queue limit holds it "
                             "near full, so it fires only now and then",
    "LLMServeKVCacheNearlyFull/": "needs a KV pool over 95% full; the load uses a few blocks of 256",
    "LLMServeHighErrorRatio/": "needs 5xx answers; nothing here fails",
    "LLMServeEngineDown/": "needs the server or its engine down",
    "LLMServeSLOFastBurn/p1": "the overload is of p0 only",
    "LLMServeSLOSlowBurn/p1": "the overload is of p0 only",
    "LLMServeSLOFastBurn/p2": "the overload is of p0 only",
    "LLMServeSLOSlowBurn/p2": "the overload is of p0 only",
}
FIRING_P0 = 'ALERTS{alertname="LLMServeSLOFastBurn", service_class="p0", alertstate="firing"}'


def _scrapes_so_far(prom: Prometheus) -> float:
    result = prom.query('count_over_time(up{job="llmserve"}[10m])')
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "alerts-scaled.yml"
    path.write_text(render(CLASSES, AlertSettings(time_scale=TIME_SCALE)))
    return path


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_accepts_the_scaled_rules(rules_file):
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True,
                            timeout=PATIENCE_S)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_real_prometheus_reads_every_query_and_fires_the_p0_alert(observed, rules_file, tmp_path):
    target = observed.url.removeprefix("http://")
    with prometheus(target, rules_file, tmp_path) as prom:
        assert wait_until(prom.targets_up), "prometheus never scraped the server"
        statuses = normal_load(observed.url)
        assert set(statuses) == {200}
        assert wait_until(lambda: _scrapes_so_far(prom) >= 3)  # rates need a few points after the load
        with Overload(observed.url) as overload:
            fired = wait_until(lambda: bool(prom.query(FIRING_P0)), timeout=PATIENCE_S)
            assert fired, f"p0's fast burn did not fire; statuses {sorted(set(overload.statuses))}"
            # While the overload still runs, every window holds traffic.
            empty_dashboard = [e for e in grafana.queries() if not prom.query(expand(e, "5m"))]
            rules = [(name, expr) for name, expr in rule_exprs(rules_file.read_text())]
            empty_rules = [name for name, expr in rules if not prom.query(expr)]
        assert 429 in overload.statuses and 200 in overload.statuses
    assert empty_dashboard == [], "dashboard queries without data"
    assert set(empty_rules) <= set(NOT_CAUSED), f"rules without data: {sorted(set(empty_rules) - set(NOT_CAUSED))}"
    assert len(rules) == 14 and "LLMServeSLOFastBurn/p0" not in empty_rules


def test_the_overload_is_bounded():
    # The overload thread stops on its own at its limit even if a test fails before stopping it.
    start = time.monotonic()
    with Overload("http://127.0.0.1:9", clients=2, limit_s=0.5) as overload:
        pass
    assert time.monotonic() - start < PATIENCE_S
    assert overload.statuses == []
