"""What `--replicas` asks of Ray Serve, checked without starting a cluster."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="needs ray[serve]: pip install 'llmserve[ray]'")

from llmserve.replicas.deploy import MAX_ONGOING_REQUESTS, deployment_options, replica_resources  # noqa: E402
from llmserve.replicas.plan import ReplicaPlan  # noqa: E402


def test_a_fixed_count_with_our_router():
    options = deployment_options(ReplicaPlan(3, 3, threads_per_replica=1), {"num_cpus": 1}, 30.0)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["request_router_config"].request_router_class == "llmserve.replicas.router.PrefixAffinityRouter"
    # Engines queue and order their own requests: Ray Serve must not hold them back.
    assert options["max_ongoing_requests"] == MAX_ONGOING_REQUESTS
    assert options["graceful_shutdown_timeout_s"] == 30.0


def test_autoscaling_on_ongoing_requests():
    options = deployment_options(ReplicaPlan(1, 4, target_ongoing_requests=8), {"num_cpus": 1}, 30.0)
    scaling = options["autoscaling_config"]
    assert "num_replicas" not in options
    assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas) == (1, 1, 4)
    assert scaling.target_ongoing_requests == 8


def test_each_replica_asks_for_its_cpus_and_a_gpu_on_cuda():
    args, actor = replica_resources({"model": "m", "device": "cpu", "num_threads": None},
                                    ReplicaPlan(2, 2, threads_per_replica=2))
    assert args == {"model": "m", "device": "cpu", "num_threads": 2}
    assert actor == {"num_cpus": 2, "num_gpus": 0}
    args, actor = replica_resources({"model": "m", "device": "cuda:0"}, ReplicaPlan(2, 2, num_cpus=8))
    assert args["device"] == "cuda"  # Ray shows the replica its one GPU as cuda:0
    assert args["num_threads"] is None  # adaptive, as the single server's engine
    assert actor == {"num_cpus": 4, "num_gpus": 1}


def test_ray_serves_default_router_for_comparison():
    options = deployment_options(ReplicaPlan(2, 2, router="pow2"), {"num_cpus": 1}, 30.0)
    assert options["request_router_config"].request_router_class.endswith("PowerOfTwoChoicesRequestRouter")
