"""The sampler rows of a step that verifies drafts, and the tokens kept from them.

A sequence with drafts d_0..d_{D-1} has D + 1 verified rows: row j sees the pending token and
d_0..d_{j-1}, so it is sampled as if those drafts had been generated already. Its penalties count
them, min_tokens blocks stop tokens while fewer than min_tokens would be out, and its logprobs are
those of that context: every kept token is exactly what decoding one token at a time would give.
Sequences without drafts contribute their single row as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llmserve.engine.outputs import TokenLogprobs
from llmserve.engine.scheduler_output import SchedulerOutput
from llmserve.runner.prompt_rows import KeptRows
from llmserve.runner.step_result import SampledToken
from llmserve.sampling_params import SamplingParams
from llmserve.spec_decode.acceptance import accepted_length
from llmserve.structured.guide import Guide


@dataclass
class VerifyRows:
    seq_indices: list[int] = field(default_factory=list)  # per sampled sequence
    drafts: list[tuple[int, ...]] = field(default_factory=list)  # per sampled sequence
    hidden_rows: list[int] = field(default_factory=list)  # per row: its place among the kept hidden states
    params: list[SamplingParams] = field(default_factory=list)
    prompt_token_ids: list[Sequence[int]] = field(default_factory=list)
    output_token_ids: list[Sequence[int]] = field(default_factory=list)
    generators: list[torch.Generator | None] = field(default_factory=list)
    blocked_token_ids: list[Sequence[int]] = field(default_factory=list)
    guides: list[Guide | None] = field(default_factory=list)
    draft_token_ids: list[int | None] = field(default_factory=list)  # per row: the draft it tests, if any

    @classmethod
    def of(cls, output: SchedulerOutput, kept: KeptRows, rows: list[int]) -> VerifyRows:
        plan = cls()
        for i in rows:
            seq = output.sequences[i]
            sampling = seq.sampling
            assert sampling is not None
            drafts = seq.draft_token_ids
            assert not drafts or sampling.guide is None  # the proposer never drafts for a grammar
            plan.seq_indices.append(i)
            plan.drafts.append(drafts)
            first = seq.num_tokens - 1 - len(drafts)
            out = list(sampling.output_token_ids)
            for j in range(len(drafts) + 1):
                plan.hidden_rows.append(kept.row(i, first + j))
                plan.params.append(sampling.params)
                plan.prompt_token_ids.append(sampling.prompt_token_ids)
                plan.output_token_ids.append(out + list(drafts[:j]) if j else sampling.output_token_ids)
                plan.generators.append(sampling.generator)
                blocked = sampling.blocked_token_ids if len(out) + j < sampling.params.min_tokens else []
                plan.blocked_token_ids.append(blocked if j else sampling.blocked_token_ids)
                plan.guides.append(sampling.guide)
                plan.draft_token_ids.append(drafts[j] if j < len(drafts) else None)
        return plan

    def accepted(self, token_ids: list[int], logprobs: list[TokenLogprobs | None]) -> list[SampledToken]:
        """Each sequence's kept tokens in order: its accepted drafts, then the token after them."""
        kept: list[SampledToken] = []
        row = 0
        for i, drafts in zip(self.seq_indices, self.drafts, strict=True):
            tokens = token_ids[row:row + len(drafts) + 1]
            k = accepted_length(tokens, list(drafts))
            kept += [SampledToken(i, tokens[j], logprobs[row + j], is_draft=j < k) for j in range(k + 1)]
            row += len(drafts) + 1
        return kept
