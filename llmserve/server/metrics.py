"""Prometheus metrics in vLLM's naming under an `llmserve:` prefix, each labelled with model_name.

Per-request figures are recorded once, when a request ends (`RequestRecord`); engine gauges are
read at scrape time so they are never stale. Each server owns its registry: no module globals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from llmserve.engine.outputs import EngineStats
from llmserve.server.step_metrics import StepMetrics

if TYPE_CHECKING:
    from llmserve.server.response_cache import ResponseCacheStats
    from llmserve.service_classes import ServiceClass

PREFIX = "llmserve:"
# Buckets as vLLM uses them: fine below a second, where interactive latency lives.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0)


@dataclass
class RequestRecord:
    """What one finished request contributes to the metrics."""

    prompt_tokens: int
    generation_tokens: int
    finish_reason: str | None  # stop | length | abort | error
    e2e_latency: float
    ttft: float | None = None
    queue_time: float | None = None
    inter_token_latencies: list[float] = field(default_factory=list)
    service_class: ServiceClass | None = None


EngineStatsSource = Callable[[], "EngineStats | Mapping[str, EngineStats] | None"]


class _EngineGauges(Collector):
    """The engine's gauges; a replicated server's engine reports one EngineStats per replica, and
    each then carries a `replica` label."""

    def __init__(self, model_name: str, stats: EngineStatsSource) -> None:
        self.model_name = model_name
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.stats()
        if isinstance(stats, Mapping):
            labels = ["model_name", "replica"]
            series = [([self.model_name, replica], s) for replica, s in sorted(stats.items())]
        else:
            labels = ["model_name"]
            series = [([self.model_name], stats or EngineStats(0, 0, 0.0))]
        for name, doc, value in (
            ("num_requests_running", "Requests in the running batch.", lambda s: s.num_running),
            ("num_requests_waiting", "Requests waiting to be scheduled.", lambda s: s.num_waiting),
            ("kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).", lambda s: s.kv_cache_usage),
            ("prefix_cache_hit_rate", "Prompt tokens found in the prefix cache over those looked up, since start.",
             lambda s: s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0),
        ):
            gauge = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
            for label_values, s in series:
                gauge.add_metric(label_values, float(value(s)))
            yield gauge
        for name, doc, value in (
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", lambda s: s.prefix_cache_queries),
            ("prefix_cache_hits", "Prompt tokens whose KV was found in the prefix cache.",
             lambda s: s.prefix_cache_hits),
            ("spec_decode_num_drafts", "Speculative verifications of a sequence with drafts.",
             lambda s: s.spec_decode_num_drafts),
            ("spec_decode_num_draft_tokens", "Draft tokens proposed and verified.",
             lambda s: s.spec_decode_num_draft_tokens),
            ("spec_decode_num_accepted_tokens", "Draft tokens the target model accepted.",
             lambda s: s.spec_decode_num_accepted_tokens),
        ):
            counter = CounterMetricFamily(PREFIX + name, doc, labels=labels)
            for label_values, s in series:
                counter.add_metric(label_values, float(value(s)))
            yield counter


class _QueueGauges(Collector):
    """The server's queue per service class: requests without a first token, and their predicted wait."""

    def __init__(self, model_name: str, queue: Callable[[], list[tuple[str, int, float]]]) -> None:
        self.model_name = model_name
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = self.queue()
        labels = ["model_name", "service_class"]
        length = GaugeMetricFamily(PREFIX + "service_class_queue_length",
                                   "Requests of a class waiting for their first token.", labels=labels)
        wait = GaugeMetricFamily(PREFIX + "service_class_predicted_wait_seconds",
                                 "Predicted queueing delay for a new request of a class.", labels=labels)
        for name, queued, predicted in rows:
            length.add_metric([self.model_name, name], float(queued))
            wait.add_metric([self.model_name, name], predicted)
        yield length
        yield wait


class _ResponseCacheMetrics(Collector):
    """The exact-match response cache's counters, when it is on."""

    def __init__(self, model_name: str, stats: Callable[[], ResponseCacheStats | None]) -> None:
        self.model_name = model_name
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.stats()
        if stats is None:
            return
        for name, doc, value in (
            ("response_cache_lookups", "Cacheable requests looked up in the response cache.", stats.lookups),
            ("response_cache_hits", "Requests answered from the response cache.", stats.hits),
            ("response_cache_evictions", "Entries dropped from the in-memory response cache to make room.",
             stats.evictions),
            ("response_cache_errors", "Failed calls to the response cache's Redis, each a miss or a dropped write.",
             stats.errors),
        ):
            counter = CounterMetricFamily(PREFIX + name, doc, labels=["model_name"])
            counter.add_metric([self.model_name], float(value))
            yield counter
        gauge = GaugeMetricFamily(PREFIX + "response_cache_bytes", "Bytes held by the in-memory response cache "
                                  "(with Redis: bytes this server has written).", labels=["model_name"])
        gauge.add_metric([self.model_name], float(stats.stored_bytes))
        yield gauge


