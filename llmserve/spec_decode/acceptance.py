"""Which of a sequence's verified rows become tokens, and when a request should stop speculating.

Each verified row j of a sequence with drafts d_0..d_{D-1} yields a token t_j from the sampler: the
target's argmax for greedy rows, and for sampled rows a rejection-sampled token that equals d_j with
probability p(d_j) and is otherwise drawn from p without d_j (sampler.py). Either way t_j is what the
target gives after the drafts before it, so the tokens are t_0..t_k where k is the first row whose
token differs from its draft (or D: every draft held, and t_D is the bonus token).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmserve.engine.block_manager import BlockManager
    from llmserve.engine.request import Request
    from llmserve.engine.scheduler_output import SchedulerOutput
    from llmserve.runner.step_result import StepResult

# A request whose drafts are accepted less often than this (moving average) stops speculating: on a CPU
# each draft row costs about what it saves only when it is accepted this often or more.
MIN_ACCEPTANCE = 0.3
EMA_WEIGHT = 0.3  # of the latest step in the moving average
RETRY_AFTER = 32  # decode steps a skipped request waits before it tries drafts again


def accepted_length(tokens: list[int], drafts: list[int]) -> int:
    """How many drafts the row tokens confirm: the tokens kept are tokens[:k + 1]."""
    k = 0
    while k < len(drafts) and tokens[k] == drafts[k]:
        k += 1
    return k


@dataclass
class AcceptanceTracker:
    """Per request: moving averages of accepted / drafted (a low one earns a pause) and of the drafts
    accepted per step, which sizes the next proposal: each draft row costs compute (on a CPU without
    fast small-batch kernels a verification of K drafts costs well over one decode), so a request
    drafts one more than it has lately been accepting, up to K."""

    rate: float = 1.0  # optimistic: a request is given the chance to show its drafts hold
    length: float | None = None  # drafts accepted per verification (None: none yet, draft K)
    paused_steps: int = 0  # decode steps left before drafting again

    def draft_length(self, limit: int) -> int:
        if self.length is None:
            return limit
        return max(1, min(limit, int(self.length) + 1))

    def should_draft(self) -> bool:
        if self.paused_steps > 0:
            self.paused_steps -= 1
            if self.paused_steps == 0:
                self.rate = MIN_ACCEPTANCE  # one more try: a good step lifts it, a bad one pauses again
            return False
        return True

    def record(self, num_drafts: int, num_accepted: int) -> None:
        if num_drafts == 0:
            return
        self.rate += EMA_WEIGHT * (num_accepted / num_drafts - self.rate)
        previous = num_drafts if self.length is None else self.length
        self.length = previous + EMA_WEIGHT * (num_accepted - previous)
        if self.rate < MIN_ACCEPTANCE:
            self.paused_steps = RETRY_AFTER


@dataclass
class SpecDecodeStats:
    """Cumulative counts since start, vLLM's spec_decode_num_* counters."""

    num_drafts: int = 0  # verification steps of a sequence with at least one draft
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0


def record_verification(scheduled: list[tuple[Request, int]], message: SchedulerOutput, result: StepResult,
                        stats: SpecDecodeStats, block_manager: BlockManager) -> None:
    """After a step's tokens are appended: count drafts and acceptances, update each request's moving
    average, name the blocks its accepted drafts filled, and clear its drafts for the next proposal."""
    accepted = Counter(token.seq_index for token in result.sampled if token.is_draft)
    for index, ((request, _), seq) in enumerate(zip(scheduled, message.sequences, strict=True)):
        num_drafts = len(seq.draft_token_ids)
        request.spec_token_ids = []
        if num_drafts == 0:
            continue
        stats.num_drafts += 1
        stats.num_draft_tokens += num_drafts
        stats.num_accepted_tokens += accepted[index]
        if request.spec_acceptance is not None:
            request.spec_acceptance.record(num_drafts, accepted[index])
        if not request.is_finished:
            block_manager.cache_full_blocks(request)
