"""`llmserve serve --replicas ...`: the ordinary server, in front of engine replicas on Ray Serve.

Ray starts (or is joined) on the main thread before the socket is bound; the replicas load while
/health answers 503, as the single server's model does.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from llmserve.replicas.client import ReplicaEngine
from llmserve.replicas.counters import RoutingCounters, RoutingMetrics
from llmserve.replicas.deploy import RayCluster
from llmserve.server.launcher import run_server

if TYPE_CHECKING:
    from fastapi import FastAPI

    from llmserve.replicas.plan import ReplicaPlan
    from llmserve.server.app import ServerConfig

logger = logging.getLogger("llmserve.replicas")


def replica_engine_factory(cluster: RayCluster, config: ServerConfig, counters: RoutingCounters):
    def build() -> ReplicaEngine:
        handle = cluster.deploy(config.engine_args, config.warmup, config.chat.chat_template, config.shutdown_timeout)
        facts = handle.facts.remote().result()
        return ReplicaEngine(handle, facts, counters, on_shutdown=cluster.stop)

    return build


def with_routing_metrics(config: ServerConfig, counters: RoutingCounters):
    def register(app: FastAPI) -> None:
        app.state.server.metrics.registry.register(RoutingMetrics(config.served_model_name, counters))

    return register


def run_replicated_server(config: ServerConfig, plan: ReplicaPlan, log_level: str = "info") -> int:
    cluster = RayCluster.connect(plan)
    counters = RoutingCounters()
    # The front warms nothing: each replica warms its own engine before it takes requests.
    front = replace(config, warmup=False)
    try:
        return run_server(front, log_level, replica_engine_factory(cluster, config, counters),
                          extend_app=with_routing_metrics(config, counters))
    finally:
        cluster.stop()
