"""Ray and Ray Serve: start or join the cluster, deploy the engine replicas, take them down.

Ray Serve's own HTTP proxy stays off: the front is `llmserve serve` itself, which calls the
replicas through a DeploymentHandle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig

from llmserve.replicas.plan import ReplicaPlan
from llmserve.replicas.replica import EngineReplica
from llmserve.replicas.router import PrefixAffinityRouter

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

logger = logging.getLogger("llmserve.replicas")

DEPLOYMENT = "engine"
# Each engine batches and orders its own queue (service classes, preemption): Ray Serve should hand
# requests straight to it, never hold them back in the router.
MAX_ONGOING_REQUESTS = 4096
HEALTH_CHECK_PERIOD_S = 2.0
HEALTH_CHECK_TIMEOUT_S = 10.0
ROUTING_STATS_PERIOD_S = 1.0


@dataclass
class RayCluster:
    """The cluster this server runs on; `started`: we started it, so we stop it."""

    plan: ReplicaPlan
    started: bool
    stopped: bool = False

    @classmethod
    def connect(cls, plan: ReplicaPlan) -> RayCluster:
        if plan.ray_address is None:
            # Ray starts its workers at niceness 15, meant for batch jobs: an engine replica is the
            # server's hot path and must not lose its cores to whatever else runs on the machine.
            ray.init(num_cpus=plan.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     _system_config={"worker_niceness": 0})
        else:
            ray.init(address=plan.ray_address, logging_level=logging.WARNING)
        serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING", "enable_access_log": False})
        return cls(plan, started=plan.ray_address is None)

    def deploy(self, engine_args: dict[str, Any], warmup: bool, chat_template: str | None,
               shutdown_timeout: float) -> DeploymentHandle:
        """Blocks until every initial replica has loaded and warmed up its engine."""
        plan = self.plan
        args, actor = replica_resources(engine_args, plan)
        options = deployment_options(plan, actor, shutdown_timeout)
        logger.info("deploying %s", plan.describe())
        app = serve.deployment(EngineReplica).options(**options).bind(args, warmup, chat_template)
        return serve.run(app, name=plan.app_name, route_prefix=None)

    def stop(self) -> None:
        """Idempotent: called at shutdown, and again if the server never got that far."""
        if self.stopped:
            return
        self.stopped = True
        if self.started:
            # The front has drained every request by now. serve.shutdown() would wait out the
            # controller's own timeout (30 s here) for replicas with nothing left to do.
            ray.shutdown()
        else:
            serve.delete(self.plan.app_name)


def deployment_options(plan: ReplicaPlan, actor: dict[str, Any], shutdown_timeout: float) -> dict[str, Any]:
    """The engine deployment's Ray Serve options: a fixed count, or autoscaling on ongoing requests."""
    options: dict[str, Any] = dict(
        name=DEPLOYMENT, ray_actor_options=actor, max_ongoing_requests=MAX_ONGOING_REQUESTS,
        health_check_period_s=HEALTH_CHECK_PERIOD_S, health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=shutdown_timeout,
        request_router_config=router_config(plan.router),
        logging_config={"log_level": "WARNING", "enable_access_log": False})
    if plan.autoscaling:
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=plan.min_replicas, max_replicas=plan.max_replicas, initial_replicas=plan.min_replicas,
            target_ongoing_requests=plan.target_ongoing_requests)
    else:
        options["num_replicas"] = plan.min_replicas
    return options


def router_config(router: str) -> RequestRouterConfig:
    if router == "pow2":  # Ray Serve's own power of two choices, blind to prefixes
        return RequestRouterConfig(request_routing_stats_period_s=ROUTING_STATS_PERIOD_S)
    return RequestRouterConfig(request_router_class=PrefixAffinityRouter,
                               request_routing_stats_period_s=ROUTING_STATS_PERIOD_S)


def replica_resources(engine_args: dict[str, Any], plan: ReplicaPlan) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's keywords in a replica, and what the replica asks Ray for: CPUs, and a GPU when the
    engine runs on CUDA (Ray then shows it exactly that one, as cuda:0).

    Without --threads-per-replica each engine adapts its threads to the cores the others leave, as
    the single server does: replicas on one machine then share its cores by what each has to do, and
    none spins on a core that another holds (fixed threads on a busy machine lose most of their speed)."""
    args = {**engine_args, "num_threads": plan.threads_per_replica}
    gpu = str(engine_args.get("device", "cpu")).startswith("cuda")
    if gpu:
        args["device"] = "cuda"
    return args, {"num_cpus": plan.cpus, "num_gpus": 1 if gpu else 0}
