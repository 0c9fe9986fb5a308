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
