from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from llmserve.runner.sampler import Sampler, SamplerOutput
from llmserve.sampling_params import SamplingParams

V = 32


def _run(
    sampler: Sampler,
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    prompts: Sequence[Sequence[int]] | None = None,
    outputs: Sequence[Sequence[int]] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    blocked: Sequence[Sequence[int]] | None = None,
) -> SamplerOutput:
    b = len(params)
    return sampler.sample(
        logits.clone(),
        params,
        prompts or [[]] * b,
        outputs or [[]] * b,
        generators or [None] * b,
        blocked,
    )


def _random_logits(b: int, seed: int = 0, vocab: int = V) -> torch.Tensor:
    return torch.randn(b, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax() -> None:
    logits = _random_logits(6)
    out = _run(Sampler(0), logits, [SamplingParams(temperature=0.0)] * 6)
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 6


def test_top_k_one_equals_greedy() -> None:
    logits = _random_logits(6)
    out = _run(Sampler(0), logits, [SamplingParams(temperature=1.5, top_k=1)] * 6)
    assert out.token_ids == logits.argmax(-1).tolist()


def test_tiny_top_p_keeps_only_best() -> None:
    logits = _random_logits(6)
    for _ in range(5):
        out = _run(Sampler(), logits, [SamplingParams(temperature=2.0, top_p=1e-6)] * 6)
        assert out.token_ids == logits.argmax(-1).tolist()


def test_top_k_restricts_to_k_best() -> None:
    logits = _random_logits(1)
    allowed = set(logits[0].topk(3).indices.tolist())
    sampler = Sampler(1)
    seen = {
        _run(sampler, logits, [SamplingParams(temperature=5.0, top_k=3)]).token_ids[0] for _ in range(200)
    }
    assert seen == allowed


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    sampler = Sampler(2)
    params = [SamplingParams(top_p=0.7)]
    seen = {_run(sampler, probs.log(), params).token_ids[0] for _ in range(300)}
    assert seen == {0, 1}


def test_min_p_filters_relative_to_max() -> None:
    probs = torch.tensor([[0.4, 0.3, 0.19, 0.11]])
    sampler = Sampler(3)
    # threshold 0.5 * 0.4 = 0.2: drops 0.19 and 0.11
    seen = {_run(sampler, probs.log(), [SamplingParams(min_p=0.5)]).token_ids[0] for _ in range(300)}
    assert seen == {0, 1}


def test_blocked_ids_never_chosen() -> None:
    logits = _random_logits(4)
    best = logits.argmax(-1).tolist()
    blocked = [[best[0]], [best[1], 0, 1], [], list(range(V - 1))]
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)] * 2
    sampler = Sampler(4)
    for _ in range(50):
        out = _run(sampler, logits, params, blocked=blocked)
        for row, ids in enumerate(blocked):
            assert out.token_ids[row] not in ids
    assert out.token_ids[2] == best[2]
    assert out.token_ids[3] == V - 1


def test_penalties_match_hand_computation() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]])
    params = [
        SamplingParams(
            repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25, temperature=0.0, logprobs=0
        )
    ]
    prompt, output = [0, 1], [2, 2, 4]
    expected = [
        2.0 / 2,  # prompt only, positive: divided
        -1.0 * 2,  # prompt only, negative: multiplied
        0.5 / 2 - 0.5 - 0.25 * 2,  # output twice
        3.0,  # unseen
        -2.0 * 2 - 0.5 - 0.25 * 1,  # output once
        1.0,  # unseen
    ]
    out = _run(Sampler(0), logits, params, prompts=[prompt], outputs=[output])
    assert out.token_ids == [3]
    lp = out.logprobs[0]
    assert lp is not None
    assert lp.logprob == pytest.approx(torch.log_softmax(torch.tensor(expected), -1)[3].item(), abs=1e-6)


def test_penalties_only_touch_rows_that_ask() -> None:
    logits = torch.tensor([[1.0, 0.9, 0.0], [1.0, 0.9, 0.0]])
    params = [SamplingParams(temperature=0.0, repetition_penalty=5.0), SamplingParams(temperature=0.0)]
    out = _run(Sampler(0), logits, params, prompts=[[0], [0]])
    assert out.token_ids == [1, 0]


def test_logprobs_values_ranks_and_top() -> None:
    logits = _random_logits(3)
    params = [
        SamplingParams(temperature=0.0, logprobs=5),
        SamplingParams(temperature=0.8, logprobs=0),
        SamplingParams(temperature=0.8),
    ]
    out = _run(Sampler(5), logits, params)
    ref = torch.log_softmax(logits, -1)
    lp0, lp1 = out.logprobs[0], out.logprobs[1]
    assert out.logprobs[2] is None
    assert lp0 is not None and lp1 is not None
    assert lp0.rank == 1 and lp0.token_id == out.token_ids[0]
    assert len(lp0.top) == 5 and lp1.top == []
    top_vals, top_ids = ref[0].topk(5)
    assert [t for t, _ in lp0.top] == top_ids.tolist()
    assert [v for _, v in lp0.top] == pytest.approx(top_vals.tolist(), abs=1e-6)
    tok = out.token_ids[1]
    # Logprobs are pre-temperature: plain log_softmax of the (penalised) logits.
    assert lp1.logprob == pytest.approx(ref[1, tok].item(), abs=1e-6)
    assert lp1.rank == int((ref[1] > ref[1, tok]).sum()) + 1


