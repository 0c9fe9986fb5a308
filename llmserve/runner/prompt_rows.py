"""Which rows of a step the runner keeps besides the sampled ones, and the prompt results it makes of them.

A sequence's chunk keeps a contiguous span of its rows: the last when it samples, the rows that
predict a prompt token when it wants prompt logprobs, all of them when it is pooled. The step keeps
the spans of all sequences back to back, so each sequence finds its rows at an offset.

Row j of a chunk that starts at position s predicts token s + j + 1: all rows but the last predict
a token of the chunk itself, and the last predicts the prompt token the next chunk starts with,
which the scheduler passes as `next_prompt_token` (None when the chunk ends the prompt: that row
predicts the first generated token instead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmserve.engine.outputs import TokenLogprobs
from llmserve.engine.scheduler_output import ScheduledSequence, SchedulerOutput

# Prompt logprobs are computed over at most this many rows at once: a chunk of thousands of rows
# times a vocabulary of 150k would otherwise hold gigabytes of float32 logits.
ROWS_PER_SLICE = 256


def prompt_targets(seq: ScheduledSequence) -> list[int]:
    """The prompt tokens that the chunk's rows predict, first row first."""
    targets = seq.token_ids[1:]
    return targets + [seq.next_prompt_token] if seq.next_prompt_token is not None else targets


def kept_span(seq: ScheduledSequence) -> tuple[int, int]:
    """[lo, hi): the chunk's rows whose last hidden states the step keeps."""
    n = seq.num_tokens
    if seq.pool:
        return 0, n
    if seq.prompt_logprobs is not None:  # with sampling, the chunk ends the prompt: its last row samples
        return 0, n if seq.sampling is not None else len(prompt_targets(seq))
    if seq.sampling is not None:  # the pending token's row, then one per draft
        return n - 1 - len(seq.draft_token_ids), n
    return 0, 0


@dataclass(frozen=True)
class KeptRows:
    """Where each sequence's kept rows sit among the step's kept hidden states."""

    spans: list[tuple[int, int]]  # per sequence: [lo, hi) of its chunk's rows
    offsets: list[int]  # per sequence: where its kept rows begin

    @classmethod
    def of(cls, output: SchedulerOutput) -> KeptRows:
        spans = [kept_span(seq) for seq in output.sequences]
        offsets, total = [], 0
        for lo, hi in spans:
            offsets.append(total)
            total += hi - lo
        return cls(spans, offsets)

    def flat_rows(self, output: SchedulerOutput) -> list[int]:
        """The kept rows as indices into the step's flat batch, ascending."""
        rows: list[int] = []
        start = 0
        for seq, (lo, hi) in zip(output.sequences, self.spans, strict=True):
            rows.extend(range(start + lo, start + hi))
            start += seq.num_tokens
        return rows

    def row(self, index: int, chunk_row: int) -> int:
        """Where row `chunk_row` of sequence `index`'s chunk sits among the kept rows."""
        lo, hi = self.spans[index]
        assert lo <= chunk_row < hi
        return self.offsets[index] + chunk_row - lo

    def rows(self, index: int, count: int) -> slice:
        """The first `count` rows of sequence `index`'s chunk (its span must start at row 0)."""
        assert self.spans[index][0] == 0 and count <= self.spans[index][1]
        return slice(self.offsets[index], self.offsets[index] + count)

    @property
    def num_rows(self) -> int:
        return sum(hi - lo for lo, hi in self.spans)


def prompt_logprobs(logits_of: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                    targets: list[int], top_k: int) -> list[TokenLogprobs]:
    """The float32 log-softmax of the raw logits of each row of `hidden` at its target token, with
    its rank (1 = the best; ties share the better rank) and the `top_k` best tokens."""
    entries: list[TokenLogprobs] = []
    for first in range(0, len(targets), ROWS_PER_SLICE):
        part = targets[first:first + ROWS_PER_SLICE]
        logprobs = torch.log_softmax(logits_of(hidden[first:first + len(part)]).float(), dim=-1)
        wanted = torch.tensor(part, dtype=torch.long, device=logprobs.device).unsqueeze(1)
        chosen = logprobs.gather(1, wanted)
        ranks = (logprobs > chosen).sum(dim=-1) + 1
        top_values, top_ids = logprobs.topk(min(top_k, logprobs.shape[1]), dim=-1)
        # One device->host copy per tensor, not one per row.
        chosen_l, ranks_l = chosen.squeeze(1).tolist(), ranks.tolist()
        values_l, ids_l = top_values.tolist(), top_ids.tolist()
        entries += [TokenLogprobs(token, chosen_l[j], ranks_l[j], list(zip(ids_l[j], values_l[j], strict=True)))
                    for j, token in enumerate(part)]
    return entries
