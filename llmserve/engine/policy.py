"""Scheduling policies: the order requests are admitted in (and preempted in, reversed), and
what each service class is owed when classes compete.

`fcfs` ranks by arrival alone. `classes` ranks by service class, then by deadline (arrival plus
the class target: TTFT before the first token, E2E after), which within a class is the least
slack first. Under contention it owes each busy class its share of the step's token budget and
of the running slots, so the lowest class still finishes under endless high-class load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from llmserve.engine.request import Request
from llmserve.service_classes import ServiceClasses


class SchedulingPolicy(Protocol):
    """Ranks requests: a lower key is admitted first and preempted last."""

    name: str
    classes: ServiceClasses | None  # None: no shares, no preemption to admit a higher class

    def key(self, request: Request) -> tuple: ...


class FCFSPolicy:
    name = "fcfs"
    classes = None

    def key(self, request: Request) -> tuple:
        return (request.sequence_number,)


class ServiceClassPolicy:
    name = "classes"

    def __init__(self, classes: ServiceClasses) -> None:
        self.classes = classes

    def key(self, request: Request) -> tuple:
        return (request.priority, self.deadline(request), request.sequence_number)

    def deadline(self, request: Request) -> float:
        cls = self.classes[request.priority]
        target = cls.ttft_target if request.times.first_token is None else cls.e2e_target
        return math.inf if target is None else request.times.arrival + target


POLICY_NAMES = ("classes", "fcfs")


def make_policy(name: str, classes: ServiceClasses) -> SchedulingPolicy:
    if name == "fcfs":
        return FCFSPolicy()
    if name == "classes":
        return ServiceClassPolicy(classes)
    raise ValueError(f"unknown scheduling policy {name!r}; choose from {', '.join(POLICY_NAMES)}")


@dataclass
class TokenBudget:
    """A step's token budget, with the part still owed to each class held back from the others."""

    remaining: int
    owed: dict[int, int] = field(default_factory=dict)  # rank -> tokens held for that class

    def allowance(self, rank: int) -> int:
        held = sum(tokens for r, tokens in self.owed.items() if r != rank)
        return max(0, self.remaining - held)

    def spend(self, rank: int, tokens: int) -> None:
        self.remaining -= tokens
        if rank in self.owed:
            self.owed[rank] = max(0, self.owed[rank] - tokens)

    def refund(self, tokens: int) -> None:
        self.remaining += tokens


@dataclass(frozen=True)
class ClassShares:
    """What each busy class is owed this step, from the requests waiting and running."""

    seats: dict[int, int]  # rank -> running slots no other class may take from it
    tokens: dict[int, int]  # rank -> tokens of the budget held for it

    @classmethod
    def compute(cls, classes: ServiceClasses | None, running: list[Request], waiting: list[Request],
                max_num_seqs: int, token_budget: int) -> ClassShares:
        if classes is None:
            return cls({}, {})
        demand: dict[int, int] = {}
        for request in (*running, *waiting):
            demand[request.priority] = demand.get(request.priority, 0) + request.num_pending_tokens
        if len(demand) < 2:
            return cls({}, {})  # one class alone owes nobody anything
        seats, tokens = {}, {}
        for rank, pending in demand.items():
            fraction = classes.guaranteed_fraction(rank, demand)
            seats[rank] = max(1, int(max_num_seqs * fraction))
            tokens[rank] = min(pending, int(token_budget * fraction))
        return cls(seats, tokens)

    def budget(self, total: int) -> TokenBudget:
        return TokenBudget(total, dict(self.tokens))

    def owes_slot(self, rank: int, running_in_class: int) -> bool:
        return running_in_class < self.seats.get(rank, 0)

    def protected(self, rank: int, running_in_class: int) -> bool:
        """A class at or under its owed slots keeps them: no other class preempts it."""
        return running_in_class <= self.seats.get(rank, 0)
