"""Every metric the dashboard and the rules query is one the server exports (or a rule records)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from llmserve.observability import grafana
from llmserve.observability.alerts import render
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES
from tests.observability.load import normal_load
from tests.observability.promql import exported_names, metric_names, recorded_names, rule_exprs
from tests.timing import PATIENCE_S

DEPLOY = Path(__file__).parents[2] / "deploy"
PROMETHEUS_OWN = {"up"}  # what Prometheus itself records for every target


def test_shipped_dashboard_is_the_generated_one():
    assert (DEPLOY / "grafana" / "llmserve.json").read_text() == grafana.render(), \
        "run `python -m llmserve.observability.grafana > deploy/grafana/llmserve.json`"


def _dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "llmserve.json").read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    variables = [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    # label_values(metric{...}, label): the metric is what it reads.
    return exprs + [v.removeprefix("label_values(").rsplit(",", 1)[0] for v in variables]


def test_metric_names_are_read_out_of_promql():
    expr = ('(sum by (le, service_class) (rate(llmserve:a_bucket{x=~"$v", y="b c"}[$__rate_interval])) '
            'or on (service_class) group_left sum(llmserve:b) * 0) / ignoring(le) max_over_time(up[1m:10s]) > 1e9')
    assert metric_names(expr) == {"llmserve:a_bucket", "llmserve:b", "up"}


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_queried_metric_is_exported(observed, source):
    normal_load(observed.url, requests_per_worker=2, workers=2)
    exported = exported_names(httpx.get(observed.url + "/metrics", timeout=PATIENCE_S).text)
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = _dashboard_exprs() if source == "dashboard" else [expr for _, expr in rule_exprs(rules)]
    known = exported | recorded_names(rules) | PROMETHEUS_OWN
    queried = set().union(*(metric_names(e) for e in exprs))
    assert queried and queried <= known, f"not exported: {sorted(queried - known)}"
    assert len(queried) > (15 if source == "dashboard" else 5)


def test_the_rules_for_other_classes_query_the_same_names():
    assert set().union(*(metric_names(e) for _, e in rule_exprs(render(DEFAULT_SERVICE_CLASSES)))) >= {
        "llmserve:service_class_slo_requests_total", "llmserve:kv_cache_usage_perc", "llmserve:engine_up", "up"}
