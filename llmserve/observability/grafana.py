"""The Grafana dashboard (deploy/grafana/llmserve.json), written as code so every query is in one
place that tests can read: `python -m llmserve.observability.grafana > deploy/grafana/llmserve.json`.

Grafana 10 and newer; a Prometheus data source chosen by the `datasource` variable, and
`model_name`, `service_class` and `replica` variables (a missing `replica` label matches All).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

SEL = 'model_name=~"$model_name", replica=~"$replica"'
CLS = SEL + ', service_class=~"$service_class"'
WINDOW = "$__rate_interval"
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    width: int = 8


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def rate(metric: str, selector: str = SEL) -> str:
    return f"rate({metric}{{{selector}}}[{WINDOW}])"


def ratio(part: str, whole: str, by: str = "") -> str:
    """sum(rate(part)) / sum(rate(whole)); a missing `part` series reads 0 where `whole` has traffic."""
    group = f" by ({by})" if by else ""
    return f"(sum{group} ({part}) or sum{group} ({whole}) * 0) / sum{group} ({whole})"


def quantiles(histogram: str, selector: str = SEL, by: str = "", legend: str = "") -> tuple[Query, ...]:
    group = f"le, {by}" if by else "le"
    return tuple(Query(f"histogram_quantile({q}, sum by ({group}) ({rate(histogram + '_bucket', selector)}))",
                       f"{legend}p{round(q * 100)}") for q in QUANTILES)


def _traffic() -> Row:
    api = SEL + ', handler=~"/v1/.*|/tokenize|/detokenize"'
    failed = api + ', status=~"5.."'
    return Row("Traffic", (
        Panel("Requests by status", (Query(f"sum by (status) ({rate('llmserve:http_requests_total', api)})",
                                           "{{status}}"),), "reqps", "API responses per second by HTTP status."),
        Panel("Finished requests by reason and 5xx ratio", (
            Query(f"sum by (finished_reason) ({rate('llmserve:request_success_total')})", "{{finished_reason}}"),
            Query(ratio(rate("llmserve:http_requests_total", failed), rate("llmserve:http_requests_total", api)),
                  "5xx ratio"),
        ), "short", "Engine requests ended per second, by finish reason; the share of API answers that were 5xx."),
        Panel("Token throughput", (
            Query(f"sum ({rate('llmserve:prompt_tokens_total')})", "prompt tokens/s"),
            Query(f"sum ({rate('llmserve:generation_tokens_total')})", "generated tokens/s"),
        ), "short"),
    ))


def _latency() -> Row:
    panels = []
    for title, overall, per_class in (
        ("TTFT", "llmserve:time_to_first_token_seconds", "llmserve:service_class_time_to_first_token_seconds"),
        ("ITL", "llmserve:inter_token_latency_seconds", "llmserve:service_class_inter_token_latency_seconds"),
        ("E2E latency", "llmserve:e2e_request_latency_seconds", "llmserve:service_class_e2e_request_latency_seconds"),
    ):
        panels.append(Panel(title, quantiles(overall), "s", f"{title} at p50, p90 and p99, every class together."))
        panels.append(Panel(f"{title} by service class", quantiles(per_class, CLS, "service_class",
                                                                   "{{service_class}} "), "s"))
    return Row("Latency", tuple(panels))


def _slo() -> Row:
    slo = "llmserve:service_class_slo_requests_total"
    return Row("Service classes", (
        Panel("SLO attainment by class", (Query(ratio(rate(slo, CLS + ', result="met"'), rate(slo, CLS),
                                                      "service_class, target"),
                                                "{{service_class}} {{target}}"),), "percentunit",
              "Requests that met their class's target over those judged (missed, failed and shed ones count "
              "against it)."),
        Panel("Shed requests by class and reason", (Query(
            f"sum by (service_class, reason) ({rate('llmserve:service_class_requests_shed_total', CLS)})",
            "{{service_class}} {{reason}}"),), "reqps", "429s per second."),
        Panel("Queue by class and predicted wait", (
            Query(f"sum by (service_class) (llmserve:service_class_queue_length{{{CLS}}})", "{{service_class}} queued"),
            Query(f"max by (service_class) (llmserve:service_class_predicted_wait_seconds{{{CLS}}})",
                  "{{service_class}} predicted wait (s)"),
        ), "short"),
    ))


def _engine() -> Row:
    tokens, seqs = "llmserve:iteration_tokens_total", "llmserve:iteration_sequences"
    return Row("Engine", (
        Panel("Running and waiting requests", (
            Query(f"sum (llmserve:num_requests_running{{{SEL}}})", "running"),
            Query(f"sum (llmserve:num_requests_waiting{{{SEL}}})", "waiting"),
        ), "short"),
        Panel("KV cache usage", (Query(f"llmserve:kv_cache_usage_perc{{{SEL}}}", "{{model_name}} {{replica}}"),),
              "percentunit"),
        Panel("Preemptions", (Query(f"sum ({rate('llmserve:num_preemptions_total')})", "preemptions/s"),), "short"),
        Panel("Tokens per step", (
            Query(f"sum ({rate(tokens + '_sum')}) / sum ({rate(tokens + '_count')})", "mean"),
            *quantiles(tokens),
        ), "short", "Tokens one engine step runs (prompt chunks and decodes): batching efficiency."),
        Panel("Sequences per step", (
            Query(f"sum ({rate(seqs + '_sum')}) / sum ({rate(seqs + '_count')})", "mean"),
            *quantiles(seqs),
        ), "short"),
        Panel("Engine steps", (Query(f"sum ({rate(tokens + '_count')})", "steps/s"),), "short"),
    ))


def _caches_and_hardware() -> Row:
    return Row("Caches and hardware", (
        Panel("Prefix-cache hit rate", (Query(ratio(rate("llmserve:prefix_cache_hits_total"),
                                                    rate("llmserve:prefix_cache_queries_total")),
                                              "prompt tokens from the cache"),), "percentunit"),
        Panel("Response-cache hit rate", (Query(ratio(rate("llmserve:response_cache_hits_total"),
                                                      rate("llmserve:response_cache_lookups_total")),
                                                "hits / lookups"),), "percentunit",
              "Only with --response-cache."),
        Panel("Model bandwidth utilisation", (Query(f"llmserve:model_bandwidth_utilization{{{SEL}}}",
                                                    "{{model_name}} {{replica}}"),), "percentunit",
              "Model-weight bytes read per second over the device's memory bandwidth (measured by a copy at "
              "start, or --memory-bandwidth)."),
        Panel("Engine up", (Query(f"llmserve:engine_up{{{SEL}}}", "{{model_name}} {{replica}}"),), "short"),
    ))


ROWS = (_traffic, _latency, _slo, _engine, _caches_and_hardware)


def queries() -> list[str]:
    """Every PromQL expression of the dashboard, variables unexpanded."""
    return [q.expr for make in ROWS for panel in make().panels for q in panel.queries]


def _variable(name: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
            "sort": 1}


def _panel(panel: Panel, ident: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": ident, "type": "timeseries", "title": panel.title, "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": {"lineWidth": 1, "fillOpacity": 10}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + i), "expr": q.expr, "legendFormat": q.legend, "range": True,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, q in enumerate(panel.queries)],
    }


def dashboard() -> dict[str, Any]:
    panels, ident, y = [], 1, 0
    for make in ROWS:
        row = make()
        panels.append({"id": ident, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        ident, y, x = ident + 1, y + 1, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(panel, ident, x, y))
            ident, x = ident + 1, x + panel.width
        y += 8
    templating = [
        {"name": "datasource", "label": "data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        _variable("model_name", "label_values(llmserve:num_requests_running, model_name)"),
        _variable("service_class", 'label_values(llmserve:service_class_e2e_request_latency_seconds_count'
                                   '{model_name=~"$model_name"}, service_class)'),
        _variable("replica", 'label_values(llmserve:num_requests_running{model_name=~"$model_name"}, replica)'),
    ]
    return {"title": "llmserve", "uid": "llmserve", "tags": ["llmserve", "llm"], "editable": True,
            "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
            "timezone": "browser", "graphTooltip": 1, "templating": {"list": templating}, "panels": panels,
            "annotations": {"list": []}, "links": []}


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
