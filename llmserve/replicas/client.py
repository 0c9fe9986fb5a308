"""ReplicaEngine: what the server's Serving needs of an AsyncEngine, for engines in Ray Serve replicas.

The server code (routes, Serving, streams, shedding, the response cache, the drain) runs unchanged
at the front; only its engine differs. Requests are prepared here (tokenized, validated, their
routing key hashed), and each engine request is one streaming call through the DeploymentHandle,
routed by PrefixAffinityRouter. Replica failures become OpenAI-shaped errors: a replica that dies
under a request is a 503 (an error event on a stream that began); the other replicas' requests go on.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import DeploymentUnavailableError, RequestCancelledError

from llmserve.engine.outputs import EngineStats, RequestOutput
from llmserve.replicas.facts import EngineFacts, ReplicaSnapshot
from llmserve.replicas.routing_key import RouteNote, prefix_hashes
from llmserve.server.errors import APIError
from llmserve.server.serving import shutting_down

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

    from llmserve.engine.preparer import PreparedRequest, Prompt
    from llmserve.model.tokenizer import Tokenizer
    from llmserve.replicas.counters import RoutingCounters
    from llmserve.sampling_params import SamplingParams
    from llmserve.service_classes import ServiceClasses

logger = logging.getLogger("llmserve.replicas")

POLL_INTERVAL_S = 1.0  # how often the front asks every replica for its gauges
REPLICA_HEADER = "X-Replica"


@dataclass(frozen=True)
class _ModelView:
    vocab_size: int
    hidden_size: int


@dataclass(frozen=True)
class RemoteEngineView:
    """What the server reads of `AsyncEngine.engine` (the LLMEngine), for engines in other processes."""

    max_model_len: int
    model_config: _ModelView

    def make_kv_cache_resident(self) -> None:
        """Each replica claims its own pool when it is ready."""


@dataclass
class _Call:
    """One engine request's streaming call; `replica` is known once the replica has named itself."""

    stream: DeploymentResponseGenerator
    note: RouteNote
    replica: str | None = None
    cut_off: bool = False


@dataclass
class _Poll:
    stats: dict[str, EngineStats] = field(default_factory=dict)
    polled: bool = False  # False until the first answer: /health waits for it


