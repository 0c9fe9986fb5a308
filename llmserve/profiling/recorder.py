"""Timed regions of one step: a torch.profiler range and a pair of device clock marks each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch.profiler import record_function

from llmserve.profiling.clock import DeviceClock
from llmserve.runner.step_batch import StepBatch

RANGE_PREFIX = "llmserve::"


@dataclass
class _Span:
    category: str
    start: Any
    end: Any


@dataclass
class Recorder:
    """Collects the regions of the current step. Only the outermost region counts, so a wrapped call
    that reaches another wrapped call (a quantized head through a linear, say) is timed once."""

    clock: DeviceClock
    spans: list[_Span] = field(default_factory=list)
    batches: list[StepBatch] = field(default_factory=list)
    _depth: int = 0

    @contextmanager
    def region(self, category: str) -> Iterator[None]:
        if self._depth:
            yield
            return
        self._depth += 1
        try:
            with record_function(RANGE_PREFIX + category):
                start = self.clock.mark()
                yield
                self.spans.append(_Span(category, start, self.clock.mark()))
        finally:
            self._depth -= 1

    def take(self) -> dict[str, float]:
        """Seconds per category since the last take (synchronizes the device once)."""
        self.clock.synchronize()
        totals: dict[str, float] = {}
        for span in self.spans:
            totals[span.category] = totals.get(span.category, 0.0) + self.clock.seconds(span.start, span.end)
        self.spans.clear()
        return totals

    def take_batches(self) -> list[StepBatch]:
        batches, self.batches = self.batches, []
        return batches
