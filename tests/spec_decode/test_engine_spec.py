"""Speculative decoding never changes a greedy request's tokens, and its drafts do get accepted."""

from __future__ import annotations

import pytest
import torch

from llmserve import SamplingParams
from llmserve.config import CacheConfig, EngineConfig, SchedulerConfig
from llmserve.engine.engine import LLMEngine
from llmserve.spec_decode.config import SpeculativeConfig
from tests.tiny_models import save_tiny_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
NGRAM = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_max=4, prompt_lookup_min=1)


def _prompts(count: int, seed: int = 0) -> list[list[int]]:
    """Random prompts, then prompts that repeat a passage (where copying is what a model does)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (count,), generator=gen).tolist()
    random = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in lengths]
    passages = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (12, 20, 30)]
    grounded = [p * 3 for p in passages]
    return random + grounded


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model("llama", path)
    return str(path)


def _engine(folder: str, speculative: SpeculativeConfig | None = NGRAM, **sched) -> LLMEngine:
    blocks = sched.pop("num_blocks", 256)
    return LLMEngine(EngineConfig(model=folder, max_model_len=256, cache=CacheConfig(block_size=4, num_blocks=blocks),
                                  scheduler=SchedulerConfig(**sched), speculative=speculative))


def _tokens(engine: LLMEngine, prompts, params=GREEDY) -> list[list[int]]:
    params_list = params if isinstance(params, list) else [params] * len(prompts)
    for i, (p, sp) in enumerate(zip(prompts, params_list, strict=True)):
        engine.add_request(str(i), p, sp)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return [done[str(i)].outputs[0].token_ids for i in range(len(prompts))]


@pytest.fixture(scope="module")
def plain(folder):
    engine = _engine(folder, speculative=None)
    return [_tokens(engine, [p])[0] for p in _prompts(5)]


def test_greedy_alone_equals_plain_and_drafts_are_accepted(folder, plain):
    engine = _engine(folder)
    assert [_tokens(engine, [p])[0] for p in _prompts(5)] == plain
    stats = engine.spec_stats
    assert stats.num_accepted_tokens > 0
    assert stats.num_draft_tokens >= stats.num_accepted_tokens
    assert engine.block_manager.num_free_blocks == 256


def test_batched_chunked_and_preempted_equal_plain(folder, plain):
    prompts = _prompts(5)
    assert _tokens(_engine(folder), prompts) == plain
    # Budgets smaller than 1 + K cut the drafts; prefill chunks share steps with verifications.
    assert _tokens(_engine(folder, max_num_batched_tokens=7, max_num_seqs=3), prompts) == plain
    engine = _engine(folder, num_blocks=40, max_num_batched_tokens=32)
    assert _tokens(engine, prompts) == plain
    assert engine.block_manager.num_free_blocks == 40


def test_preemption_happens_with_drafts_in_flight(folder, plain):
    engine = _engine(folder, num_blocks=40, max_num_batched_tokens=32)
    for i, p in enumerate(_prompts(5)):
        engine.add_request(str(i), p, GREEDY)
    preemptions, done = 0, {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                preemptions += out.metrics.num_preemptions
                done[out.request_id] = out.outputs[0].token_ids
    assert preemptions > 0 and engine.spec_stats.num_accepted_tokens > 0
    assert [done[str(i)] for i in range(len(plain))] == plain


def test_mixed_params_equal_plain(folder):
    """Penalties, min_tokens, stop ids, logprobs and max_tokens at the edge: each token and logprob exactly
    what one-at-a-time decoding gives, next to requests that speculate freely."""
    prompts = _prompts(5)
    params = [
        SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, repetition_penalty=1.3,
                       frequency_penalty=0.4),
        SamplingParams(temperature=0.0, max_tokens=17, ignore_eos=True, logprobs=3),
        SamplingParams(temperature=0.0, max_tokens=30, min_tokens=20, stop_token_ids=[prompts[5][3]]),
        SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=[prompts[7][5]], presence_penalty=0.5),
    ] + [GREEDY] * (len(prompts) - 5)
    order = [0, 5, 1, 6, 2, 7, 3, 4]
    prompts, params = [prompts[i] for i in order], [params[i] for i in order]
    outs = {}
    for label, spec in (("plain", None), ("spec", NGRAM)):
        engine = _engine(folder, speculative=spec)
        for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
            engine.add_request(str(i), p, sp)
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.outputs[0]
        outs[label] = [(done[str(i)].token_ids, done[str(i)].finish_reason,
                        [(lp.token_id, round(lp.logprob, 4), lp.rank) for lp in done[str(i)].logprobs or []])
                       for i in range(len(prompts))]
        if spec is not None:
            assert engine.spec_stats.num_accepted_tokens > 0
    assert outs["spec"] == outs["plain"]


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(folder):
    seeded = SamplingParams(temperature=0.7, top_p=0.9, seed=1234, max_tokens=40, ignore_eos=True)
    prompt = _prompts(5)[-1]
    first = _engine(folder)
    alone = _tokens(first, [prompt], seeded)[0]
    assert first.spec_stats.num_draft_tokens > 0
    assert _tokens(_engine(folder), [prompt], seeded)[0] == alone
    engine = _engine(folder)
    busy = SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True)
    for i, p in enumerate(_prompts(3, seed=3)):
        engine.add_request(f"noise{i}", p, busy)
    engine.step()
    engine.add_request("seeded", prompt, seeded)
    result = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == "seeded" and out.finished:
                result = out.outputs[0].token_ids
    assert result == alone
