"""What the tests use instead of racing the clock: service classes without latency targets, a
poll with a generous bound, and a clock the test moves by hand.

The suite runs on shared 2-core machines next to other test runs, so a wait that "always" takes
50 ms sometimes takes seconds. A test that is not about timing must not depend on any of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from llmserve.service_classes import DEFAULT_SERVICE_CLASSES, ServiceClasses

PATIENCE_S = 60.0  # how long a poll waits for something that normally takes milliseconds


def classes_without_targets(classes: ServiceClasses = DEFAULT_SERVICE_CLASSES) -> ServiceClasses:
    """The same classes and shares, with no TTFT or E2E target: nothing is shed for being slow,
    which a server in a test that is not about shedding must never be."""
    untimed = tuple(replace(c, ttft_target=None, e2e_target=None) for c in classes.classes)
    return ServiceClasses(untimed, classes.default)


def wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE_S) -> bool:
    """Poll `predicate` until it holds; False only after `timeout` seconds without it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
