"""Prefix caching on the real tiny model: the same tokens as without it, reuse after the owner left,
multi-turn reuse of generated tokens, and blocks that all come back after abort and preemption."""

from __future__ import annotations

import pytest
import torch

from llmserve.config import CacheConfig, EngineConfig, SchedulerConfig
from llmserve.engine.engine import LLMEngine
from llmserve.engine.outputs import RequestOutput
from llmserve.sampling_params import SamplingParams
from tests.tiny_models import save_tiny_model

BS = 4
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-prefix")
    save_tiny_model("llama", path)
    return str(path)


def _engine(folder: str, caching: bool = True, num_blocks: int = 256, **sched) -> LLMEngine:
    return LLMEngine(EngineConfig(model=folder, max_model_len=256,
                                  cache=CacheConfig(block_size=BS, num_blocks=num_blocks,
                                                    enable_prefix_caching=caching),
                                  scheduler=SchedulerConfig(**sched)))


def _run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams = GREEDY,
         first_id: int = 0) -> list[RequestOutput]:
    ids = [str(first_id + i) for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts, strict=True):
        engine.add_request(request_id, prompt, params)
    done: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return [done[i] for i in ids]


def _shared_prefix_prompts(count: int, prefix_len: int = 37, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, 256, (prefix_len,), generator=gen).tolist()
    return [prefix + torch.randint(3, 256, (int(n),), generator=gen).tolist()
            for n in torch.randint(1, 12, (count,), generator=gen)]


def _all_blocks_free(engine: LLMEngine) -> bool:
    blocks = engine.block_manager
    return blocks.num_free_blocks == blocks.num_blocks and not any(blocks.ref_counts)


def test_same_tokens_with_and_without_caching(folder):
    prompts = _shared_prefix_prompts(6)
    # One at a time, so each later request hits what the earlier ones left, then all at once.
    cached_engine, plain_engine = _engine(folder), _engine(folder, caching=False)
    plain = [_run(plain_engine, [p], first_id=i)[0] for i, p in enumerate(prompts)]
    cached = [_run(cached_engine, [p], first_id=i)[0] for i, p in enumerate(prompts)]
    assert [o.outputs[0].token_ids for o in cached] == [o.outputs[0].token_ids for o in plain]
    assert [o.num_cached_tokens for o in plain] == [0] * 6
    assert cached[0].num_cached_tokens == 0
    assert [o.num_cached_tokens for o in cached[1:]] == [36] * 5  # 9 full blocks of the 37-token prefix
    together = _run(cached_engine, _shared_prefix_prompts(6), first_id=10)
    assert [o.outputs[0].token_ids for o in together] == [o.outputs[0].token_ids for o in plain]
    assert _all_blocks_free(cached_engine)


def test_logprobs_match_with_and_without_caching(folder):
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=3, ignore_eos=True)
    prompts = _shared_prefix_prompts(2, seed=3)
    plain_engine, cached_engine = _engine(folder, caching=False), _engine(folder)
    plain = [_run(plain_engine, [p], params, first_id=i)[0] for i, p in enumerate(prompts)]
    cached = [_run(cached_engine, [p], params, first_id=i)[0] for i, p in enumerate(prompts)]
    assert cached[1].num_cached_tokens > 0
    for want, got in zip(plain[1].outputs[0].logprobs, cached[1].outputs[0].logprobs, strict=True):
        assert got.token_id == want.token_id
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)


def test_a_later_turn_reuses_the_generated_answer(folder):
    engine = _engine(folder)
    first_turn = _shared_prefix_prompts(1, prefix_len=21, seed=5)[0]
    answer = _run(engine, [first_turn])[0].outputs[0].token_ids
    second_turn = first_turn + answer + [7, 8, 9]
    # The first turn's blocks were named as its prompt and then its answer filled them.
    computed = len(first_turn) + len(answer) - 1  # the last answer token's KV was never computed
    out = _run(engine, [second_turn], first_id=1)[0]
    assert out.num_cached_tokens == computed // BS * BS
    reference = _run(_engine(folder, caching=False), [second_turn])[0]
    assert out.outputs[0].token_ids == reference.outputs[0].token_ids


def test_abort_while_sharing_leaves_the_other_request_whole(folder):
    prompts = _shared_prefix_prompts(2, seed=7)
    reference = [_run(_engine(folder, caching=False), [p])[0].outputs[0].token_ids for p in prompts]
    engine = _engine(folder)
    _run(engine, [prompts[0][:30]], SamplingParams(max_tokens=1))  # warms the cache with the prefix
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, GREEDY)
    engine.step()
    engine.step()
    shared = engine._requests["r0"][0].block_ids[:7]
    assert shared == engine._requests["r1"][0].block_ids[:7]
    assert all(engine.block_manager.ref_counts[b] == 2 for b in shared)
    engine.abort_request("r0")
    assert all(engine.block_manager.ref_counts[b] == 1 for b in shared)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
    assert done["r1"].outputs[0].token_ids == reference[1]
    assert _all_blocks_free(engine)


def test_preemption_recomputes_from_the_cache_and_keeps_tokens(folder):
    prompts = _shared_prefix_prompts(6, prefix_len=17, seed=11)
    plain_engine = _engine(folder, caching=False)
    alone = [_run(plain_engine, [p], first_id=i)[0].outputs[0].token_ids for i, p in enumerate(prompts)]
    # 20 blocks cannot hold six ~35-token sequences at once: requests are preempted and recomputed.
    engine = _engine(folder, num_blocks=20, max_num_seqs=6)
    outs = _run(engine, prompts)
    assert [o.outputs[0].token_ids for o in outs] == alone
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    assert engine.block_manager.prefix_cache.stats.hits > 0
    assert _all_blocks_free(engine)


def test_turning_caching_off_keeps_no_names(folder):
    engine = _engine(folder, caching=False)
    _run(engine, _shared_prefix_prompts(3))
    assert engine.block_manager.prefix_cache is None


def test_reset_prefix_cache_forgets_every_prefix(folder):
    from llmserve import LLM

    llm = LLM(folder, max_model_len=256, block_size=BS, num_kv_blocks=64, dtype="float32")
    prompt = {"prompt_token_ids": _shared_prefix_prompts(1)[0]}
    params = SamplingParams(temperature=0.0, max_tokens=2)
    assert llm.generate(prompt, params)[0].num_cached_tokens == 0
    full_blocks = (len(prompt["prompt_token_ids"]) - 1) // BS
    assert llm.generate(prompt, params)[0].num_cached_tokens == full_blocks * BS
    llm.reset_prefix_cache()
    assert llm.generate(prompt, params)[0].num_cached_tokens == 0
