"""Batching, chunking, preemption and joining mid-flight never change the tokens a request gets."""

from __future__ import annotations

import pytest
import torch

from llmserve import LLM, SamplingParams
from llmserve.config import CacheConfig, EngineConfig, SchedulerConfig
from llmserve.engine.engine import LLMEngine
from tests.tiny_models import save_tiny_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def _prompts(count: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (count,), generator=gen).tolist()
    return [torch.randint(3, 256, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model("llama", path)
    return str(path)


def _engine(folder: str, **sched) -> LLMEngine:
    blocks = sched.pop("num_blocks", 256)
    return LLMEngine(EngineConfig(model=folder, max_model_len=256,
                                  cache=CacheConfig(block_size=4, num_blocks=blocks),
                                  scheduler=SchedulerConfig(**sched)))


def _tokens(engine: LLMEngine, prompts, params=GREEDY) -> list[list[int]]:
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return [done[str(i)].outputs[0].token_ids for i in range(len(prompts))]


@pytest.fixture(scope="module")
def alone(folder):
    engine = _engine(folder)
    return [_tokens(engine, [p])[0] for p in _prompts(8)]


def test_batched_equals_alone(folder, alone):
    assert _tokens(_engine(folder), _prompts(8)) == alone


def test_chunked_prefill_equals_alone(folder, alone):
    engine = _engine(folder, max_num_batched_tokens=7, max_num_seqs=3)
    assert _tokens(engine, _prompts(8)) == alone


def test_preemption_and_recompute_equal_alone(folder, alone):
    engine = _engine(folder, num_blocks=24, max_num_batched_tokens=32)
    tokens = _tokens(engine, _prompts(8))
    assert tokens == alone
    assert engine.block_manager.num_free_blocks == 24


def test_preemption_happens_under_pressure(folder):
    engine = _engine(folder, num_blocks=24, max_num_batched_tokens=32)
    for i, p in enumerate(_prompts(8)):
        engine.add_request(str(i), p, GREEDY)
    preemptions = 0
    while engine.has_unfinished_requests():
        preemptions += sum(o.metrics.num_preemptions for o in engine.step() if o.finished)
    assert preemptions > 0


def test_requests_joining_mid_flight_equal_alone(folder, alone):
    engine = _engine(folder, max_num_batched_tokens=16)
    prompts = _prompts(8)
    done = {}
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, GREEDY)
        for _ in range(i + 2):  # a different number of steps between arrivals
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert [done[str(i)].outputs[0].token_ids for i in range(8)] == alone


def test_seeded_sampling_same_alone_and_in_busy_batch(folder):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=24, ignore_eos=True)
    prompt = _prompts(1, seed=7)[0]
    alone = _tokens(_engine(folder), [prompt], seeded)[0]
    engine = _engine(folder, max_num_batched_tokens=20)
    busy = SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True)
    for i, p in enumerate(_prompts(6, seed=3)):
        engine.add_request(f"noise{i}", p, busy)
    engine.step()
    engine.add_request("seeded", prompt, seeded)
    result = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == "seeded" and out.finished:
                result = out.outputs[0].token_ids
    assert result == alone
    other_seed = _tokens(_engine(folder), [prompt], SamplingParams(temperature=1.0, seed=99, max_tokens=24,
                                                                    ignore_eos=True))[0]
    assert other_seed != alone


def test_n_sequences_logprobs_and_lengths(folder):
    llm = LLM(folder, num_kv_blocks=128, max_model_len=256)
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=10, ignore_eos=True, logprobs=4)
    out = llm.generate({"prompt_token_ids": [5, 6, 7, 8]}, params)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    for completion in out.outputs:
        assert len(completion.token_ids) == 10 and completion.finish_reason == "length"
        assert len(completion.logprobs) == 10
        for token, lp in zip(completion.token_ids, completion.logprobs, strict=True):
            assert lp.token_id == token and lp.logprob <= 0 and lp.rank >= 1
            assert len(lp.top) == 4 and lp.top[0][1] >= lp.top[-1][1]
    assert llm.engine.block_manager.num_free_blocks == 128


def test_stop_token_ids_and_min_tokens(folder, alone):
    prompt = _prompts(8)[0]
    first, third = alone[0][0], alone[0][2]
    llm = LLM(folder, num_kv_blocks=128, max_model_len=256)
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, stop_token_ids=[third],
                                                                    max_tokens=24, ignore_eos=True))[0].outputs[0]
    assert out.token_ids == alone[0][:alone[0].index(third) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == third
    blocked = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, stop_token_ids=[first],
                                                                        min_tokens=3, max_tokens=5, ignore_eos=True))
    assert blocked[0].outputs[0].token_ids[0] != first


def test_max_tokens_none_runs_to_context_length(folder):
    llm = LLM(folder, num_kv_blocks=128, max_model_len=32)
    out = llm.generate({"prompt_token_ids": list(range(3, 23))},
                       SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 12 and out.finish_reason == "length"


def test_preemption_by_a_higher_class_keeps_every_request_s_tokens(folder, alone):
    engine = _engine(folder, max_num_seqs=3, max_num_batched_tokens=64)
    prompts = _prompts(8)
    for i in range(3):
        engine.add_request(str(i), prompts[i], GREEDY, priority="p3")
    for _ in range(5):
        engine.step()
    for i in range(3, 8):
        engine.add_request(str(i), prompts[i], GREEDY, priority=0)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert [done[str(i)].outputs[0].token_ids for i in range(8)] == alone
    assert sum(done[str(i)].metrics.num_preemptions for i in range(3)) > 0
    assert sum(done[str(i)].metrics.num_preemptions for i in range(3, 8)) == 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_an_unknown_priority_is_refused_before_anything_is_queued(folder):
    engine = _engine(folder)
    for bad in (4, -1, "p9", True):
        with pytest.raises(ValueError, match="priority|service class"):
            engine.add_request("x", [5, 6, 7], GREEDY, priority=bad)
    assert not engine.has_unfinished_requests()
