"""The Triton weight-only kernels (int8, int4) against the dequantize-then-matmul reference.

Without CUDA they run on CPU tensors under Triton's interpreter: tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports Triton.

Tolerances, as the norm of the error over the norm of the fp64 reference: fp32 activations 1e-5
(fp32 products and sums, in another order); bf16 1e-2 (the dequantized weight and the output are
each rounded to bf16 once, ~2^-9 relative each).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from llmserve.quant import int4, int8
from llmserve.quant.int4 import Int4Linear, dequantize_int4, pack_plain, quantize_int4
from llmserve.quant.int8 import Int8Linear, dequantize_int8, quantize_int8
from llmserve.quant.kernels import TRITON_KERNEL_MAX_ROWS

pytest.importorskip("triton")
from llmserve.quant import triton_matmul  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def _case(rows: int, n: int, k: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[1, 3] = 1.0  # an outlier, to give one channel (and group) a wide step
    x = torch.randn(rows, k, generator=gen).to(dtype)
    bias = (torch.randn(n, generator=gen) * 0.1).to(dtype)
    return w.to(DEVICE), x.to(DEVICE), bias.to(DEVICE)


def _int4_tensors(w: torch.Tensor, group_size: int, dtype: torch.dtype):
    q, scale, zero = quantize_int4(w, group_size, dtype)
    scales_and_zeros = torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous()
    return pack_plain(q), scales_and_zeros, dequantize_int4(q, scale, zero)


@pytest.mark.parametrize("rows", [1, 5, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_kernel_matches_the_dequantized_matmul(rows, dtype):
    w, x, bias = _case(rows, 67, 192, dtype)  # odd N; K not a multiple of the 128-wide K tile
    q, scale = quantize_int8(w)
    expected = F.linear(x.double(), dequantize_int8(q, scale).double(), bias.double())
    out = triton_matmul.int8_matmul(x, q, scale, bias)
    assert out.dtype == dtype and out.shape == (rows, 67)
    assert _relative_error(out, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("rows", [1, 5, 33])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_kernel_matches_the_dequantized_matmul(rows, group_size, dtype):
    w, x, bias = _case(rows, 45, 384, dtype)
    packed, scales_and_zeros, dense = _int4_tensors(w, group_size, dtype)
    expected = F.linear(x.double(), dense.double(), bias.double())
    out = triton_matmul.int4_matmul(x, packed, scales_and_zeros, group_size, bias)
    assert out.dtype == dtype and out.shape == (rows, 45)
    assert _relative_error(out, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("split_k", [2, 3, 7])
def test_a_split_k_loop_sums_to_the_same_product(split_k):
    # 7 splits of 3 K tiles: the last splits get no tiles at all and must add nothing.
    w, x, bias = _case(3, 40, 320, torch.float32)
    q, scale = quantize_int8(w)
    expected = F.linear(x.double(), dequantize_int8(q, scale).double(), bias.double())
    assert _relative_error(triton_matmul.int8_matmul(x, q, scale, bias, split_k=split_k), expected) < 1e-5
    packed, scales_and_zeros, dense = _int4_tensors(w, 64, torch.float32)
    expected = F.linear(x.double(), dense.double(), bias.double())
    out = triton_matmul.int4_matmul(x, packed, scales_and_zeros, 64, bias, split_k=split_k)
    assert _relative_error(out, expected) < 1e-5


def test_the_kernels_take_strided_activations_and_no_bias():
    w, x, _ = _case(4, 32, 256, torch.float32)
    x = torch.cat((x, x), dim=1)[:, ::2]  # every other column: a stride of 2
    q, scale = quantize_int8(w)
    out = triton_matmul.int8_matmul(x, q, scale)
    assert _relative_error(out, x.double() @ dequantize_int8(q, scale).double().T) < 1e-5
    packed, scales_and_zeros, dense = _int4_tensors(w, 32, torch.float32)
    out = triton_matmul.int4_matmul(x, packed, scales_and_zeros, 32)
    assert _relative_error(out, x.double() @ dense.double().T) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_dequantize_writes_the_dense_weight(dtype):
    w, _, _ = _case(1, 70, 128, dtype)
    packed, scales_and_zeros, dense = _int4_tensors(w, 32, dtype)
    out = triton_matmul.int4_dequantize(packed, scales_and_zeros, 32, dtype)
    assert out.dtype == dtype and out.shape == (70, 128)
    # fp32 arithmetic, one rounding: exact in fp32; in bf16 within one step (Triton's interpreter
    # rounds fp32 -> bf16 toward zero, a GPU to nearest).
    bf16_step = 2.0**-7
    torch.testing.assert_close(out, dense.to(dtype), rtol=bf16_step if dtype == torch.bfloat16 else 0, atol=0)


@pytest.mark.parametrize("rows", [2, TRITON_KERNEL_MAX_ROWS + 1])
def test_the_modules_use_the_kernels_for_narrow_batches_and_a_dense_weight_for_wide_ones(rows, monkeypatch):
    # The modules pick Triton only for weights on CUDA; pointing that choice at this device checks
    # their wiring (arguments, bias, the row threshold) here too.
    monkeypatch.setattr(int8, "triton_kernels", lambda device: triton_matmul)
    monkeypatch.setattr(int4, "triton_kernels", lambda device: triton_matmul)
    calls = []
    for name in ("int8_matmul", "int4_matmul", "int4_dequantize"):
        kernel = getattr(triton_matmul, name)
        monkeypatch.setattr(triton_matmul, name, lambda *a, kernel=kernel, name=name, **k: calls.append(name)
                            or kernel(*a, **k))
    w, x, bias = _case(rows, 48, 128, torch.float32)  # 48 rows: int4 keeps its plain layout on CPU too
    int8_layer = Int8Linear.from_float(w, bias, torch.float32, dynamic=False)
    int4_layer = Int4Linear.from_float(w, bias, 64, torch.float32)
    assert not int4_layer.kernel_layout
    for layer in (int8_layer, int4_layer):
        expected = F.linear(x.double(), layer.dequantize().double(), bias.double())
        assert _relative_error(layer(x), expected) < 1e-5
    narrow = rows <= TRITON_KERNEL_MAX_ROWS
    assert calls == (["int8_matmul", "int4_matmul"] if narrow else ["int4_dequantize"])


def test_w8a8_modules_never_take_the_weight_only_kernel(monkeypatch):
    monkeypatch.setattr(int8, "triton_kernels", lambda device: triton_matmul)
    w, _, bias = _case(1, 48, 128, torch.float32)
    assert Int8Linear.from_float(w, bias, torch.float32, dynamic=True)._triton_matmul is None
