"""What a request's prompt chunks give besides KV: its prompt logprobs and its pooled hidden states.

Gathered chunk by chunk from each step's StepResult. A sequence preempted mid-prefill is recomputed
from its first token: logprobs already held are kept (a stream may have sent them) and the
recomputed rows' duplicates are dropped; a pooled sum restarts, since a sum cannot drop rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llmserve.engine.outputs import TokenLogprobs
from llmserve.pooling_params import PoolingParams

if TYPE_CHECKING:
    from llmserve.engine.request import Request
    from llmserve.runner.step_result import StepResult


@dataclass
class PromptResults:
    num_prompt_tokens: int
    num_logprobs: int | None = None  # the top-k of prompt logprobs; None: not wanted
    pooling: PoolingParams | None = None
    # One entry per prompt token so far; the first token has None (nothing predicts it).
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    pooled_sum: torch.Tensor | None = None  # float32 [hidden]
    num_pooled: int = 0  # prompt tokens in pooled_sum, from the first on

    def __post_init__(self) -> None:
        if self.num_logprobs is not None and not self.logprobs:
            self.logprobs = [None]

    @property
    def logprobs_complete(self) -> bool:
        return self.num_logprobs is None or len(self.logprobs) == self.num_prompt_tokens

    @property
    def pooling_complete(self) -> bool:
        return self.pooling is None or self.num_pooled == self.num_prompt_tokens

    @property
    def is_complete(self) -> bool:
        return self.logprobs_complete and self.pooling_complete

    def wants_logprobs(self, end: int) -> bool:
        """Whether a chunk ending at position `end` gives entries not held yet: its rows predict
        the tokens up to position min(end, P - 1)."""
        return self.num_logprobs is not None and min(end, self.num_prompt_tokens - 1) >= len(self.logprobs)

    def wants_pooling(self, end: int) -> bool:
        """Every prompt chunk is summed, even one summed before a preemption: the sum restarts with it."""
        return self.pooling is not None and end <= self.num_prompt_tokens

    def add_logprobs(self, start: int, entries: list[TokenLogprobs]) -> None:
        """Entries of a chunk that starts at position `start`: those of tokens start + 1, ...."""
        held = len(self.logprobs)
        if start + 1 > held:
            raise RuntimeError(f"prompt logprobs from position {start + 1} arrived with {held} held")
        self.logprobs.extend(entries[held - (start + 1):][:self.num_prompt_tokens - held])

    def add_pooled(self, start: int, num_rows: int, total: torch.Tensor) -> None:
        if start == 0:  # the first chunk, or the first again after a preemption
            self.pooled_sum, self.num_pooled = None, 0
        if start != self.num_pooled:
            raise RuntimeError(f"pooled rows from position {start} arrived with {self.num_pooled} summed")
        # Out of place: the runner's tensors are inference tensors, which may not be updated in place here.
        self.pooled_sum = total.float() if self.pooled_sum is None else self.pooled_sum + total.float()
        self.num_pooled += num_rows

    def prompt_logprobs(self) -> list[TokenLogprobs | None] | None:
        """The entries once every prompt token has one (the same list each time: it no longer changes)."""
        if self.num_logprobs is None or not self.logprobs_complete:
            return None
        return self.logprobs

    def embedding(self) -> list[float] | None:
        if self.pooling is None or not self.pooling_complete or self.pooled_sum is None:
            return None
        mean = self.pooled_sum.cpu() / self.num_pooled
        if self.pooling.normalize:
            mean = torch.nn.functional.normalize(mean, dim=0)
        return mean.tolist()


def record_prompt_results(scheduled: list[tuple[Request, int]], starts: list[int], result: StepResult) -> None:
    """Hand a step's prompt logprobs and pooled sums to the requests they belong to; `starts[i]` is
    where sequence i's chunk began."""
    for index, entries in result.prompt_logprobs.items():
        request = scheduled[index][0]
        if request.prompt_results is not None:
            request.prompt_results.add_logprobs(starts[index], entries)
    for index, total in result.pooled.items():
        request, num_new = scheduled[index]
        if request.prompt_results is not None:
            request.prompt_results.add_pooled(starts[index], num_new, total)
