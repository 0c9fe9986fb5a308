"""The engine on a real GPU: against transformers, with CUDA graphs on and off, and a KV pool sized
from the GPU. Skipped without CUDA; a session lent a GPU runs them with `pytest -m gpu`."""

from __future__ import annotations

import gc

import pytest
import torch

from llmserve import LLM, SamplingParams
from llmserve.backends.select import select_backend
from llmserve.model.loader import load_model
from tests.engine_helpers import paged_logits
from tests.tiny_models import save_tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = [[5, 17, 42, 9, 100, 3, 77], [8, 1, 200], list(range(30, 70))]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return folder, save_tiny_model(request.param, folder)


def test_float32_logits_match_transformers_on_cuda(tiny):
    folder, hf_model = tiny
    loaded = load_model(str(folder), torch.float32, 512, device="cuda")
    backend = select_backend("cuda")
    for ids, ours in zip(PROMPTS, paged_logits(loaded, PROMPTS, chunk=5, backend=backend), strict=True):
        with torch.no_grad():
            expected = hf_model(torch.tensor([ids])).logits[0].float()
        torch.testing.assert_close(ours, expected, atol=2e-4, rtol=2e-4)


def test_greedy_tokens_match_transformers_on_cuda(tiny):
    folder, hf_model = tiny
    llm = LLM(str(folder), device="cuda", dtype="float32", num_kv_blocks=64, max_model_len=512)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    for ids, out in zip(PROMPTS, llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params), strict=True):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, min_new_tokens=24,
                                    pad_token_id=0)[0, len(ids):].tolist()
        assert out.outputs[0].token_ids == ref


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_graphs_on_and_off_give_the_same_tokens(tiny, dtype):
    folder, _ = tiny
    prompts = [{"prompt_token_ids": [i + 3] * (i + 2)} for i in range(11)]  # 11 decodes: a padded graph of 16
    params = [SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=7, max_tokens=20, ignore_eos=True)]
    runs = []
    for eager in (False, True):
        llm = LLM(str(folder), device="cuda", dtype=dtype, num_kv_blocks=128, max_model_len=512, enforce_eager=eager)
        assert (llm.engine.backend.graphs is None) == eager
        runs.append([[o.outputs[0].token_ids for o in llm.generate(prompts, p)] for p in params])
    assert runs[0] == runs[1]


def test_the_kv_pool_is_sized_from_the_gpu(tiny):
    folder, _ = tiny
    free, total = torch.cuda.mem_get_info()
    blocks = {}
    for utilization in (0.3, 0.5):
        llm = LLM(str(folder), device="cuda", dtype="bfloat16", max_model_len=512, gpu_memory_utilization=utilization)
        engine = llm.engine
        blocks[utilization] = engine.block_manager.num_blocks
        pool = sum(t.numel() * t.element_size() for c in engine.runner.kv_caches for t in (c.key, c.value))
        assert pool <= utilization * total
        del llm, engine
        gc.collect()
        torch.cuda.empty_cache()
    assert blocks[0.5] > blocks[0.3] > 0
    # The pool takes the bulk of the budget: tiny weights leave nearly all of it to the KV cache.
    extra_blocks = blocks[0.5] - blocks[0.3]
    cfg = load_model(str(folder), torch.bfloat16, 512, device="cuda").config
    per_block = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 16 * 2
    assert extra_blocks * per_block > 0.15 * total


def test_prompt_logprobs_and_embeddings_on_cuda_beside_graph_decodes(tiny):
    """Chunked prompts with prompt logprobs and pooling among decodes that replay CUDA graphs."""
    import transformers

    from llmserve import PoolingParams

    folder, hf_model = tiny
    llm = LLM(str(folder), device="cuda", dtype="float32", num_kv_blocks=128, max_model_len=512,
              max_num_batched_tokens=16)
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy)]
    asked = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, prompt_logprobs=3)
    engine = llm.engine
    for i, p in enumerate(PROMPTS):
        engine.add_request(f"gen{i}", p, greedy)
        engine.add_request(f"lp{i}", p, asked)
        engine.add_request(f"emb{i}", p, PoolingParams())
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    base = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    for i, ids in enumerate(PROMPTS):
        assert done[f"gen{i}"].outputs[0].token_ids == alone[i] == done[f"lp{i}"].outputs[0].token_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
            mean = base(torch.tensor([ids])).last_hidden_state[0].mean(dim=0)
        got = done[f"lp{i}"].prompt_logprobs
        assert got[0] is None and len(got) == len(ids)
        expected = logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        torch.testing.assert_close(torch.tensor([e.logprob for e in got[1:]]), expected, atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(torch.tensor(done[f"emb{i}"].embedding),
                                   torch.nn.functional.normalize(mean, dim=0), atol=2e-4, rtol=2e-4)