class ReplicaEngine:
    def __init__(self, handle: DeploymentHandle, facts: EngineFacts, counters: RoutingCounters,
                 on_shutdown: Callable[[], None] | None = None, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.handle = handle
        self.facts = facts
        self.counters = counters
        self.engine = RemoteEngineView(facts.max_model_len, _ModelView(facts.vocab_size, facts.hidden_size))
        self._preparer = facts.preparer()
        self._streaming = handle.options(stream=True)
        self._calls: dict[str, _Call] = {}
        self._poll = _Poll()
        self._on_shutdown = on_shutdown
        self._stopping = threading.Event()
        self._poll_interval_s = poll_interval_s
        self._poller = threading.Thread(target=self._poll_loop, name="llmserve-replica-poll", daemon=True)
        self._poller.start()

    # --- what Serving and the routes read ------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.facts.tokenizer

    @property
    def service_classes(self) -> ServiceClasses:
        return self.facts.service_classes

    @property
    def scheduling_policy(self) -> str:
        return self.facts.scheduling_policy

    @property
    def model_identity(self) -> str:
        return self.facts.model_identity

    @property
    def num_active_requests(self) -> int:
        return len(self._calls)

    @property
    def is_alive(self) -> bool:
        """Alive while any replica answers (and until the first poll: the replicas were just deployed)."""
        poll = self._poll
        return not poll.polled or bool(poll.stats)

    def health_report(self) -> dict[str, Any]:
        poll = self._poll  # replaced whole by the poller thread: read it once
        if poll.stats or not poll.polled:
            return {"replicas": len(poll.stats)}
        return {"replicas": 0, "reason": "no engine replica is answering"}

    def measure_copy_bandwidth(self) -> float:
        """One replica's device bandwidth (the replicas run alike), measured there; blocks: the server
        calls it on a worker thread once the replicas are up."""
        return self.handle.measure_copy_bandwidth.remote().result(timeout_s=120)

    def stats(self) -> dict[str, EngineStats]:
        """Each live replica's gauges, as of the last poll: the metrics label them by replica."""
        return dict(self._poll.stats)

    # --- requests --------------------------------------------------------------------------
    def prepare(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None,
                priority: int | str | None = None) -> PreparedRequest:
        return self._preparer.prepare(request_id, prompt, params, priority)

    async def place(self, prepared: Sequence[PreparedRequest]) -> dict[str, str]:
        """Route these engine requests now and wait until each replica has named itself: the
        response's headers then say who serves it. Their outputs follow through stream()."""
        replicas = [await self._start(p) for p in prepared]
        return {REPLICA_HEADER: ",".join(replicas)}

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[RequestOutput]:
        call = self._calls.get(prepared.request_id)
        if call is None:
            await self._start(prepared)
            call = self._calls[prepared.request_id]
        finished = False
        try:
            async for output in self._outputs(call):
                finished = output.finished
                yield output
        finally:
            self._calls.pop(prepared.request_id, None)
            if not finished:
                call.stream.cancel()  # the replica's generator closes, and its engine aborts the request

    def abort(self, request_id: str) -> None:
        """The drain's cut-off: the caller then sees server_shutting_down."""
        call = self._calls.get(request_id)
        if call is not None:
            call.cut_off = True
            call.stream.cancel()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._poller.join(timeout)
        if self._on_shutdown is not None:
            self._on_shutdown()

    async def _start(self, prepared: PreparedRequest) -> str:
        facts = self.facts
        prefix = () if facts.prefix_root is None else prefix_hashes(facts.prefix_root, prepared.prompt_token_ids,
                                                                    facts.block_size)
        note = RouteNote(prefix)
        # A compiled grammar does not pickle: the replica compiles the constraint again.
        wire = replace(prepared, grammar=None)
        call = _Call(self._streaming.generate.remote(wire, route=note), note)
        self._calls[prepared.request_id] = call
        # Routed by place() but never streamed (the client left before its stream began): the call is
        # cancelled when its request is dropped, as the server's queue tickets are.
        weakref.finalize(prepared, self._forget, prepared.request_id, call)
        try:
            first = await _translated(call.stream.__anext__(), call)
        except BaseException:
            self._calls.pop(prepared.request_id, None)
            call.stream.cancel()
            raise
        call.replica = first
        self.counters.served(first, note.preferred)
        return first

    def _forget(self, request_id: str, call: _Call) -> None:
        if self._calls.get(request_id) is call:
            del self._calls[request_id]
            call.stream.cancel()

    async def _outputs(self, call: _Call) -> AsyncIterator[RequestOutput]:
        while True:
            try:
                output = await _translated(call.stream.__anext__(), call)
            except StopAsyncIteration:
                return
            yield output

    # --- the poller --------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            before = set(self._poll.stats) if self._poll.polled else None
            self._poll = _Poll(self._snapshots(), polled=True)
            now = set(self._poll.stats)
            with self.counters.lock:
                self.counters.live_replicas = len(now)
            if before is not None and now != before:
                # Scale-ups and -downs, failures and their replacements all show here.
                changes = [f"+{r}" for r in sorted(now - before)] + [f"-{r}" for r in sorted(before - now)]
                logger.info("engine replicas: %d -> %d live (%s)", len(before), len(now), ", ".join(changes))
            self._stopping.wait(self._poll_interval_s)

    def _snapshots(self) -> dict[str, EngineStats]:
        try:
            answers = self.handle.broadcast("snapshot").results(timeout_s=max(2.0, 2 * self._poll_interval_s),
                                                                return_exceptions=True)
        except (DeploymentUnavailableError, TimeoutError):
            return {}
        except Exception:  # the poller must outlive any hiccup of the cluster's control plane
            logger.warning("could not poll the replicas", exc_info=True)
            return {}
        return {a.name: a.stats for a in answers if isinstance(a, ReplicaSnapshot)}


async def _translated(step: Any, call: _Call) -> Any:
    """One item of a replica's stream, with Ray's failures turned into the server's errors."""
    try:
        return await step
    except StopAsyncIteration:
        raise
    except RequestCancelledError:
        if call.cut_off:
            raise shutting_down() from None
        raise
    except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
        logger.warning("replica %s failed under a request: %s", call.replica or "(unrouted)",
                       str(exc).splitlines()[0])
        raise APIError(503, "the replica serving this request stopped; retry the request",
                       code="replica_unavailable", headers={"Retry-After": "1"}) from None
    except RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else exc
        if isinstance(cause, APIError):
            raise cause from None
        if type(cause).__name__ == "EngineDeadError":  # the replica's health check will replace it
            raise APIError(503, "the replica serving this request stopped; retry the request",
                           code="replica_unavailable", headers={"Retry-After": "1"}) from None
        raise APIError(500, f"the request failed inside the engine: {cause}", code="engine_error") from None
