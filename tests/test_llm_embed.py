"""Pooling (embeddings): the mean of the model's last hidden states over the prompt, against transformers'
AutoModel last_hidden_state in fp32, however the engine runs the request."""

from __future__ import annotations

import pytest
import torch

from llmserve import LLM, PoolingParams, SamplingParams
from llmserve.config import CacheConfig, EngineConfig, SchedulerConfig
from llmserve.engine.engine import LLMEngine
from tests.tiny_models import save_tiny_model

PROMPTS = [[5, 17, 42, 9, 100, 3, 77], [8], list(range(20, 61)), [33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43]]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request, tmp_path_factory):
    import transformers

    path = tmp_path_factory.mktemp(f"tiny-{request.param}-embed")
    save_tiny_model(request.param, path)
    base = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return str(path), base


def _reference(base, prompt: list[int], normalize: bool = True) -> torch.Tensor:
    with torch.no_grad():
        mean = base(torch.tensor([prompt])).last_hidden_state[0].float().mean(dim=0)
    return torch.nn.functional.normalize(mean, dim=0) if normalize else mean


def _assert_close(got: list[float] | None, expected: torch.Tensor) -> None:
    assert got is not None
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-4, rtol=1e-4)


def test_embed_equals_mean_pooled_last_hidden_state(tiny):
    folder, base = tiny
    llm = LLM(folder, dtype="float32", num_kv_blocks=64, max_model_len=256, block_size=4)
    outs = llm.embed([{"prompt_token_ids": p} for p in PROMPTS])
    for prompt, out in zip(PROMPTS, outs, strict=True):
        _assert_close(out.embedding, _reference(base, prompt))
        assert abs(sum(v * v for v in out.embedding) - 1.0) < 1e-5
        assert out.finished and out.error is None and out.prompt_token_ids == prompt
        assert [(c.index, c.token_ids, c.finish_reason) for c in out.outputs] == [(0, [], "length")]
    raw = llm.embed({"prompt_token_ids": PROMPTS[0]}, PoolingParams(normalize=False))[0]
    _assert_close(raw.embedding, _reference(base, PROMPTS[0], normalize=False))
    assert llm.engine.block_manager.num_free_blocks == 64


def test_chunked_and_beside_generating_requests(tiny):
    folder, base = tiny
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    alone_llm = LLM(folder, dtype="float32", num_kv_blocks=64, max_model_len=256, block_size=4)
    alone = [o.outputs[0].token_ids for o in alone_llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy)]
    engine = LLMEngine(EngineConfig(model=folder, max_model_len=256, cache=CacheConfig(block_size=4, num_blocks=64),
                                    scheduler=SchedulerConfig(max_num_batched_tokens=8, max_num_seqs=4)))
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"gen{i}", prompt, greedy)
        engine.add_request(f"emb{i}", prompt, PoolingParams(normalize=i % 2 == 0))
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.embedding is None or out.finished
            if out.finished:
                done[out.request_id] = out
    for i, prompt in enumerate(PROMPTS):
        assert done[f"gen{i}"].outputs[0].token_ids == alone[i] and done[f"gen{i}"].embedding is None
        _assert_close(done[f"emb{i}"].embedding, _reference(base, prompt, normalize=i % 2 == 0))
    assert engine.block_manager.num_free_blocks == 64


def test_preempted_embedding_is_summed_once(tiny):
    folder, base = tiny
    prompts = [list(range(3 + i, 40 + i)) for i in range(6)]
    engine = LLMEngine(EngineConfig(model=folder, max_model_len=256, cache=CacheConfig(block_size=4, num_blocks=24),
                                    scheduler=SchedulerConfig(max_num_batched_tokens=16)))
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"gen{i}", prompt[:8], greedy)
        engine.add_request(f"emb{i}", prompt, PoolingParams())
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert sum(done[f"emb{i}"].metrics.num_preemptions for i in range(6)) > 0
    for i, prompt in enumerate(prompts):
        _assert_close(done[f"emb{i}"].embedding, _reference(base, prompt))


def test_pooling_params_are_checked():
    with pytest.raises(ValueError, match="normalize"):
        PoolingParams(normalize="yes")
