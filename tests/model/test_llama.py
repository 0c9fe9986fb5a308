"""Our Llama-family model against transformers on tiny random checkpoints of each architecture."""

from __future__ import annotations

import pytest
import torch

from llmserve import LLM, SamplingParams
from llmserve.model.loader import load_model
from tests.engine_helpers import paged_logits
from tests.tiny_models import ARCHS, save_tiny_model

PROMPTS = [[5, 17, 42, 9, 100, 3, 77], [8, 1, 200], [33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45]]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf_model = save_tiny_model(request.param, folder)
    return request.param, folder, hf_model


def _hf_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].float()


def test_logits_match_transformers_single_and_batched(tiny):
    _, folder, hf_model = tiny
    loaded = load_model(str(folder), torch.float32, 512)
    for ids, ours in zip(PROMPTS, paged_logits(loaded, PROMPTS), strict=True):
        torch.testing.assert_close(ours, _hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)
    alone = paged_logits(loaded, [PROMPTS[2]])[0]
    torch.testing.assert_close(alone, _hf_logits(hf_model, PROMPTS[2]), atol=1e-4, rtol=1e-4)


def test_chunked_prefill_logits_match(tiny):
    _, folder, hf_model = tiny
    loaded = load_model(str(folder), torch.float32, 512)
    for ids, ours in zip(PROMPTS, paged_logits(loaded, PROMPTS, chunk=3), strict=True):
        torch.testing.assert_close(ours, _hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_greedy_generation_matches_transformers(tiny, backend):
    """The whole engine, on our C kernels and on the torch reference backend."""
    _, folder, hf_model = tiny
    llm = LLM(str(folder), dtype="float32", num_kv_blocks=64, max_model_len=512, backend=backend)
    assert llm.engine.backend.name == backend
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    for ids, out in zip(PROMPTS, outputs, strict=True):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                    min_new_tokens=32, pad_token_id=0)[0, len(ids):].tolist()
        assert out.outputs[0].token_ids == ref
        assert out.outputs[0].finish_reason == "length"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk", [None, 1])
def test_bf16_is_as_close_to_float32_as_transformers_bf16(arch, chunk, tmp_path):
    """bf16 runs the CPU kernels at every step (AMX and vdpbf16ps linears, the one-pass decode
    attention at head_dim 64, fused norms, rope and KV store): whole prompts, or token by token
    (chunk=1, decode steps of 3 sequences), for every architecture (Qwen3's q/k norms take the
    torch path on their strided heads). Their logits must be about as close to the float32
    reference as transformers' own bf16 model is."""
    hf_model = save_tiny_model(arch, tmp_path, head_dim=64)
    loaded = load_model(str(tmp_path), torch.bfloat16, 512)
    reference = [_hf_logits(hf_model, ids) for ids in PROMPTS]
    hf_bf16 = [_hf_logits(hf_model.to(torch.bfloat16), ids) for ids in PROMPTS]
    ours = paged_logits(loaded, PROMPTS, chunk=chunk)
    for ref, theirs, mine in zip(reference, hf_bf16, ours, strict=True):
        assert mine.dtype == torch.float32 and mine.shape == ref.shape
        their_error = float((theirs - ref).abs().max())
        assert float((mine - ref).abs().max()) <= 2 * their_error + 1e-3