def test_same_seed_same_tokens_across_calls() -> None:
    logits = _random_logits(1, vocab=1000)
    params = [SamplingParams(temperature=1.0, seed=7)]

    def draw() -> list[int]:
        gen = torch.Generator().manual_seed(7)
        return [_run(Sampler(), logits, params, generators=[gen]).token_ids[0] for _ in range(20)]

    first = draw()
    assert draw() == first
    assert len(set(first)) > 1  # it does sample, not just argmax


def test_seeded_row_independent_of_batch() -> None:
    target = _random_logits(1, seed=11, vocab=500)
    params = SamplingParams(temperature=1.2, top_p=0.95, seed=42)
    gen = torch.Generator().manual_seed(42)
    alone = [_run(Sampler(), target, [params], generators=[gen]).token_ids[0] for _ in range(10)]

    gen = torch.Generator().manual_seed(42)
    batched = []
    for step in range(10):
        others = _random_logits(8, seed=100 + step, vocab=500)
        logits = torch.cat([others[:3], target, others[3:]])
        other_params = [
            SamplingParams(temperature=0.9, top_k=5, min_p=0.1),
            SamplingParams(temperature=0.0),
            SamplingParams(repetition_penalty=1.3),
        ] * 3
        batch_params = other_params[:3] + [params] + other_params[3:8]
        gens: list[torch.Generator | None] = [None] * 9
        gens[3] = gen
        gens[5] = torch.Generator().manual_seed(step)
        prompts = [[1, 2, 3]] * 9
        out = _run(Sampler(), logits, batch_params, prompts=prompts, generators=gens)
        batched.append(out.token_ids[3])
    assert batched == alone


def test_unseeded_distribution_matches_softmax() -> None:
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0, 2.0]])
    temperature = 0.8
    expected = torch.softmax(logits[0] / temperature, -1)
    n = 4000
    sampler = Sampler(1234)
    # Rows in one batch use independent draws from the shared generator.
    out = _run(sampler, logits.expand(n, -1), [SamplingParams(temperature=temperature)] * n)
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=6).float()
    chi2 = float(((counts - n * expected) ** 2 / (n * expected)).sum())
    # 5 degrees of freedom: p(chi2 > 25) < 2e-4
    assert chi2 < 25, (chi2, counts, n * expected)


def test_sampler_seed_is_reproducible() -> None:
    logits = _random_logits(16)
    params = [SamplingParams(temperature=1.0)] * 16
    assert _run(Sampler(9), logits, params).token_ids == _run(Sampler(9), logits, params).token_ids


def test_mixed_batch_all_paths() -> None:
    logits = _random_logits(4)
    params = [
        SamplingParams(temperature=0.0, logprobs=2),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=0.0, frequency_penalty=2.0),
        SamplingParams(top_p=1e-9, seed=1),
    ]
    out = _run(
        Sampler(0),
        logits,
        params,
        outputs=[[], [], [int(logits[2].argmax())] * 3, []],
        generators=[None, None, None, torch.Generator().manual_seed(1)],
    )
    best = logits.argmax(-1).tolist()
    assert out.token_ids[0] == best[0] and out.token_ids[1] == best[1] and out.token_ids[3] == best[3]
    assert out.token_ids[2] != best[2]
    assert all(not math.isnan(v) for _, v in out.logprobs[0].top)


def test_top_k_and_top_p_combined_per_row() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3)
    params = [SamplingParams(top_k=3, top_p=0.6), SamplingParams(top_k=100), SamplingParams(top_k=2)]
    sampler = Sampler(6)
    seen: list[set[int]] = [set(), set(), set()]
    for _ in range(300):
        for row, tok in enumerate(_run(sampler, probs.log(), params).token_ids):
            seen[row].add(tok)
    # top_p renormalises within the top-k: 0.5/0.95 < 0.6, so two tokens stay.
    assert seen == [{0, 1}, {0, 1, 2, 3}, {0, 1}]


def test_bf16_logits_pick_as_their_float32_widening_does() -> None:
    """bf16 logits stay bf16 for a batch of plain greedy rows and are widened otherwise: either
    way every row gets what the float32 copy of the same logits gives."""
    logits = _random_logits(4, seed=7, vocab=64).to(torch.bfloat16)
    greedy = [SamplingParams(temperature=0.0)] * 4
    assert _run(Sampler(0), logits, greedy).token_ids == logits.float().argmax(-1).tolist()
    mixed = [SamplingParams(temperature=0.0, logprobs=2), SamplingParams(temperature=0.0, repetition_penalty=1.5),
             SamplingParams(temperature=0.8), SamplingParams(temperature=0.0)]
    prompts = [[3, 5], [3, 5], [3, 5], [3, 5]]
    as_bf16 = _run(Sampler(0), logits, mixed, prompts=prompts, blocked=[[], [], [], [int(logits[3].argmax())]])
    as_f32 = _run(Sampler(0), logits.float(), mixed, prompts=prompts, blocked=[[], [], [], [int(logits[3].argmax())]])
    assert as_bf16.token_ids == as_f32.token_ids
    assert as_bf16.logprobs == as_f32.logprobs
    assert as_bf16.token_ids[3] != int(logits[3].argmax())  # blocked: widened, then masked
