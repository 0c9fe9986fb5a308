"""Continuous batching with a per-step token budget, chunked prefill and preemption.

There are no separate prefill and decode phases: each step, every scheduled request is given
tokens until its computed count catches up with its total. Running requests are served first
(each decode costs one token of budget), so a long prompt is chunked into whatever budget is
left and never stalls the decodes. When the KV pool runs dry, the request the policy ranks
last is preempted: its blocks are freed and it is recomputed later from its tokens. A request
is admitted on whatever prefix of its tokens the prefix cache holds (engine/block_manager.py),
so only the rest is computed, and a preempted request finds its own blocks again.

A decoding request may carry draft tokens (speculative decoding, spec_decode/): they are scheduled
with its pending token, cost budget and KV slots like any token, and are the first thing dropped
when the budget or the pool runs short. Slots of rejected drafts stay with the request and are
overwritten by its next tokens.

With service classes (engine/policy.py), a higher class that finds no free slot or KV blocks
preempts running requests of lower classes, and each busy class is owed its share of the token
budget and of the slots: a share holds in a first pass and what it leaves unused is handed out
in a second, so the budget is never left idle for a class that cannot use it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from llmserve.config import SchedulerConfig
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.policy import ClassShares, SchedulingPolicy, TokenBudget, make_policy
from llmserve.engine.request import Request, RequestStatus


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


@dataclass
class _Step:
    """One step's plan while it is being built."""

    budget: TokenBudget
    shares: ClassShares
    grants: dict[Request, int] = field(default_factory=dict)  # request -> new tokens, in scheduling order
    preempted: list[Request] = field(default_factory=list)
    out_of_blocks: bool = False  # a running request had to be preempted for KV room


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 policy: SchedulingPolicy | None = None) -> None:
        self.config = config
        self.block_manager = block_manager
        self.policy = policy or make_policy(config.policy, config.service_classes)
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
        config = self.config
        shares = ClassShares.compute(self.policy.classes, self.running, self.waiting, config.max_num_seqs,
                                     config.max_num_batched_tokens)
        step = _Step(shares.budget(config.max_num_batched_tokens), shares)
        self.running.sort(key=self.policy.key)
        self.waiting.sort(key=self.policy.key)
        self._fill(step)
        if step.budget.owed and step.budget.remaining > 0 and not step.out_of_blocks:
            step.budget.owed.clear()  # shares a class could not use go to whoever can
            self._fill(step)
        # Decodes first: the runner batches them in one attention group.
        scheduled = sorted(step.grants.items(), key=lambda item: item[1] != 1)
        return SchedulerOutput(scheduled, step.preempted)

    def _fill(self, step: _Step) -> None:
        self._schedule_running(step)
        if not step.out_of_blocks:  # admitting new work would only preempt it again
            self._schedule_waiting(step)

    # --- running requests ----------------------------------------------------------------
    def _schedule_running(self, step: _Step) -> None:
        index = 0
        while index < len(self.running) and step.budget.remaining > 0:
            request = self.running[index]
            granted = step.grants.get(request, 0)
            num_new = min(request.num_pending_with_drafts - granted, step.budget.allowance(request.priority))
            if num_new <= 0:
                index += 1
                continue
            if request.spec_token_ids and not self.block_manager.can_allocate(request, granted + num_new):
                request.spec_token_ids = []  # drafts are a bet: never preempt anyone for their KV slots
                continue
            if not self._make_room(index, granted + num_new, step):
                continue  # the request itself was preempted; the next one now sits at `index`
            self._grant(request, granted, num_new, step)
            index += 1

    def _make_room(self, index: int, num_tokens: int, step: _Step) -> bool:
        request = self.running[index]
        while not self.block_manager.can_allocate(request, num_tokens):
            victim = self._pressure_victim(index, step.shares)
            self._preempt(victim, step)
            step.out_of_blocks = True
            if victim is request:
                return False
        return True

    def _pressure_victim(self, index: int, shares: ClassShares) -> Request:
        """The lowest-ranked request from `index` on whose class holds more than it is owed."""
        counts = Counter(r.priority for r in self.running)
        for request in reversed(self.running[index:]):
            if not shares.protected(request.priority, counts[request.priority]):
                return request
        return self.running[-1]

    def _preempt(self, request: Request, step: _Step) -> None:
        step.budget.refund(step.grants.pop(request, 0))
        self.running.remove(request)
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        self.waiting.append(request)
        step.preempted.append(request)

    def _grant(self, request: Request, granted: int, num_new: int, step: _Step) -> None:
        self.block_manager.allocate(request, granted + num_new)
        step.grants[request] = granted + num_new
        step.budget.spend(request.priority, num_new)

    # --- waiting requests ----------------------------------------------------------------
    def _schedule_waiting(self, step: _Step) -> None:
        """Classes below their owed slots go first, up to those slots; then everyone in policy order."""
        counts = Counter(r.priority for r in self.running)
        candidates = [r for r in self.waiting if r not in step.preempted]
        for owed_only in (True, False) if step.shares.seats else (False,):
            for request in candidates:
                if request.status == RequestStatus.RUNNING:
                    continue  # admitted in the first pass
                if step.budget.remaining <= 0:
                    return
                if owed_only and not step.shares.owes_slot(request.priority, counts[request.priority]):
                    continue
                allowance = step.budget.allowance(request.priority)
                if allowance <= 0:
                    continue  # its class has spent its share; a later class may still have some
                # The lookup comes after the allowance check: it walks the prompt's blocks. A request that
                # still needs its prompt's hidden states (prompt logprobs, pooling) must compute them all.
                cached = [] if request.needs_prompt_states else self.block_manager.cached_prefix(request)
                num_new = min(request.num_tokens - len(cached) * self.block_manager.block_size, allowance)
                if not self._admit(request, cached, num_new, step):
                    break  # admitting anyone behind it would take what it is waiting for
                counts[request.priority] += 1

    def _admit(self, request: Request, cached: list[int], num_new: int, step: _Step) -> bool:
        """Admit `request` on its `cached` prefix blocks with `num_new` tokens to compute."""
        reserve = self.admission_reserve if self.running else 0
        free_slots = self.config.max_num_seqs - len(self.running)
        needed_blocks = self.block_manager.blocks_to_admit(request, cached, num_new) + reserve
        if free_slots < 1 or needed_blocks > self.block_manager.num_free_blocks:
            victims = self._admission_victims(request, cached, needed_blocks, free_slots, step.shares)
            if not victims:
                return False
            for victim in victims:
                self._preempt(victim, step)
        self.waiting.remove(request)
        request.status = RequestStatus.RUNNING
        if request.times.first_scheduled is None:
            request.times.first_scheduled = time.monotonic()
        self.running.append(request)
        self.block_manager.take_prefix(request, cached)
        self._grant(request, 0, num_new, step)
        return True

    def _admission_victims(self, request: Request, cached: list[int], needed_blocks: int, free_slots: int,
                           shares: ClassShares) -> list[Request]:
        """Running requests of lower classes whose preemption lets `request` in; [] if none would."""
        if self.policy.classes is None:
            return []
        counts = Counter(r.priority for r in self.running)
        free_blocks = self.block_manager.num_free_blocks
        keep = frozenset(cached)  # a victim's share of them stays taken
        chosen: list[Request] = []
        for victim in sorted(self.running, key=self.policy.key, reverse=True):
            if free_slots >= 1 and free_blocks >= needed_blocks:
                break
            if victim.priority <= request.priority or shares.protected(victim.priority, counts[victim.priority]):
                continue
            chosen.append(victim)
            counts[victim.priority] -= 1
            free_slots += 1
            free_blocks += self.block_manager.num_freeable_blocks(victim, keep)
        return chosen if free_slots >= 1 and free_blocks >= needed_blocks else []
