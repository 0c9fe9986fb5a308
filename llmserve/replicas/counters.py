"""The front's routing counters: requests per replica, prefix-affinity hits, live replicas; and
their Prometheus collector, registered beside the server's own metrics."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llmserve.server.metrics import PREFIX


@dataclass
class RoutingCounters:
    """Updated on the front's event loop and read by scrapes on other threads, hence the lock."""

    requests: Counter[str] = field(default_factory=Counter)  # engine requests per replica
    affinity_hits: int = 0  # sent to the replica that served their prefix before
    affinity_misses: int = 0  # had a known prefix, but went elsewhere (that replica was busy or gone)
    live_replicas: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def served(self, replica: str, preferred: str | None) -> None:
        with self.lock:
            self.requests[replica] += 1
            if preferred is None:
                return
            if preferred == replica:
                self.affinity_hits += 1
            else:
                self.affinity_misses += 1

    def snapshot(self) -> tuple[dict[str, int], int, int, int]:
        with self.lock:
            return dict(self.requests), self.affinity_hits, self.affinity_misses, self.live_replicas


class RoutingMetrics(Collector):
    def __init__(self, model_name: str, counters: RoutingCounters) -> None:
        self.model_name = model_name
        self.counters = counters

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        requests, hits, misses, live = self.counters.snapshot()
        per_replica = CounterMetricFamily(PREFIX + "router_requests", "Engine requests routed, by replica.",
                                          labels=["model_name", "replica"])
        for replica, count in sorted(requests.items()):
            per_replica.add_metric([self.model_name, replica], float(count))
        yield per_replica
        affinity = CounterMetricFamily(PREFIX + "router_prefix_affinity",
                                       "Requests whose prefix a replica had served before, by whether they went "
                                       "there (hit) or elsewhere because it was busy or gone (miss).",
                                       labels=["model_name", "result"])
        affinity.add_metric([self.model_name, "hit"], float(hits))
        affinity.add_metric([self.model_name, "miss"], float(misses))
        yield affinity
        gauge = GaugeMetricFamily(PREFIX + "replicas_live", "Engine replicas answering.", labels=["model_name"])
        gauge.add_metric([self.model_name], float(live))
        yield gauge
