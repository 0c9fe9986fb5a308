"""Which rows a step keeps for sampling, prompt logprobs and pooling, and where each sequence finds them."""

from __future__ import annotations

import torch

from llmserve.engine.scheduler_output import SamplingInputs, ScheduledSequence, SchedulerOutput
from llmserve.runner.prompt_rows import KeptRows, kept_span, prompt_logprobs, prompt_targets
from llmserve.runner.step_batch import build_step_batch
from llmserve.sampling_params import SamplingParams

SAMPLING = SamplingInputs(SamplingParams(), [1], [], None, [])


def _seq(tokens: list[int], sampling: bool = False, top_k: int | None = None, next_token: int | None = None,
         pool: bool = False) -> ScheduledSequence:
    return ScheduledSequence(tokens, 0, [0, 1, 2], SAMPLING if sampling else None, top_k, next_token, pool)


def test_targets_cross_into_the_next_chunk():
    assert prompt_targets(_seq([5, 6, 7], top_k=1, next_token=8)) == [6, 7, 8]
    assert prompt_targets(_seq([5, 6, 7], top_k=1)) == [6, 7]  # the chunk ends the prompt


def test_kept_spans():
    assert kept_span(_seq([5, 6, 7])) == (0, 0)
    assert kept_span(_seq([5, 6, 7], sampling=True)) == (2, 3)
    assert kept_span(_seq([5, 6, 7], top_k=0, next_token=8)) == (0, 3)
    assert kept_span(_seq([5, 6, 7], top_k=0)) == (0, 2)  # max_tokens 0: the last row predicts nothing wanted
    assert kept_span(_seq([5, 6, 7], sampling=True, top_k=0)) == (0, 3)
    assert kept_span(_seq([5, 6, 7], pool=True)) == (0, 3)


def test_kept_rows_in_the_flat_batch():
    output = SchedulerOutput([_seq([9], sampling=True), _seq([5, 6, 7], top_k=2, next_token=8),
                              _seq([1, 2], sampling=True), _seq([3, 4, 5, 6], pool=True), _seq([7, 8])])
    kept = KeptRows.of(output)
    batch = build_step_batch(output, block_size=4, kept=kept)
    assert batch.logits_indices.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert kept.row(0, 0) == 0 and kept.row(2, 1) == 4
    assert kept.rows(1, 3) == slice(1, 4) and kept.rows(3, 4) == slice(5, 9)
    assert kept.num_rows == 9


def test_decode_only_batch_keeps_every_row_in_order():
    # CUDA graph replay hands back all rows when their count equals the sequences'
    output = SchedulerOutput([_seq([9], sampling=True), _seq([5], top_k=0, next_token=8), _seq([3], pool=True)])
    assert build_step_batch(output, block_size=4).logits_indices.tolist() == [0, 1, 2]


def test_prompt_logprobs_of_rows_in_slices(monkeypatch):
    import llmserve.runner.prompt_rows as prompt_rows

    monkeypatch.setattr(prompt_rows, "ROWS_PER_SLICE", 2)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 8, generator=gen)
    head = torch.randn(8, 11, generator=gen)
    targets = [3, 0, 10, 7, 7]
    entries = prompt_logprobs(lambda h: h @ head, hidden, targets, 3)
    expected = torch.log_softmax(hidden @ head, dim=-1)
    for row, (target, entry) in enumerate(zip(targets, entries, strict=True)):
        assert entry.token_id == target
        assert abs(entry.logprob - expected[row, target].item()) < 1e-6
        assert entry.rank == int((expected[row] > expected[row, target]).sum()) + 1
        assert [t for t, _ in entry.top] == expected[row].topk(3).indices.tolist()
    assert all(e.top == [] for e in prompt_logprobs(lambda h: h @ head, hidden, targets, 0))