class ServerMetrics:
    def __init__(self, model_name: str, stats: EngineStatsSource,
                 queue: Callable[[], list[tuple[str, int, float]]] = list,
                 response_cache: Callable[[], ResponseCacheStats | None] = lambda: None,
                 bandwidth: Callable[[], float | None] = lambda: None, healthy: Callable[[], bool] = lambda: True,
                 ) -> None:
        """`bandwidth`: the device's memory bandwidth in bytes/s, None while unknown; `healthy`: what
        /health says (the engine is built, warmed up and its loop alive)."""
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)

        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between consecutive output tokens.",
                             ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "End-to-end request latency.", REQUEST_BUCKETS)
        self.queue = histogram("request_queue_time_seconds", "Time a request waited before it was first scheduled.",
                               REQUEST_BUCKETS)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=self.registry)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", labels,
                                         registry=self.registry)
        self.success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                               labels + ["finished_reason"], registry=self.registry)
        self.http = Counter(PREFIX + "http_requests", "HTTP responses by route and status code.",
                            labels + ["handler", "status"], registry=self.registry)
        self.engine_up = Gauge(PREFIX + "engine_up", "1 when the engine is loaded, warmed up and its loop "
                               "runs (as /health's 200), else 0.", labels, registry=self.registry)
        self.engine_up.labels(model_name).set_function(lambda: float(healthy()))
        self.registry.register(_EngineGauges(model_name, stats))
        self.registry.register(_ResponseCacheMetrics(model_name, response_cache))
        self.registry.register(StepMetrics(model_name, stats, bandwidth))
        self._class_metrics(queue)

    def _class_metrics(self, queue: Callable[[], list[tuple[str, int, float]]]) -> None:
        labels = ["model_name", "service_class"]
        self.class_ttft = Histogram(PREFIX + "service_class_time_to_first_token_seconds",
                                    "Time to first token, by service class.", labels, buckets=TTFT_BUCKETS,
                                    registry=self.registry)
        self.class_itl = Histogram(PREFIX + "service_class_inter_token_latency_seconds",
                                   "Time between consecutive output tokens, by service class.", labels,
                                   buckets=ITL_BUCKETS, registry=self.registry)
        self.class_e2e = Histogram(PREFIX + "service_class_e2e_request_latency_seconds",
                                   "End-to-end request latency, by service class.", labels, buckets=REQUEST_BUCKETS,
                                   registry=self.registry)
        self.slo = Counter(PREFIX + "service_class_slo_requests",
                           "Requests of a class with a latency target that ended, by whether they met it "
                           "(a failed request misses; a refused one is shed).", labels + ["target", "result"],
                           registry=self.registry)
        self.shed = Counter(PREFIX + "service_class_requests_shed", "Requests refused with 429, by class and reason.",
                            labels + ["reason"], registry=self.registry)
        self.registry.register(_QueueGauges(self.model_name, queue))

    def record_http(self, handler: str, status: str) -> None:
        self.http.labels(self.model_name, handler, status).inc()

    def record_shed(self, cls: ServiceClass, reason: str) -> None:
        """A refused request also misses each of its class's targets, as result="shed": the caller got
        no answer within them, and an SLO's error budget must see overload that shedding hides."""
        self.shed.labels(self.model_name, cls.name, reason).inc()
        for target, bound in (("ttft", cls.ttft_target), ("e2e", cls.e2e_target)):
            if bound is not None:
                self.slo.labels(self.model_name, cls.name, target, "shed").inc()

    def record(self, record: RequestRecord) -> None:
        name = self.model_name
        self.prompt_tokens.labels(name).inc(record.prompt_tokens)
        self.generation_tokens.labels(name).inc(record.generation_tokens)
        self.e2e.labels(name).observe(record.e2e_latency)
        if record.ttft is not None:
            self.ttft.labels(name).observe(record.ttft)
        if record.queue_time is not None:
            self.queue.labels(name).observe(record.queue_time)
        itl = self.itl.labels(name)
        for gap in record.inter_token_latencies:
            itl.observe(gap)
        if record.finish_reason in ("stop", "length", "abort", "error"):
            self.success.labels(name, record.finish_reason).inc()
        if record.service_class is not None:
            self._record_class(record, record.service_class)

    def _record_class(self, record: RequestRecord, cls: ServiceClass) -> None:
        labels = (self.model_name, cls.name)
        if record.ttft is not None:
            self.class_ttft.labels(*labels).observe(record.ttft)
        self.class_e2e.labels(*labels).observe(record.e2e_latency)
        itl = self.class_itl.labels(*labels)
        for gap in record.inter_token_latencies:
            itl.observe(gap)
        if record.finish_reason == "abort":
            return  # the client left: no verdict on the target
        failed = record.finish_reason == "error"
        for target, bound, value in (("ttft", cls.ttft_target, record.ttft), ("e2e", cls.e2e_target,
                                                                             record.e2e_latency)):
            if bound is not None:
                met = not failed and value is not None and value <= bound
                self.slo.labels(*labels, target, "met" if met else "missed").inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
