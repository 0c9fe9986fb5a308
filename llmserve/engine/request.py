"""One sequence being generated: its tokens, its KV blocks, its progress and its timings."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llmserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llmserve.engine.detokenizer import IncrementalDetokenizer
    from llmserve.engine.outputs import TokenLogprobs
    from llmserve.engine.prompt_results import PromptResults
    from llmserve.spec_decode.acceptance import AcceptanceTracker
    from llmserve.structured.guide import Guide


class RequestStatus(enum.IntEnum):
    """Ordered: everything after PREEMPTED is finished."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH: "length",
                   RequestStatus.FINISHED_ABORTED: "abort", RequestStatus.FINISHED_ERROR: "error"}


@dataclass
class RequestTimes:
    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


@dataclass(eq=False)
class Request:
    """A single sequence. A user request with n > 1 becomes n of these sharing a parent id."""

    request_id: str
    parent_id: str
    index: int  # position among the parent's n sequences
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    eos_token_ids: tuple[int, ...]
    generator: torch.Generator | None = None
    detokenizer: IncrementalDetokenizer | None = None
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # prefix-cache keys of its full blocks
    num_committed_blocks: int = 0  # leading blocks already offered to the prefix cache
    num_cached_tokens: int | None = None  # prompt tokens found in the prefix cache at first admission
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: str | int | None = None
    error: str | None = None
    num_preemptions: int = 0
    times: RequestTimes = field(default_factory=RequestTimes)
    priority: int = 0  # the service class rank: 0 is the most important
    sequence_number: int = 0  # arrival order, the FCFS tie-breaker
    guide: Guide | None = None  # its grammar's state when the output is constrained (its own, per sequence)
    # Prompt logprobs / pooled states being gathered (the parent's first sequence only, when asked)
    prompt_results: PromptResults | None = None
    # Draft tokens to verify after its pending token this step (speculative decoding), and how well its
    # drafts have held so far
    spec_token_ids: list[int] = field(default_factory=list)
    spec_acceptance: AcceptanceTracker | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens whose KV is not yet in the cache (prompt, or everything again after preemption)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def num_pending_with_drafts(self) -> int:
        """Pending tokens plus the drafts that ride on a decode's single pending token."""
        pending = self.num_pending_tokens
        return pending + len(self.spec_token_ids) if pending == 1 else pending

    def token_slice(self, start: int, end: int) -> list[int]:
        prompt_len = len(self.prompt_token_ids)
        if end <= prompt_len:
            return self.prompt_token_ids[start:end]
        if start >= prompt_len:
            return self.output_token_ids[start - prompt_len:end - prompt_len]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - prompt_len]

    @property
    def needs_prompt_states(self) -> bool:
        """Whether its prompt's hidden states must still be computed, so a prefix-cache hit is no use."""
        return self.prompt_results is not None and not self.prompt_results.is_complete

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished
