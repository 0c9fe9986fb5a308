"""Rejection sampling with a one-hot draft keeps the target distribution, token for token."""

from __future__ import annotations

import torch

from llmserve import SamplingParams
from llmserve.runner.sampler import Sampler

VOCAB = 6
LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 1.5])
ROWS = 40_000


def _frequencies(params: SamplingParams, draft: int, seed: int) -> tuple[torch.Tensor, float]:
    logits = LOGITS.repeat(ROWS, 1)
    tokens = Sampler(seed=seed).sample(logits, [params] * ROWS, [[]] * ROWS, [[]] * ROWS, [None] * ROWS,
                                       draft_token_ids=[draft] * ROWS).token_ids
    counts = torch.bincount(torch.tensor(tokens), minlength=VOCAB).double()
    return counts / ROWS, tokens.count(draft) / ROWS


def _target(params: SamplingParams) -> torch.Tensor:
    logits = LOGITS.double() / params.temperature
    if params.top_k > 0:
        cut = logits.topk(params.top_k).values[-1]
        logits = logits.masked_fill(logits < cut, float("-inf"))
    return logits.softmax(-1)


def test_tokens_follow_the_target_for_any_draft():
    params = SamplingParams(temperature=0.8, max_tokens=1)
    target = _target(params)
    for seed, draft in enumerate(range(VOCAB)):
        freq, kept = _frequencies(params, draft, seed)
        # Total variation of 40,000 draws from 6 outcomes: about 0.005 by chance; 0.02 is far out.
        assert 0.5 * (freq - target).abs().sum() < 0.02
        assert abs(kept - target[draft]) < 0.02  # the draft is kept as often as the target picks it


def test_a_draft_the_target_excludes_is_never_kept():
    params = SamplingParams(temperature=1.0, top_k=3, max_tokens=1)
    freq, kept = _frequencies(params, draft=4, seed=11)
    assert kept == 0.0
    assert 0.5 * (freq - _target(params)).abs().sum() < 0.02


def test_seeded_rows_draw_from_their_own_generator():
    params = SamplingParams(temperature=1.0, max_tokens=1, seed=3)

    def run() -> list[int]:
        gens = [torch.Generator().manual_seed(100 + i) for i in range(8)]
        return Sampler(seed=0).sample(LOGITS.repeat(8, 1), [params] * 8, [[]] * 8, [[]] * 8, gens,
                                      draft_token_ids=[1] * 8).token_ids

    assert run() == run()
