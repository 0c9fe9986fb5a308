"""One real local Ray cluster (num_cpus=2) for these tests, running two replicas of a tiny model
(one engine thread each) behind a live front. Starting Ray and loading replicas takes tens of
seconds on a busy machine, so every test shares it; each test is bounded by an alarm."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pytest

from llmserve.server.app import ServerConfig
from tests.server.live_server import live_server, wait_healthy
from tests.timing import classes_without_targets
from tests.tiny_models import save_tiny_chat_model

if TYPE_CHECKING:
    from llmserve.replicas.client import ReplicaEngine
    from llmserve.replicas.counters import RoutingCounters

TEST_BOUND_S = 480  # the drain test starts a cluster of its own
CLUSTER_BOUND_S = 480  # Ray's start and two replicas loading, on a machine shared with other test runs
APP_NAME = "llmserve-test"
MODEL_NAME = "tiny-chat"
ENGINE_ARGS = dict(max_model_len=512, block_size=16, num_kv_blocks=128, max_num_seqs=32,
                   service_classes=classes_without_targets())


class Overran(Exception):
    pass


@contextmanager
def bounded(seconds: int, what: str) -> Iterator[None]:
    """Fail with Overran after `seconds` (SIGALRM: the main thread, where pytest runs tests)."""
    def overran(signum, frame):
        raise Overran(f"{what} took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, overran)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def bounded_test(request) -> Iterator[None]:
    with bounded(TEST_BOUND_S, request.node.name):
        yield


@dataclass
class Replicated:
    url: str
    engine: ReplicaEngine
    counters: RoutingCounters

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


@pytest.fixture(scope="session")
def replicated(tmp_path_factory) -> Iterator[Replicated]:
    pytest.importorskip("ray", reason="needs ray[serve]: pip install 'llmserve[ray]'")
    from llmserve.replicas.counters import RoutingCounters, RoutingMetrics
    from llmserve.replicas.deploy import RayCluster
    from llmserve.replicas.launch import replica_engine_factory
    from llmserve.replicas.plan import ReplicaPlan

    path = tmp_path_factory.mktemp("tiny-chat-replicas")
    save_tiny_chat_model(path)
    config = ServerConfig(served_model_name=MODEL_NAME, engine_args={"model": str(path), **ENGINE_ARGS})
    plan = ReplicaPlan(2, 2, threads_per_replica=1, num_cpus=2, app_name=APP_NAME)
    counters = RoutingCounters()
    with ExitStack() as stack:
        with bounded(CLUSTER_BOUND_S, "starting Ray and two replicas"):
            cluster = RayCluster.connect(plan)
            stack.callback(cluster.stop)
            factory = replica_engine_factory(cluster, config, counters)
            live = stack.enter_context(live_server(None, replace(config, warmup=False), factory=factory,
                                                   wait_ready=False))
            wait_healthy(live.url, timeout=CLUSTER_BOUND_S)
        live.state.metrics.registry.register(RoutingMetrics(MODEL_NAME, counters))
        engine = live.state.engine
        stack.callback(engine.shutdown)
        yield Replicated(live.url, engine, counters)
