"""The per-step message from the engine to the model runner: what to compute, nothing mutable.

The runner never sees a `Request`: it gets, per scheduled sequence, the tokens to compute this
step, where they start, the sequence's KV blocks and, when the step ends at the sequence's last
token, what the sampler needs (and the draft tokens after it, with speculative decoding); for a
request that wants its prompt's logprobs or pooled hidden states, what those need.
The engine keeps the `Request`s and maps results back by their index in `sequences`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llmserve.engine.request import Request
from llmserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llmserve.structured.guide import Guide


@dataclass(frozen=True)
class SamplingInputs:
    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]  # the tokens generated so far (penalties read them)
    generator: torch.Generator | None
    blocked_token_ids: Sequence[int]  # may not be sampled yet (min_tokens)
    guide: Guide | None = None  # the grammar the next token must follow; the runner only reads it


@dataclass(frozen=True)
class ScheduledSequence:
    token_ids: list[int]  # the tokens this step computes
    start: int  # position of the first of them (tokens whose KV is cached already)
    block_ids: list[int]  # the sequence's KV blocks, in order
    sampling: SamplingInputs | None  # set when this step reaches the sequence's last token
    # Top-k of the prompt logprobs this chunk's rows give (set only when they give some not held yet)
    prompt_logprobs: int | None = None
    # The prompt token after this chunk, which its last row predicts (None: the chunk ends the prompt)
    next_prompt_token: int | None = None
    pool: bool = False  # sum this chunk's last hidden states (an embedding request)
    # Speculative drafts: the last len(draft_token_ids) of token_ids, each verified by the row before it
    draft_token_ids: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class SchedulerOutput:
    sequences: list[ScheduledSequence]  # single-token (decode) entries first

    @property
    def num_decodes(self) -> int:
        return sum(1 for s in self.sequences if s.num_tokens == 1)


def scheduler_output(scheduled: list[tuple[Request, int]]) -> SchedulerOutput:
    """The message for a step that computes `num_new` tokens of each request."""
    return SchedulerOutput([_sequence(request, num_new) for request, num_new in scheduled])


def _sequence(request: Request, num_new: int) -> ScheduledSequence:
    start = request.num_computed_tokens
    end = start + num_new
    drafts = tuple(request.spec_token_ids[:max(0, end - request.num_tokens)])
    end -= len(drafts)
    sampling = None
    if end == request.num_tokens and request.max_tokens > 0:  # max_tokens 0: the prompt is only prefilled
        sampling = SamplingInputs(request.params, request.prompt_token_ids, request.output_token_ids,
                                  request.generator, blocked_token_ids(request), request.guide)
    results = request.prompt_results
    top_k, next_token, pool = None, None, False
    if results is not None:
        if results.wants_logprobs(end):
            top_k = results.num_logprobs
            next_token = request.prompt_token_ids[end] if end < request.num_prompt_tokens else None
        pool = results.wants_pooling(end)
    return ScheduledSequence(request.token_slice(start, end) + list(drafts), start, request.block_ids, sampling,
                             top_k, next_token, pool, drafts)


def blocked_token_ids(request: Request) -> list[int]:
    """Tokens that would end the request before min_tokens is reached. Under a grammar that allows
    nothing but its end, the sampler lets them through (runner/sampler.py): the grammar wins."""
    if len(request.output_token_ids) >= request.params.min_tokens:
        return []
    return list(request.eos_token_ids) + list(request.params.stop_token_ids or [])  # eos is () with ignore_eos
