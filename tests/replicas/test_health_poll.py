"""The front's view of its replicas, from the poll of every replica: /health, /metrics and the log
line for each change (scale-ups, scale-downs, failures). A stand-in handle answers the poll, so no
cluster is needed."""

from __future__ import annotations

import logging

import httpx
import pytest

pytest.importorskip("ray", reason="needs ray[serve]: pip install 'llmserve[ray]'")

from llmserve.engine.outputs import EngineStats  # noqa: E402
from llmserve.replicas.client import ReplicaEngine  # noqa: E402
from llmserve.replicas.counters import RoutingCounters, RoutingMetrics  # noqa: E402
from llmserve.replicas.facts import EngineFacts, ReplicaSnapshot  # noqa: E402
from llmserve.server.app import ServerConfig  # noqa: E402
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES  # noqa: E402
from tests.server.live_server import live_server, scrape  # noqa: E402
from tests.timing import wait_until  # noqa: E402


class _Answers:
    def __init__(self, answers: list) -> None:
        self.answers = answers

    def results(self, timeout_s: float | None = None, return_exceptions: bool = False) -> list:
        return list(self.answers)


class StandInHandle:
    """Answers `broadcast("snapshot")` with whatever replicas the test says are live."""

    def __init__(self) -> None:
        self.live: list = []

    def options(self, **_) -> StandInHandle:
        return self

    def broadcast(self, method: str) -> _Answers:
        assert method == "snapshot"
        return _Answers(self.live)


def snapshot(name: str, running: int) -> ReplicaSnapshot:
    return ReplicaSnapshot(name, 1000, EngineStats(num_running=running, num_waiting=0, kv_cache_usage=0.25))


FACTS = EngineFacts(tokenizer=None, service_classes=DEFAULT_SERVICE_CLASSES, scheduling_policy="classes",
                    model_identity="stand-in", max_model_len=512, vocab_size=256, hidden_size=64, eos_token_ids=(2,),
                    pool_tokens=4096, block_size=16, prefix_root=None)


def test_health_and_metrics_follow_the_live_replicas(caplog):
    handle = StandInHandle()
    handle.live = [snapshot("aaa", 1), snapshot("bbb", 0)]
    counters = RoutingCounters()
    engine = ReplicaEngine(handle, FACTS, counters, poll_interval_s=0.02)
    caplog.set_level(logging.INFO, logger="llmserve.replicas")
    try:
        with live_server(None, ServerConfig(served_model_name="m", warmup=False, memory_bandwidth=1e10),
                         factory=lambda: engine) as live:
            live.state.metrics.registry.register(RoutingMetrics("m", counters))
            assert wait_until(lambda: httpx.get(live.url + "/health", timeout=30).json().get("replicas") == 2)
            values = scrape(live.url)
            assert values['llmserve:num_requests_running{model_name="m",replica="aaa"}'] == 1
            assert values['llmserve:num_requests_running{model_name="m",replica="bbb"}'] == 0
            assert values['llmserve:replicas_live{model_name="m"}'] == 2

            handle.live = []  # every replica gone
            assert wait_until(lambda: httpx.get(live.url + "/health", timeout=30).status_code == 503)
            body = httpx.get(live.url + "/health", timeout=30).json()
            assert body["replicas"] == 0 and body["reason"] == "no engine replica is answering"

            handle.live = [snapshot("ccc", 0)]  # a replacement
            assert wait_until(lambda: httpx.get(live.url + "/health", timeout=30).status_code == 200)
            assert httpx.get(live.url + "/v1/models", timeout=30).json()["data"][0]["max_model_len"] == 512
    finally:
        engine.shutdown()
    changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine replicas:")]
    assert "engine replicas: 2 -> 0 live (-aaa, -bbb)" in changes
    assert "engine replicas: 0 -> 1 live (+ccc)" in changes
