"""Prompt logprobs against transformers' log-softmax over the prompt (fp32), however the engine runs them:
chunked, with n > 1, beside ordinary requests, after a prefix-cache hit, preempted."""

from __future__ import annotations

import pytest
import torch

from llmserve import LLM, SamplingParams
from llmserve.config import CacheConfig, EngineConfig, SchedulerConfig
from llmserve.engine.engine import LLMEngine
from llmserve.engine.outputs import RequestOutput
from tests.tiny_models import save_tiny_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _prompts(count: int, seed: int = 0, low: int = 3, high: int = 40) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (count,), generator=gen).tolist()
    return [torch.randint(3, 256, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-prompt-logprobs")
    hf_model = save_tiny_model("llama", path)
    return str(path), hf_model


def _engine(folder: str, num_blocks: int = 256, prefix_caching: bool = True, backend: str = "auto",
            **sched) -> LLMEngine:
    return LLMEngine(EngineConfig(model=folder, max_model_len=256, backend=backend,
                                  cache=CacheConfig(block_size=4, num_blocks=num_blocks,
                                                    enable_prefix_caching=prefix_caching),
                                  scheduler=SchedulerConfig(**sched)))


def _run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, RequestOutput]:
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    done: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    return done


def _assert_matches_transformers(hf_model, prompt: list[int], got, k: int) -> None:
    with torch.no_grad():
        logprobs = torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0].float(), dim=-1)
    assert got is not None and len(got) == len(prompt) and got[0] is None
    for i in range(1, len(prompt)):
        row, entry = logprobs[i - 1], got[i]
        assert entry.token_id == prompt[i]
        assert entry.logprob == pytest.approx(row[prompt[i]].item(), abs=1e-4)
        assert entry.rank == int((row > row[prompt[i]]).sum()) + 1
        values, ids = row.topk(k)
        assert [t for t, _ in entry.top] == ids.tolist()
        assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=1e-4)


@pytest.mark.parametrize("k", [0, 1, 5])
def test_prompt_logprobs_match_transformers(tiny, k):
    folder, hf_model = tiny
    prompts = _prompts(4) + [[7], [9, 11]]
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, prompt_logprobs=k)
    done = _run(_engine(folder), {str(i): (p, params) for i, p in enumerate(prompts)})
    for i, prompt in enumerate(prompts):
        _assert_matches_transformers(hf_model, prompt, done[str(i)].prompt_logprobs, k)
        assert len(done[str(i)].outputs[0].token_ids) == 3


def test_no_prompt_logprobs_unless_asked(tiny):
    folder, _ = tiny
    done = _run(_engine(folder), {"a": ([5, 6, 7, 8], GREEDY)})
    assert done["a"].prompt_logprobs is None and done["a"].embedding is None


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_chunked_prefill_longer_than_the_step_budget(tiny, backend):
    folder, hf_model = tiny
    prompts = _prompts(3, seed=1, low=30, high=60)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, prompt_logprobs=3)
    for budget in (7, 8):  # chunk ends inside a block and on a block boundary
        done = _run(_engine(folder, backend=backend, max_num_batched_tokens=budget, max_num_seqs=2),
                    {str(i): (p, params) for i, p in enumerate(prompts)})
        for i, prompt in enumerate(prompts):
            assert len(prompt) > budget
            _assert_matches_transformers(hf_model, prompt, done[str(i)].prompt_logprobs, 3)


def test_streamed_outputs_carry_them_from_the_first_after_the_prefill(tiny):
    folder, hf_model = tiny
    prompt = _prompts(1, seed=2, low=30, high=31)[0]
    engine = _engine(folder, max_num_batched_tokens=8)
    engine.add_request("s", prompt, SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, prompt_logprobs=2))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    with_tokens = [o for o in outputs if o.outputs[0].token_ids]
    assert with_tokens and all(o.prompt_logprobs is not None for o in with_tokens)
    assert all(o.prompt_logprobs is None for o in outputs if not o.outputs[0].token_ids)
    _assert_matches_transformers(hf_model, prompt, outputs[-1].prompt_logprobs, 2)


def test_n_sequences_share_one_set_and_keep_their_tokens(tiny):
    folder, hf_model = tiny
    prompt = _prompts(1, seed=3)[0]
    seeded = SamplingParams(n=2, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True)
    plain = _run(_engine(folder), {"a": (prompt, seeded)})["a"]
    asked = SamplingParams(n=2, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True, prompt_logprobs=4)
    out = _run(_engine(folder), {"a": (prompt, asked)})["a"]
    _assert_matches_transformers(hf_model, prompt, out.prompt_logprobs, 4)
    assert [c.token_ids for c in out.outputs] == [c.token_ids for c in plain.outputs]
    assert len(out.outputs) == 2


def test_mixed_batch_keeps_everyone_s_tokens(tiny):
    folder, hf_model = tiny
    prompts = _prompts(8, seed=4)
    alone = {str(i): _run(_engine(folder), {str(i): (p, GREEDY)})[str(i)].outputs[0].token_ids
             for i, p in enumerate(prompts)}
    asked = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, prompt_logprobs=2)
    requests = {str(i): (p, asked if i % 2 else GREEDY) for i, p in enumerate(prompts)}
    done = _run(_engine(folder, max_num_batched_tokens=16), requests)
    for i, prompt in enumerate(prompts):
        assert done[str(i)].outputs[0].token_ids == alone[str(i)]
        if i % 2:
            _assert_matches_transformers(hf_model, prompt, done[str(i)].prompt_logprobs, 2)
        else:
            assert done[str(i)].prompt_logprobs is None


def test_a_cached_prefix_is_computed_again(tiny):
    folder, hf_model = tiny
    prompt = _prompts(1, seed=5, low=30, high=31)[0]
    engine = _engine(folder)
    _run(engine, {"warm": (prompt, GREEDY)})
    hit = _run(engine, {"hit": (prompt, GREEDY)})["hit"]
    assert hit.num_cached_tokens > 0  # the prefix is in the cache
    asked = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, prompt_logprobs=3)
    queries = engine.block_manager.prefix_cache.stats.queries
    out = _run(engine, {"asked": (prompt, asked)})["asked"]
    assert out.num_cached_tokens == 0
    assert engine.block_manager.prefix_cache.stats.queries == queries  # no lookup was made
    _assert_matches_transformers(hf_model, prompt, out.prompt_logprobs, 3)
    assert out.outputs[0].token_ids == hit.outputs[0].token_ids


def test_preempted_requests_do_not_double_count(tiny):
    folder, hf_model = tiny
    prompts = _prompts(8, seed=6, low=20, high=40)
    alone = [_run(_engine(folder), {"a": (p, GREEDY)})["a"].outputs[0].token_ids for p in prompts]
    asked = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, prompt_logprobs=2)
    engine = _engine(folder, num_blocks=24, max_num_batched_tokens=16)
    done = _run(engine, {str(i): (p, asked) for i, p in enumerate(prompts)})
    assert sum(o.metrics.num_preemptions for o in done.values()) > 0
    for i, prompt in enumerate(prompts):
        assert done[str(i)].outputs[0].token_ids == alone[i]
        _assert_matches_transformers(hf_model, prompt, done[str(i)].prompt_logprobs, 2)


def test_llm_generate_returns_them(tiny):
    folder, hf_model = tiny
    llm = LLM(folder, dtype="float32", num_kv_blocks=64, max_model_len=256, block_size=4)
    prompt = _prompts(1, seed=8)[0]
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=2, prompt_logprobs=1))[0]
    _assert_matches_transformers(hf_model, prompt, out.prompt_logprobs, 1)
