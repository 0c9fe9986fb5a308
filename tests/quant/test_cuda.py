"""The CUDA paths of the quantized modules: int8 and int4 dequantize, w8a8 pads short batches for
cuBLASLt. Skipped without a GPU; CI has none, so a session lent one runs `pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from llmserve import LLM, SamplingParams
from llmserve.quant.int4 import Int4Linear
from llmserve.quant.int8 import Int8Linear
from tests.tiny_models import save_tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize("rows", [1, 16, 17, 200])
def test_quantized_linears_on_cuda_match_their_dequantized_weights(rows):
    w = (torch.randn(256, 512) * 0.05).cuda()
    bias = (torch.randn(256) * 0.1).cuda()
    x = torch.randn(rows, 512, device="cuda", dtype=torch.bfloat16)
    for layer in (Int8Linear.from_float(w, bias, torch.bfloat16, dynamic=False),
                  Int8Linear.from_float(w, bias, torch.bfloat16, dynamic=True),
                  Int4Linear.from_float(w, bias, 64, torch.bfloat16)):
        out = layer(x)
        assert out.shape == (rows, 256) and out.dtype == torch.bfloat16 and out.is_cuda
        expected = F.linear(x.float(), layer.dequantize().float(), bias.float())
        assert _relative_error(out, expected) < 0.03, type(layer).__name__


@pytest.mark.parametrize("method", ["int8", "int4", "w8a8", "fp8"])
def test_a_tiny_model_quantized_on_cuda_generates(method, tmp_path):
    if method == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    save_tiny_model("qwen2", tmp_path)  # untied head, qkv bias
    llm = LLM(str(tmp_path), device="cuda", dtype="bfloat16", quantization=method, num_kv_blocks=64,
              max_model_len=512)
    outputs = llm.generate([{"prompt_token_ids": [5, 17, 42, 9]}, {"prompt_token_ids": list(range(3, 40))}],
                           SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in outputs] == [8, 8]
