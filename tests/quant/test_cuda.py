"""The CUDA paths of the quantized modules: int8 and int4 weight-only through our Triton kernels,
w8a8 through `torch._int_mm`, fp8 through `torch._scaled_mm`. Skipped without a GPU; CI has none,
so a session lent one runs `pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from llmserve import LLM, SamplingParams
from llmserve.model.loader import load_model
from llmserve.quant import int4, int8
from llmserve.quant.config import QuantConfig
from llmserve.quant.fp8 import Fp8Linear
from llmserve.quant.int4 import Int4Linear
from llmserve.quant.int8 import Int8Linear, Int8Matmul
from llmserve.quant.kernels import TRITON_KERNEL_MAX_ROWS
from tests.engine_helpers import paged_logits
from tests.tiny_models import save_tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = [[5, 17, 42, 9], list(range(3, 40))]
# Logits against the same model holding the dequantized weights, both in bf16 (norm of the
# difference over the reference's). Weight-only: the same weights, rounded and summed in another
# order (0.013-0.026 on these models with the kernels under Triton's CPU interpreter; a wrong scale
# or layout gives > 1); w8a8 and fp8 add their activation rounding (w8a8 0.02-0.04 there; fp8,
# with e4m3's 3 significand bits, could not be run without a GPU).
LOGIT_TOLERANCE = {"int8": 0.05, "int4": 0.05, "w8a8": 0.08, "fp8": 0.2}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


def _skip_without_fp8(method: str) -> None:
    if method == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")


@pytest.mark.parametrize("rows", [1, 16, 17, 200, TRITON_KERNEL_MAX_ROWS + 1])
def test_quantized_linears_on_cuda_match_their_dequantized_weights(rows):
    w = (torch.randn(256, 512) * 0.05).cuda()
    bias = (torch.randn(256) * 0.1).cuda()
    x = torch.randn(rows, 512, device="cuda", dtype=torch.bfloat16)
    layers = [Int8Linear.from_float(w, bias, torch.bfloat16, dynamic=False),
              Int8Linear.from_float(w, bias, torch.bfloat16, dynamic=True),
              Int4Linear.from_float(w, bias, 64, torch.bfloat16)]
    assert layers[0]._triton_matmul is not None and layers[2]._triton_matmul is not None
    assert layers[1].dynamic and layers[1]._triton_matmul is None
    for layer in layers:
        out = layer(x)
        assert out.shape == (rows, 256) and out.dtype == torch.bfloat16 and out.is_cuda
        expected = F.linear(x.float(), layer.dequantize().float(), bias.float())
        assert _relative_error(out, expected) < 0.03, type(layer).__name__


@pytest.mark.parametrize("rows", [1, 3, 100])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_triton_kernels_on_cuda_match_the_dequantized_matmul(rows, dtype):
    from llmserve.quant import triton_matmul

    w = (torch.randn(4160, 1024) * 0.05).cuda()  # 65 tiles of 64 channels: a ragged split-K grid
    x = torch.randn(rows, 1024, device="cuda").to(dtype)
    int8_layer = Int8Linear.from_float(w, None, dtype, dynamic=False)
    out = triton_matmul.int8_matmul(x, int8_layer.qweight, int8_layer.weight_scale)
    assert _relative_error(out, x.double() @ int8_layer.dequantize().double().T) < 1e-2
    for group in (32, 64, 128):
        int4_layer = Int4Linear.from_float(w, None, group, dtype)
        out = triton_matmul.int4_matmul(x, int4_layer.qweight, int4_layer.scales_and_zeros, group)
        assert _relative_error(out, x.double() @ int4_layer.dequantize().double().T) < 1e-2
        dense = triton_matmul.int4_dequantize(int4_layer.qweight, int4_layer.scales_and_zeros, group, dtype)
        torch.testing.assert_close(dense, int4_layer.dequantize().to(dtype))


def _spy_on_the_cuda_kernels(monkeypatch, forbid_fallbacks: bool = True) -> dict[str, int]:
    """Count the calls of each CUDA kernel the quantized modules may take and (unless told not to)
    make their dequantize-and-matmul fallbacks fail. Set up before the model loads: the modules
    keep the kernel functions they chose at construction."""
    from llmserve.quant import triton_matmul

    calls = dict.fromkeys(["int8_matmul", "int4_matmul", "_int_mm", "_scaled_mm"], 0)

    def counted(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counted(triton_matmul, "int8_matmul")
    counted(triton_matmul, "int4_matmul")
    counted(torch, "_int_mm")
    counted(torch, "_scaled_mm")

    def fallback(*args, **kwargs):
        raise AssertionError("a quantized module took its dequantize fallback on CUDA")

    if forbid_fallbacks:
        monkeypatch.setattr(Int8Matmul, "_dense_matmul", fallback)
        monkeypatch.setattr(Int4Linear, "_dense_weight", fallback)
    assert int8.triton_kernels("cuda") is triton_matmul and int4.triton_kernels("cuda") is triton_matmul
    return calls


EXPECTED_KERNELS = {"int8": {"int8_matmul"}, "int4": {"int4_matmul", "int8_matmul"},  # an int4 model's head is int8
                    "w8a8": {"_int_mm"}, "fp8": {"_scaled_mm"}}


@pytest.mark.parametrize("method", ["int8", "int4", "w8a8", "fp8"])
@pytest.mark.parametrize("arch", ["qwen2", "smollm2"])  # untied head with qkv bias; tied embeddings
def test_a_tiny_model_quantized_on_cuda_runs_its_kernels_near_its_dequantized_weights(method, arch, tmp_path,
                                                                                        monkeypatch):
    _skip_without_fp8(method)
    save_tiny_model(arch, tmp_path)
    calls = _spy_on_the_cuda_kernels(monkeypatch)
    quantized = load_model(str(tmp_path), torch.bfloat16, 512, device="cuda", quant=QuantConfig(method))
    for name, module in quantized.model.named_modules():
        if isinstance(module, Int8Matmul) and not module.dynamic:
            assert module._triton_matmul is not None, name
        if isinstance(module, Int4Linear):
            assert module._triton_matmul is not None, name
        if isinstance(module, Fp8Linear):
            assert module._scaled_mm_takes, name
        if isinstance(module, Int8Linear) and method == "w8a8":
            assert module.dynamic, name  # _int_mm takes every w8a8 shape of this model
    quantized_logits = paged_logits(quantized, PROMPTS, device="cuda")
    assert {name for name, count in calls.items() if count} == EXPECTED_KERNELS[method]

    reference = load_model(str(tmp_path), torch.bfloat16, 512, device="cuda")
    with torch.no_grad():
        for name in quantized.quant_specs:
            reference.model.get_submodule(name).weight.copy_(quantized.model.get_submodule(name).dequantize())
    reference_logits = paged_logits(reference, PROMPTS, device="cuda")
    for q, r in zip(quantized_logits, reference_logits, strict=True):
        assert _relative_error(q, r) < LOGIT_TOLERANCE[method]


@pytest.mark.parametrize("method", ["int8", "int4", "w8a8", "fp8"])
def test_a_tiny_model_quantized_on_cuda_generates(method, tmp_path, monkeypatch):
    _skip_without_fp8(method)
    save_tiny_model("qwen2", tmp_path)  # untied head, qkv bias
    # The engine may run wider batches than its requests (a profiling forward): those may go dense.
    calls = _spy_on_the_cuda_kernels(monkeypatch, forbid_fallbacks=False)
    llm = LLM(str(tmp_path), device="cuda", dtype="bfloat16", quantization=method, num_kv_blocks=64,
              max_model_len=512)
    outputs = llm.generate([{"prompt_token_ids": [5, 17, 42, 9]}, {"prompt_token_ids": list(range(3, 40))}],
                           SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in outputs] == [8, 8]
    assert {name for name, count in calls.items() if count} == EXPECTED_KERNELS[method]
