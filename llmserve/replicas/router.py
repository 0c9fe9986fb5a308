"""PrefixAffinityRouter: Ray Serve's request-router interface, choosing replicas by prompt prefix.

It runs inside the front's DeploymentHandle. A request whose leading block hashes (RouteNote, from
routing_key.py) were served by a live replica goes there first, unless that replica's queue is
longer than the shortest by more than `imbalance_threshold`; otherwise, and as the fallback rank,
two random replicas, of which Ray Serve takes the one with fewer ongoing requests (power of two
choices). Which replica served which prefix is learnt as requests are routed, in a bounded LRU.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from llmserve.engine.prefix_cache import BlockHash
from llmserve.replicas.routing_key import RouteNote

DEFAULT_IMBALANCE_THRESHOLD = 16  # ongoing requests more than the least loaded replica's
DEFAULT_MAX_PREFIXES = 200_000  # block hashes remembered, about 20 MB


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, imbalance_threshold: int = DEFAULT_IMBALANCE_THRESHOLD,
                         max_prefixes: int = DEFAULT_MAX_PREFIXES, **_: Any) -> None:
        self._imbalance_threshold = imbalance_threshold
        self._max_prefixes = max_prefixes
        self._owners: OrderedDict[BlockHash, ReplicaID] = OrderedDict()

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        pair = random.sample(candidate_replicas, min(2, len(candidate_replicas)))
        note = _note(pending_request)
        if note is None or not note.prefix:
            return [pair]
        owner = self._owner(note.prefix, candidate_replicas)
        note.preferred = None if owner is None else owner.replica_id.unique_id
        if owner is None or self._overloaded(owner, candidate_replicas):
            return [pair]
        return [[owner], [r for r in pair if r is not owner] or pair]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        note = _note(pending_request)
        if note is None:
            return
        for key in note.prefix:
            self._owners[key] = replica_id
            self._owners.move_to_end(key)
        while len(self._owners) > self._max_prefixes:
            self._owners.popitem(last=False)

    def _owner(self, prefix: tuple[BlockHash, ...], candidates: list[RunningReplica]) -> RunningReplica | None:
        """The live replica that served the longest part of this prefix."""
        live = {r.replica_id: r for r in candidates}
        for key in reversed(prefix):
            replica_id = self._owners.get(key)
            if replica_id is not None and replica_id in live:
                return live[replica_id]
        return None

    def _overloaded(self, replica: RunningReplica, candidates: list[RunningReplica]) -> bool:
        """Judged from Ray Serve's cached queue lengths; a replica whose length is unknown is not."""
        cache = self.replica_queue_len_cache
        own = cache.get(replica.replica_id)
        if own is None:
            return False
        if own >= replica.max_ongoing_requests:
            return True
        known = [q for r in candidates if (q := cache.get(r.replica_id)) is not None]
        return own - min(known) > self._imbalance_threshold


def _note(pending_request: PendingRequest | None) -> RouteNote | None:
    if pending_request is None:
        return None
    note = pending_request.kwargs.get("route")
    return note if isinstance(note, RouteNote) else None
