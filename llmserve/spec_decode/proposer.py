"""Chooses, before each step, the draft tokens of every running request that may speculate.

A request speculates only where its drafts can be verified exactly and cheaply: it is decoding (one
token pending, so no prompt chunk or recomputation is under way), has no grammar (a guide would have
to advance over each draft and roll back), and its drafts have paid off lately (acceptance.py).
Drafts are cut so that the request's last possible token is never a draft: with max_tokens m and o
tokens out, at most m - o - 1 drafts, which also keeps every draft inside the context and the pool.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from llmserve.engine.request import Request
from llmserve.spec_decode.acceptance import AcceptanceTracker
from llmserve.spec_decode.config import SpeculativeConfig
from llmserve.spec_decode.ngram import propose_ngram


class NgramProposer:
    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config

    def propose(self, requests: Iterable[Request]) -> None:
        """Set each request's `spec_token_ids` for the coming step ([] where it does not speculate)."""
        for request in requests:
            request.spec_token_ids = self._drafts(request)

    def _drafts(self, request: Request) -> list[int]:
        if request.num_pending_tokens != 1 or request.guide is not None or request.needs_prompt_states:
            return []
        room = min(self.config.num_speculative_tokens, request.max_tokens - len(request.output_token_ids) - 1)
        if room < 1:
            return []
        tracker = request.spec_acceptance
        if tracker is None:
            tracker = request.spec_acceptance = AcceptanceTracker()
        if not tracker.should_draft():
            return []
        room = tracker.draft_length(room)
        tokens = np.fromiter(request.prompt_token_ids, dtype=np.int64, count=request.num_prompt_tokens)
        if request.output_token_ids:
            tokens = np.concatenate((tokens, np.asarray(request.output_token_ids, dtype=np.int64)))
        config = self.config
        return propose_ngram(tokens, room, config.prompt_lookup_min, config.prompt_lookup_max)
