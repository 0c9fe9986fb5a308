"""EngineReplica: the body of one Ray Serve replica, an AsyncEngine and what the front asks of it.

The front sends PreparedRequests (tokenized and validated there) and streams back the engine's
RequestOutputs. A stream's first item is the replica's name, sent before any engine work, so the
front can name the replica in its response headers before the first token.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from llmserve.engine.async_engine import AsyncEngine
from llmserve.engine.outputs import RequestOutput
from llmserve.engine.preparer import PreparedRequest
from llmserve.replicas.facts import EngineFacts, ReplicaSnapshot
from llmserve.replicas.routing_key import RouteNote

logger = logging.getLogger("llmserve.replicas")


class EngineReplica:
    async def __init__(self, engine_args: dict[str, Any], warmup: bool = True,
                       chat_template: str | None = None) -> None:
        from ray import serve  # only ever imported inside a replica's process

        self.name = serve.get_replica_context().replica_id.unique_id
        self.engine = await asyncio.to_thread(AsyncEngine.from_args, **engine_args)
        self.facts_ = EngineFacts.of(self.engine.engine)
        if warmup:
            from llmserve.server.app import warm_up

            await warm_up(self.engine, chat_template)
        # As the single server does once it is ready: claim the KV pool now, off the request path.
        threading.Thread(target=self._make_resident, name="llmserve-kv-resident", daemon=True).start()
        logger.info("replica %s ready", self.name)

    def _make_resident(self) -> None:
        try:
            self.engine.engine.make_kv_cache_resident()
        except Exception:  # the pool then faults in as it is used
            logger.warning("could not make the KV cache pool resident", exc_info=True)

    def facts(self) -> EngineFacts:
        return self.facts_

    def snapshot(self) -> ReplicaSnapshot:
        """For the front's /metrics and /health (broadcast to every replica each poll)."""
        return ReplicaSnapshot(self.name, os.getpid(), self.engine.stats())

    async def generate(self, prepared: PreparedRequest, route: RouteNote) -> AsyncIterator[str | RequestOutput]:
        """Yields this replica's name, then the request's outputs. Closed early (the front cancels
        it), the engine request is aborted at the next step."""
        yield self.name
        if prepared.params.guided is not None:
            # Compiled grammars do not cross processes: the front checked the constraint, this compiles it
            # again (once per distinct constraint: the compiler keeps them).
            grammar = await asyncio.to_thread(self.engine.engine.preparer.compile_guided, prepared.params)
            prepared = replace(prepared, grammar=grammar)
        async for output in self.engine.stream(prepared):
            yield output

    def measure_copy_bandwidth(self) -> float:
        """This replica's device memory bandwidth (bytes/s), for the front's bandwidth-utilisation gauge."""
        return self.engine.measure_copy_bandwidth()

    def check_health(self) -> None:
        """Ray Serve calls this periodically; raising makes it replace the replica."""
        if not self.engine.is_alive:
            raise RuntimeError(f"replica {self.name}: the engine loop has stopped")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
