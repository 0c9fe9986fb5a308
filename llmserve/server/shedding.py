"""Admission control: the server's queue per service class, its predicted wait, and load shedding.

The queue is every engine request that has no first token yet. Its drain rate is measured as
prompt tokens leaving it per second of busy time (time with something queued), so an idle spell
does not make the server look slow. The predicted wait of a class is the queued prompt tokens at
or above its rank over the part of that rate it can expect: lower busy classes are owed their
shares. A refusal is decided from these counts alone, before the body is tokenized.

Shedding, with service classes:
- a class whose predicted wait exceeds its TTFT target is refused, and so is every class below a
  busy class in that state: the lowest classes go first, p0 only when p0 itself is late;
- a full queue refuses the lowest class first: class k of n may fill it to 1 - k/(2(n-1)) of
  `max_queued`, so p3 of four is refused at half full and p0 only when it is full.
Without classes (fcfs), only a full queue refuses, as before.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llmserve.server.errors import APIError
from llmserve.service_classes import ServiceClass, ServiceClasses

RATE_WINDOW_S = 10.0  # busy seconds of departures the drain rate is measured over
QUEUE_FULL, LATE = "queue_full", "predicted_wait"


@dataclass(eq=False)
class Ticket:
    """One engine request's place in the queue. A ticket dropped without leaving (a stream that
    never started, say, because the client left first) leaves when it is collected."""

    shedder: LoadShedder
    rank: int
    tokens: int
    done: bool = False

    @property
    def service_class(self) -> ServiceClass:
        return self.shedder.classes[self.rank]

    def leave(self, served: bool) -> None:
        self.shedder.leave(self, served)

    def __del__(self) -> None:
        if not self.done:
            self.shedder.leave(self, served=False)


class Shed(APIError):
    """A 429 that says which class was refused and why, for the metrics."""

    def __init__(self, reason: str, message: str, retry_after_s: float) -> None:
        retry = str(max(1, math.ceil(retry_after_s)))
        super().__init__(429, message, param="priority" if reason == LATE else None, code=reason,
                          headers={"Retry-After": retry})
        self.reason = reason


@dataclass
class LoadShedder:
    classes: ServiceClasses
    max_queued: int | None = None
    class_aware: bool = True
    clock: Callable[[], float] = time.monotonic
    queued: list[int] = field(init=False)  # requests per rank
    queued_tokens: list[int] = field(init=False)
    busy_s: float = 0.0
    _last_event: float = field(init=False)
    _departures: deque[tuple[float, int]] = field(default_factory=deque)  # (busy clock, prompt tokens)

    def __post_init__(self) -> None:
        self.queued = [0] * len(self.classes)
        self.queued_tokens = [0] * len(self.classes)
        self._last_event = self.clock()

    # --- the queue -----------------------------------------------------------------------
    @property
    def total_queued(self) -> int:
        return sum(self.queued)

    def enter(self, rank: int, tokens: int) -> Ticket:
        self._tick()
        self.queued[rank] += 1
        self.queued_tokens[rank] += tokens
        return Ticket(self, rank, tokens)

    def leave(self, ticket: Ticket, served: bool) -> None:
        """`served`: it got its first token, so its prompt counts towards the drain rate."""
        if ticket.done:
            return
        self._tick()
        ticket.done = True
        self.queued[ticket.rank] -= 1
        self.queued_tokens[ticket.rank] -= ticket.tokens
        if served:
            self._departures.append((self.busy_s, ticket.tokens))

    def _tick(self) -> None:
        now = self.clock()
        if self.total_queued:
            self.busy_s += now - self._last_event
        self._last_event = now

    # --- predictions ---------------------------------------------------------------------
    def drain_rate(self) -> float | None:
        """Prompt tokens per busy second leaving the queue, or None before anything has."""
        self._tick()
        while self._departures and self._departures[0][0] <= self.busy_s - RATE_WINDOW_S:
            self._departures.popleft()
        span = min(RATE_WINDOW_S, self.busy_s)
        if not self._departures or span <= 0:
            return None
        return sum(tokens for _, tokens in self._departures) / span

    def predicted_wait(self, rank: int, rate: float | None = None) -> float:
        """Seconds a new request of `rank` would queue before its first token (0 while unmeasured)."""
        rate = self.drain_rate() if rate is None else rate
        if not rate:
            return 0.0
        if not self.class_aware:
            return sum(self.queued_tokens) / rate
        ahead = sum(self.queued_tokens[: rank + 1])
        busy = [r for r, count in enumerate(self.queued) if count] + [rank]
        owed_below = sum(self.classes.guaranteed_fraction(r, busy) for r in set(busy) if r > rank)
        return ahead / (rate * max(0.05, 1.0 - owed_below))

    def queue_limit(self, rank: int) -> int | None:
        if self.max_queued is None:
            return None
        if not self.class_aware or len(self.classes) == 1:
            return self.max_queued
        fraction = 1.0 - rank / (2 * (len(self.classes) - 1))
        return max(1, math.floor(self.max_queued * fraction))

    # --- the decision --------------------------------------------------------------------
    def check(self, rank: int) -> None:
        """Raise Shed (a 429 with Retry-After) when a request of class `rank` should be refused now."""
        rate = self.drain_rate()
        limit = self.queue_limit(rank)
        name = self.classes[rank].name
        if limit is not None and self.total_queued >= limit:
            excess = (self.total_queued - limit + 1) * self._mean_queued_tokens()
            raise Shed(QUEUE_FULL, f"the server's queue is full for class {name} ({self.total_queued} requests "
                                   "waiting); retry later", excess / rate if rate else 1.0)
        if self.class_aware and rate:
            self._check_targets(rank, rate)

    def _check_targets(self, rank: int, rate: float) -> None:
        for r in range(rank + 1):
            target = self.classes[r].ttft_target
            if target is None or (r != rank and not self.queued[r]):
                continue
            wait = self.predicted_wait(r, rate)
            if wait > target:
                late = self.classes[r].name
                because = "its" if r == rank else f"class {late}'s"
                raise Shed(LATE, f"class {self.classes[rank].name} is refused: {because} predicted wait of "
                                 f"{wait:.2f}s exceeds the {late} target of {target:.2f}s; retry later",
                           wait - target)

    def snapshot(self) -> list[tuple[str, int, float]]:
        """(class, queued requests, predicted wait in seconds) per class, for the metrics."""
        rate = self.drain_rate()
        return [(c.name, self.queued[rank], self.predicted_wait(rank, rate) if rate else 0.0)
                for rank, c in enumerate(self.classes.classes)]

    def _mean_queued_tokens(self) -> float:
        return sum(self.queued_tokens) / max(1, self.total_queued)
