"""Per-step facts (tokens and sequences a step ran, preemptions, recent step rate) for metrics.

The engine thread records one entry per step; a scrape on another thread takes a snapshot. Exact
counts per value are kept rather than histogram buckets: the engine stays free of Prometheus, the
exporter chooses buckets, and the tables stay small (a step runs at most max_num_batched_tokens
tokens and max_num_seqs sequences).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# How far back the recent step rate looks: long enough to smooth a few slow steps, short enough
# that a gauge scraped every 15 s follows the load.
RECENT_WINDOW_S = 10.0
_MAX_RECENT = 8192  # step times kept; at more steps than this per window the rate spans fewer seconds


@dataclass(frozen=True)
class StepStats:
    """Cumulative since the engine started, except `recent_steps_per_second`."""

    num_steps: int = 0
    tokens_per_step: dict[int, int] = field(default_factory=dict)  # tokens a step ran -> how many steps
    seqs_per_step: dict[int, int] = field(default_factory=dict)  # sequences a step ran -> how many steps
    num_preemptions: int = 0
    recent_steps_per_second: float = 0.0  # over the last RECENT_WINDOW_S seconds


@dataclass
class StepRecorder:
    clock: Callable[[], float] = time.monotonic
    window: float = RECENT_WINDOW_S
    _tokens: Counter = field(default_factory=Counter)
    _seqs: Counter = field(default_factory=Counter)
    _num_steps: int = 0
    _num_preemptions: int = 0
    _recent: deque = field(default_factory=lambda: deque(maxlen=_MAX_RECENT))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, num_tokens: int, num_seqs: int, num_preempted: int) -> None:
        """One scheduling round: a step ran only if it scheduled a sequence, but preemptions count anyway."""
        with self._lock:
            self._num_preemptions += num_preempted
            if num_seqs == 0:
                return
            self._num_steps += 1
            self._tokens[num_tokens] += 1
            self._seqs[num_seqs] += 1
            self._recent.append(self.clock())

    def snapshot(self) -> StepStats:
        with self._lock:
            return StepStats(self._num_steps, dict(self._tokens), dict(self._seqs), self._num_preemptions,
                             self._recent_rate(self.clock()))

    def _recent_rate(self, now: float) -> float:
        cutoff = now - self.window
        recent = [t for t in self._recent if t > cutoff]
        if not recent:
            return 0.0
        if len(self._recent) == self._recent.maxlen and recent[0] == self._recent[0]:
            # Every kept step lies inside the window: the rate is over the span they cover.
            return len(recent) / max(now - recent[0], 1e-9)
        return len(recent) / self.window


def weight_bytes_per_step(named_tensors: Iterable[tuple[str, object]], tied_embeddings: bool) -> int:
    """Bytes of weights one forward reads: every weight once, each shared storage once.

    An untied input embedding is only gathered a few rows at a time, so it is left out; a tied
    one is the vocabulary projection too, and read whole. `named_tensors` is a state_dict's
    items, whose non-persistent buffers (rotary tables) are not weights and are absent.
    """
    seen: set[int] = set()
    total = 0
    for name, tensor in named_tensors:
        if not tied_embeddings and name.split(".")[0] == "embed_tokens":
            continue
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        total += tensor.untyped_storage().nbytes()
    return total
