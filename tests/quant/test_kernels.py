"""Each quantizer's round-trip error bound, and each quantized Linear against its dequantized reference."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from llmserve.quant.fp8 import Fp8Linear, dequantize_fp8, quantize_fp8
from llmserve.quant.int4 import (
    DENSE_MIN_ROWS,
    Int4Linear,
    dequantize_int4,
    pack_plain,
    quantize_int4,
    unpack_cpu_kernel_layout,
    unpack_plain,
)
from llmserve.quant.int8 import (
    WEIGHT_ONLY_KERNEL_MAX_ROWS,
    Int8Embedding,
    Int8Linear,
    dequantize_int8,
    quantize_int8,
    quantize_rows_int8,
)


def _weight(rows: int = 128, cols: int = 256, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * 0.05
    w[3, 7] = 1.5  # an outlier: its row's scale must absorb it without touching the other rows
    return w


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


def test_int8_round_trip_is_within_half_a_step_per_channel():
    w = _weight()
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (128,)
    assert int(q.abs().max()) == 127
    error = (dequantize_int8(q, scale) - w).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    # The outlier widened only its own row's step.
    assert float(scale[3]) > 10 * float(scale[4])


@pytest.mark.parametrize("rows", [1, WEIGHT_ONLY_KERNEL_MAX_ROWS, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_weight_only_linear_matches_its_dequantized_weight(rows, dtype):
    w, bias = _weight(), torch.randn(128) * 0.1
    layer = Int8Linear.from_float(w, bias, dtype, dynamic=False)
    x = torch.randn(rows, 256).to(dtype)
    expected = F.linear(x.double(), layer.dequantize().double(), bias.double())
    out = layer(x)
    assert out.dtype == dtype and out.shape == (rows, 128)
    assert _relative_error(out, expected) < 1e-2  # bf16 activations inside the kernel
    assert _relative_error(out, F.linear(x.double(), w.double(), bias.double())) < 2e-2


def test_the_dense_path_of_a_wide_int8_matrix_works_in_chunks(monkeypatch):
    from llmserve.quant import int8

    w = _weight(rows=100)
    layer = Int8Linear.from_float(w, None, torch.float32, dynamic=False)
    x = torch.randn(WEIGHT_ONLY_KERNEL_MAX_ROWS + 1, 256)
    whole = layer(x)
    monkeypatch.setattr(int8, "DENSE_CHUNK_CHANNELS", 32)  # 100 channels: chunks of 32, 32, 32, 4
    torch.testing.assert_close(layer(x), whole)


def test_w8a8_linear_is_exactly_the_product_of_its_quantized_operands():
    w = _weight()
    layer = Int8Linear.from_float(w, None, torch.float32, dynamic=True)
    x = torch.randn(5, 256)
    x[2] *= 30  # each token gets its own activation scale
    xq, x_scale = quantize_rows_int8(x)
    assert xq.dtype == torch.int8 and x_scale.shape == (5, 1)
    expected = (xq.double() * x_scale.double()) @ layer.dequantize().double().T
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert _relative_error(layer(x), x @ w.T) < 2e-2


def test_int8_embedding_looks_up_and_projects_with_the_same_bytes():
    w = _weight(rows=64, cols=32)
    emb = Int8Embedding.from_float(w, torch.float32)
    ids = torch.tensor([3, 0, 63])
    torch.testing.assert_close(emb(ids), dequantize_int8(emb.qweight, emb.weight_scale)[ids])
    hidden = torch.randn(2, 32)
    assert _relative_error(emb.linear(hidden), hidden @ emb.dequantize().T) < 1e-2


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_round_trip_is_within_half_a_step_per_group(group):
    w = _weight()
    q, scale, zero = quantize_int4(w, group)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.shape == (128, 256 // group)
    error = (dequantize_int4(q, scale, zero) - w).abs().view(128, -1, group)
    # Half a step, plus what rounding the scale and zero to bf16 costs at the group's ends.
    bound = scale.float()[..., None] * (0.5 + 8 * 2 ** -8) + zero.float().abs()[..., None] * 2 ** -8
    assert bool((error <= bound).all())


def test_int4_rejects_a_group_size_that_does_not_divide_the_input():
    with pytest.raises(ValueError, match="does not divide the input dim 96"):
        quantize_int4(torch.randn(64, 96), 64)


def test_int4_layouts_unpack_to_the_same_values():
    q = torch.randint(0, 16, (128, 64), dtype=torch.uint8)
    assert torch.equal(unpack_plain(pack_plain(q)), q)
    # Guards our reading of torch's packed CPU layout against a change in a later torch.
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    assert torch.equal(unpack_cpu_kernel_layout(packed, 128, 64), q)


@pytest.mark.parametrize("rows", [1, DENSE_MIN_ROWS - 1, DENSE_MIN_ROWS])
@pytest.mark.parametrize("out_features", [128, 48])  # 48: not a multiple of 64, the plain-layout path
def test_int4_linear_matches_its_dequantized_weight(rows, out_features):
    w, bias = _weight(rows=out_features), torch.randn(out_features) * 0.1
    layer = Int4Linear.from_float(w, bias, 64, torch.float32)
    assert layer.kernel_layout == (out_features % 64 == 0)
    x = torch.randn(rows, 256)
    expected = F.linear(x.double(), layer.dequantize().double(), bias.double())
    assert _relative_error(layer(x), expected) < 1e-2
    assert _relative_error(layer(x), F.linear(x, w, bias)) < 0.15  # 4 bits: a coarse but faithful product


def test_fp8_round_trip_keeps_three_mantissa_bits():
    w = _weight()
    q, scale = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn
    back = dequantize_fp8(q, scale)
    # e4m3 rounds to within 1/16 relative for normal values; tiny ones are subnormal steps apart.
    assert bool(((back - w).abs() <= w.abs() / 16 + scale[:, None] * 2 ** -9).all())


def test_fp8_linear_matches_its_dequantized_weight_through_scaled_mm_on_cpu():
    # The engine refuses fp8 off CUDA; torch's CPU _scaled_mm still checks our scales and padding.
    w, bias = _weight(), torch.randn(128) * 0.1
    layer = Fp8Linear.from_float(w, bias, torch.bfloat16)
    for rows in (1, 17):
        x = torch.randn(rows, 256, dtype=torch.bfloat16)
        out = layer(x)
        assert out.shape == (rows, 128) and out.dtype == torch.bfloat16
        expected = F.linear(x.double(), layer.dequantize().double(), bias.double())
        assert _relative_error(out, expected) < 0.05  # e4m3 activations: 3 mantissa bits


def test_fp8_linear_of_a_shape_scaled_mm_refuses_multiplies_by_its_dequantized_weight():
    w, bias = _weight(rows=67), torch.randn(67) * 0.1  # 67 output channels: not a multiple of 16
    layer = Fp8Linear.from_float(w, bias, torch.bfloat16)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    expected = F.linear(x.double(), layer.dequantize().double(), bias.double())
    assert _relative_error(layer(x), expected) < 1e-2  # bf16 activations, no fp8 rounding of them


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a CUDA GPU with fp8 (compute capability 8.9+)")
def test_fp8_linear_on_gpu_matches_its_dequantized_weight():
    w = _weight().cuda()
    layer = Fp8Linear.from_float(w, None, torch.bfloat16)
    for rows in (1, 17, 64):
        x = torch.randn(rows, 256, device="cuda", dtype=torch.bfloat16)
        out = layer(x)
        assert out.shape == (rows, 128) and out.dtype == torch.bfloat16
        assert _relative_error(out, x.float() @ layer.dequantize().T) < 0.08


def test_int8_weights_at_a_misaligned_address_are_copied_before_the_kernel_reads_them():
    # Tensors from a memory-mapped safetensors file start anywhere; torch's kernel crashes on those.
    q, scale = quantize_int8(_weight())
    buffer = torch.empty(q.numel() + 64, dtype=torch.int8)
    offset = next(i for i in range(64) if (buffer.data_ptr() + i) % 64 == 8)
    misaligned = buffer[offset:offset + q.numel()].view_as(q)
    misaligned.copy_(q)
    layer = Int8Linear(misaligned, scale, None, torch.float32, dynamic=False)
    assert layer.qweight.data_ptr() % 64 == 0
    x = torch.randn(2, 256)
    torch.testing.assert_close(layer(x), Int8Linear(q, scale, None, torch.float32, dynamic=False)(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_fused_w8a8_ends_compute_exactly_what_the_torch_ops_compute(dtype, with_bias):
    from llmserve.model.kernels import int8_row_kernels
    from llmserve.quant.int8 import _int8_dynamic_matmul_fused, _int8_dynamic_matmul_torch

    kernels = int8_row_kernels(str(dtype).removeprefix("torch."))
    if kernels is None:
        pytest.skip("no C compiler: the torch path is the only one")
    q, scale = quantize_int8(_weight())
    bias = (torch.randn(128) * 0.1).to(dtype) if with_bias else None
    for rows in (1, 16, 700):  # 700 x 256 crosses the kernels' threading threshold
        x = (torch.randn(rows, 256) * torch.rand(rows, 1) * 10).to(dtype)
        x[0] = 0.0  # an all-zero row takes the floor scale
        fused = _int8_dynamic_matmul_fused(x, q, scale, bias, *kernels)
        assert fused.dtype == dtype
        reference = _int8_dynamic_matmul_torch(x, q, scale, bias)
        assert torch.equal(fused, reference)


# --- the LM head: float32 logits ---------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, WEIGHT_ONLY_KERNEL_MAX_ROWS, WEIGHT_ONLY_KERNEL_MAX_ROWS + 1, 64])
def test_int8_heads_return_float32_logits(rows):
    """Up to WEIGHT_ONLY_KERNEL_MAX_ROWS rows torch's kernel writes bf16, widened as it is; from there
    the dense path accumulates in float32 (amx_linear.c, 1024 channels of the dequantized bf16 weight
    at a time: 128 here, a partial chunk)."""
    w = _weight()
    layer = Int8Linear.from_float(w, None, torch.bfloat16, dynamic=False)
    embedding = Int8Embedding.from_float(w, torch.bfloat16)
    x = torch.randn(rows, 256).to(torch.bfloat16)
    for logits in (layer.logits(x), embedding.logits(x)):
        assert logits.dtype == torch.float32 and logits.shape == (rows, 128)
        if rows <= WEIGHT_ONLY_KERNEL_MAX_ROWS:
            assert torch.equal(logits, layer(x).float())
        else:
            weight = (layer.qweight.to(torch.bfloat16) * layer._scale_dense[:, None]).double()  # as bf16 has it
            torch.testing.assert_close(logits.double(), F.linear(x.double(), weight), rtol=1e-5, atol=1e-5)


def test_w8a8_head_returns_its_float32_product_unrounded():
    layer = Int8Linear.from_float(_weight(), torch.randn(128) * 0.1, torch.bfloat16, dynamic=True)
    x = torch.randn(5, 256).to(torch.bfloat16)
    xq, x_scale = quantize_rows_int8(x)
    expected = (xq.double() * x_scale.double()) @ layer.dequantize().double().T + layer.bias.double()
    logits = layer.logits(x)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), logits.to(torch.bfloat16), rtol=2 ** -7, atol=1e-3)  # forward: rounded


def test_fp8_head_returns_float32_logits_and_widens_bf16_where_the_gemm_cannot_write_float32(monkeypatch):
    layer = Fp8Linear.from_float(_weight(), torch.randn(128) * 0.1, torch.bfloat16)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    logits = layer.logits(x)
    assert logits.dtype == torch.float32 and logits.shape == (3, 128)
    torch.testing.assert_close(layer(x), logits.to(torch.bfloat16), rtol=2 ** -7, atol=1e-3)
    real = torch._scaled_mm

    def bf16_only(*args, out_dtype, **kwargs):  # CUDA's row-wise fp8 GEMM off Hopper
        if out_dtype != torch.bfloat16:
            raise RuntimeError("Only bf16 high precision output types are supported for row-wise scaling.")
        return real(*args, out_dtype=out_dtype, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", bf16_only)
    for _ in range(2):
        widened = layer.logits(x)
        assert widened.dtype == torch.float32 and not layer._float32_logits
        torch.testing.assert_close(widened, layer(x).float(), rtol=2 ** -7, atol=1e-3)


def test_an_int4_linear_as_a_head_widens_its_output_to_float32():
    layer = Int4Linear.from_float(_weight(), None, 32, torch.bfloat16)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    logits = layer.logits(x)
    assert logits.dtype == torch.float32 and torch.equal(logits, layer(x).float())
