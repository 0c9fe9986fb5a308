"""Continuous batching with a per-step token budget, chunked prefill and preemption.

There are no separate prefill and decode phases: each step, every scheduled request is given
tokens until its computed count catches up with its total. Running requests are served first
(each decode costs one token of budget), so a long prompt is chunked into whatever budget is
left and never stalls the decodes. When the KV pool runs dry, the request the policy ranks
last is preempted: its blocks are freed and it is recomputed later from its tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from llmserve.config import SchedulerConfig
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.request import Request, RequestStatus


class SchedulingPolicy(Protocol):
    """Ranks requests: a lower key is admitted first and preempted last."""

    name: str

    def key(self, request: Request) -> tuple: ...


class FCFSPolicy:
    name = "fcfs"

    def key(self, request: Request) -> tuple:
        return (request.sequence_number,)


POLICIES: dict[str, type] = {"fcfs": FCFSPolicy}


def make_policy(name: str) -> SchedulingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; choose from {', '.join(POLICIES)}") from None


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens this step)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 policy: SchedulingPolicy | None = None) -> None:
        self.config = config
        self.block_manager = block_manager
        self.policy = policy or make_policy(config.policy)
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        # Keep a few blocks free when admitting new work, so running decodes rarely preempt.
        self.admission_reserve = max(1, block_manager.num_blocks // 100)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Move a request to a finished status and give its blocks back, wherever it is."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status
        request.times.finished = time.monotonic()
        self.block_manager.free(request)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        # Decodes first: the runner batches them in one attention group.
        out.scheduled.sort(key=lambda item: item[1] != 1)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        self.running.sort(key=self.policy.key)
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_pending_tokens, budget)
            if not self._make_room(request, num_new, out):
                break  # the request itself was preempted
            self.block_manager.allocate(request, num_new)
            out.scheduled.append((request, num_new))
            budget -= num_new
            index += 1
        return budget

    def _make_room(self, request: Request, num_new: int, out: SchedulerOutput) -> bool:
        while not self.block_manager.can_allocate(request, num_new):
            victim = self.running[-1]
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        self.waiting.append(request)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        self.waiting.sort(key=self.policy.key)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            num_new = min(request.num_pending_tokens, budget)
            reserve = self.admission_reserve if self.running else 0
            if not self.block_manager.can_allocate(request, num_new, reserve):
                break
            self.waiting.pop(0)
            self.block_manager.allocate(request, num_new)
            request.status = RequestStatus.RUNNING
            if request.times.first_scheduled is None:
                request.times.first_scheduled = time.monotonic()
            self.running.append(request)
            out.scheduled.append((request, num_new))
            budget -= num_new
