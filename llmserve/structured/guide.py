"""One sequence's grammar state, and the batch's token mask.

The engine owns a Guide per constrained sequence: the runner's sampler asks it which tokens may
come next (`apply_guides`), the engine tells it which one came (`accept`). Rows without a guide
are never touched, and a batch without guides allocates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import xgrammar as xgr


class Guide:
    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advance past the sampled token; False if the grammar did not allow it."""
        return self._matcher.accept_token(token_id)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted: nothing more may follow."""
        return self._matcher.is_terminated()

    @property
    def is_completed(self) -> bool:
        """What was generated matches the grammar whole (more may still be allowed)."""
        return self._matcher.is_completed()


def apply_guides(logits: torch.Tensor, guides: Sequence[Guide | None]) -> None:
    """Set to -inf, in place, every logit its row's grammar forbids (ids past the tokenizer's
    vocabulary included); rows without a guide keep theirs."""
    rows = [i for i, guide in enumerate(guides) if guide is not None]
    if not rows:
        return
    # Rows of the bitmask follow the logits' rows; only the guided ones are filled and applied.
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[1])
    for row in rows:
        guides[row].fill(bitmask, row)  # type: ignore[union-attr]
    indices = None if len(rows) == logits.shape[0] else rows
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True),
                                    vocab_size=logits.shape[1], indices=indices)
