"""The cuda backend's Triton path, run end to end: on the GPU where there is one, else on CPU tensors
through Triton's interpreter (tests/conftest.py turns it on). Attention through the backend's own
KV store against plain causal attention, and the whole engine's greedy tokens against the torch
reference backend and transformers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from llmserve import LLM, SamplingParams  # noqa: E402
from llmserve.backends.cuda import CudaBackend  # noqa: E402
from tests.backends.test_attention import run_attention  # noqa: E402
from tests.tiny_models import save_tiny_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def backend() -> CudaBackend:
    return CudaBackend(torch.device(DEVICE), use_graphs=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_and_prefill_in_one_step(backend, dtype):
    run_attention(backend, history=[5, 0, 17, 3, 0, 30], new=[1, 7, 1, 4, 1, 1], dtype=dtype)


@pytest.mark.parametrize(("dim", "block", "heads", "kv_heads"), [(64, 16, 8, 8), (64, 16, 9, 3), (128, 32, 8, 2),
                                                                 (64, 16, 8, 1)])
def test_decode_only_steps_with_gqa_head_dims_and_block_sizes(backend, dim, block, heads, kv_heads):
    run_attention(backend, history=[0, 15, 16, 40], new=[1] * 4, dim=dim, block=block, heads=heads,
                  kv_heads=kv_heads)


def test_prefix_hits_and_chunked_prefill(backend):
    run_attention(backend, history=[40, 0, 9, 16], new=[5, 12, 23, 16])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_the_engine_on_the_triton_backend_gives_the_reference_tokens(arch, tmp_path):
    hf_model = save_tiny_model(arch, tmp_path)
    prompts = [[5, 17, 42, 9, 100, 3, 77], [8, 1, 200], list(range(30, 50))]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    tokens = {}
    for name in ("cuda", "torch"):
        llm = LLM(str(tmp_path), device=DEVICE, backend=name, dtype="float32", num_kv_blocks=64, max_model_len=512,
                  enforce_eager=True, max_num_batched_tokens=16)  # chunked: the 20-token prompt takes two steps
        tokens[name] = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts],
                                                                      params)]
    assert tokens["cuda"] == tokens["torch"]
    for ids, out in zip(prompts, tokens["cuda"], strict=True):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, min_new_tokens=6,
                                    pad_token_id=0)[0, len(ids):].tolist()
        assert out == ref
