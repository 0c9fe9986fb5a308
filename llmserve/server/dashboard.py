"""GET /dashboard: a live page served by the server itself, so a laptop needs no Grafana.

The page (static/dashboard.html and .js) polls GET /dashboard/data every few seconds and draws the
key series with uPlot (static/uPlot.iife.min.js and .css: uPlot 1.6.32, MIT licence in
static/uPlot.LICENSE, from the npm registry's uplot-1.6.32.tgz, sha256 4b8a8191e425...0b5133d),
shipped in the package so the page works offline. The data endpoint reads the same registry
/metrics renders: cumulative counters, gauges and histogram buckets, summed over labels; the page
turns successive snapshots into rates and percentiles, as Prometheus would.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from llmserve.server.app import ServerState

ASSETS = {"dashboard.js": "text/javascript", "uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
API_HANDLERS = ("/v1/", "/tokenize", "/detokenize")

dashboard_router = APIRouter(include_in_schema=False)


def _asset(name: str) -> bytes:
    return resources.files("llmserve.server").joinpath("static", name).read_bytes()


@dashboard_router.get("/dashboard")
async def dashboard_page() -> Response:
    return Response(_asset("dashboard.html"), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-cache"})


@dashboard_router.get("/dashboard/assets/{name}")
async def dashboard_asset(name: str) -> Response:
    if name not in ASSETS:  # a fixed list: no path from the URL reaches the file system
        return JSONResponse({"error": {"message": f"no asset {name!r}", "type": "not_found_error", "param": None,
                                       "code": "not_found"}}, status_code=404)
    return Response(_asset(name), media_type=ASSETS[name], headers={"Cache-Control": "max-age=3600"})


@dashboard_router.get("/dashboard/data")
async def dashboard_data(request: Request) -> JSONResponse:
    state: ServerState = request.app.state.server
    return JSONResponse(snapshot(state.metrics.registry, state.config.served_model_name),
                        headers={"Cache-Control": "no-store"})


class _Samples:
    """The registry's samples, summed over whatever labels a caller does not ask about."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = [(s.name, s.labels, s.value) for family in registry.collect() for s in family.samples]

    def total(self, name: str, where: Callable[[dict[str, str]], bool] = lambda labels: True) -> float:
        return sum(value for sample, labels, value in self.rows if sample == name and where(labels))

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for sample, labels, value in self.rows:
            if sample == name and label in labels:
                out[labels[label]] += value
        return dict(out)

    def buckets(self, name: str) -> dict[str, list[float]]:
        """Cumulative bucket counts, upper bounds ascending (+Inf last)."""
        counts: dict[float, float] = defaultdict(float)
        for sample, labels, value in self.rows:
            if sample == name + "_bucket":
                counts[float(labels["le"])] += value
        bounds = sorted(counts)
        return {"le": [b if b != float("inf") else "+Inf" for b in bounds], "counts": [counts[b] for b in bounds]}


def _is_api(labels: dict[str, str]) -> bool:
    return labels.get("handler", "").startswith(API_HANDLERS)


def snapshot(registry: CollectorRegistry, model_name: str) -> dict[str, Any]:
    s = _Samples(registry)
    p = "llmserve:"
    counters = {
        "api_requests": s.total(p + "http_requests_total", _is_api),
        "api_errors": s.total(p + "http_requests_total", lambda lb: _is_api(lb) and lb["status"].startswith("5")),
        "shed": s.total(p + "service_class_requests_shed_total"),
        "prompt_tokens": s.total(p + "prompt_tokens_total"),
        "generation_tokens": s.total(p + "generation_tokens_total"),
        "preemptions": s.total(p + "num_preemptions_total"),
        "steps": s.total(p + "iteration_tokens_total_count"),
        "step_tokens": s.total(p + "iteration_tokens_total_sum"),
        "step_sequences": s.total(p + "iteration_sequences_sum"),
        "prefix_cache_hits": s.total(p + "prefix_cache_hits_total"),
        "prefix_cache_queries": s.total(p + "prefix_cache_queries_total"),
    }
    gauges = {
        "running": s.total(p + "num_requests_running"),
        "waiting": s.total(p + "num_requests_waiting"),
        "kv_cache_usage": s.total(p + "kv_cache_usage_perc"),
        "bandwidth_utilization": s.total(p + "model_bandwidth_utilization"),
        "engine_up": s.total(p + "engine_up"),
    }
    histograms = {name: s.buckets(p + metric) for name, metric in (
        ("ttft", "time_to_first_token_seconds"), ("itl", "inter_token_latency_seconds"),
        ("e2e", "e2e_request_latency_seconds"))}
    return {"time": time.time(), "model": model_name, "counters": counters, "gauges": gauges,
            "histograms": histograms, "queue_by_class": s.by(p + "service_class_queue_length", "service_class")}
