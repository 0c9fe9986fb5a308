"""Gathering prompt logprobs and pooled sums across chunks, and across a recompute after preemption."""

from __future__ import annotations

import pytest
import torch

from llmserve.engine.outputs import TokenLogprobs
from llmserve.engine.prompt_results import PromptResults
from llmserve.pooling_params import PoolingParams


def _entries(first: int, last: int) -> list[TokenLogprobs]:
    return [TokenLogprobs(i, -float(i), 1, []) for i in range(first, last + 1)]


def test_logprobs_across_chunks_and_a_recompute():
    results = PromptResults(num_prompt_tokens=6, num_logprobs=0)
    assert results.logprobs == [None] and not results.is_complete
    assert results.wants_logprobs(3)
    results.add_logprobs(0, _entries(1, 3))  # chunk [0, 3): its last row predicts token 3
    assert results.prompt_logprobs() is None  # not complete yet
    results.add_logprobs(0, _entries(1, 4))  # recomputed from the start after a preemption: 1-3 are dropped
    assert [e.token_id for e in results.logprobs[1:]] == [1, 2, 3, 4]
    assert not results.wants_logprobs(4) and results.wants_logprobs(5)
    results.add_logprobs(4, _entries(5, 5))  # the chunk that ends the prompt
    assert results.is_complete and [e and e.token_id for e in results.prompt_logprobs()] == [None, 1, 2, 3, 4, 5]
    assert not results.wants_logprobs(6)
    with pytest.raises(RuntimeError):
        PromptResults(num_prompt_tokens=6, num_logprobs=0).add_logprobs(2, _entries(3, 4))  # a gap


def test_pooled_sum_restarts_with_a_recompute():
    results = PromptResults(num_prompt_tokens=5, pooling=PoolingParams(normalize=False))
    results.add_pooled(0, 3, torch.tensor([3.0, 6.0]))
    results.add_pooled(0, 2, torch.tensor([2.0, 4.0]))  # recomputed after a preemption
    assert results.embedding() is None
    results.add_pooled(2, 3, torch.tensor([3.0, 1.0]))
    assert results.embedding() == [1.0, 1.0]
    normalized = PromptResults(num_prompt_tokens=1, pooling=PoolingParams())
    normalized.add_pooled(0, 1, torch.tensor([3.0, 4.0]))
    assert normalized.embedding() == pytest.approx([0.6, 0.8])
