"""Triton kernels for weight-only int8 and int4 matmuls on CUDA: `x [M, K] @ W.T -> [M, N]`.

The weights stay in the bytes the modules hold (int8 [N, K] with an fp32 scale per output channel;
int4 in the plain layout, two columns per byte with the even one low, and `scales_and_zeros`
[K / group, N, 2]), so a saved checkpoint stays device-free and nothing is repacked for the GPU.
Each tile of W is loaded as integers and turned into the activation dtype in registers; products
accumulate in fp32. int8's per-channel scale factors out of the sum and is applied once per output.

Decode (few rows) is a matrix-vector product bound by reading W, so the grid must cover the GPU:
when the output tiles alone are fewer than ~2 programs per SM, the K loop is split and the fp32
partial sums are added afterwards (deterministic, unlike atomics). The modules run these fused
kernels up to `kernels.TRITON_KERNEL_MAX_ROWS` rows; wider batches (prefill) multiply a dense
dequantized weight with cuBLAS, int4's written in one pass by `int4_dequantize`. The kernels also
run on CPU tensors under TRITON_INTERPRET=1, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
# Shared memory the kernels' tiles may take: under the 99 KiB a block gets on Ada (compute
# capability 8.9); Ampere's datacenter parts and Hopper have more.
SHARED_MEMORY_BUDGET = 96 * 1024


@triton.jit
def _int8_matmul_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K, tiles_per_split,
                        stride_xm, stride_xk, stride_wn, stride_wk, stride_os, stride_om, stride_on,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # offsets past 2**31 elements
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_first = split * tiles_per_split * BLOCK_K
    for tile in range(tiles_per_split):
        offs_k = k_first + tile * BLOCK_K + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk,  # [BLOCK_K, BLOCK_N]
                    mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0)
        w = w.to(tl.float32).to(x.dtype)  # exact: |q| <= 127 fits bf16's 8-bit significand
        acc = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    acc *= tl.load(scale_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + split * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _int4_matmul_kernel(x_ptr, w_ptr, sz_ptr, bias_ptr, out_ptr, M, N, K, tiles_per_split,
                        stride_xm, stride_xk, stride_wn, stride_wk, stride_sg, stride_sn,
                        stride_os, stride_om, stride_on,
                        GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """w_ptr: [N, K / 2] bytes, column 2j in the low nibble and 2j + 1 in the high one; sz_ptr:
    [K / GROUP, N, 2] (scale, zero), w = (q - 8) * scale + zero. BLOCK_K is a multiple of GROUP."""
    HALF: tl.constexpr = BLOCK_K // 2
    GROUPS: tl.constexpr = BLOCK_K // GROUP
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # offsets past 2**31 elements
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_first = split * tiles_per_split * BLOCK_K
    for tile in range(tiles_per_split):
        k0 = k_first + tile * BLOCK_K
        offs_even = k0 + 2 * tl.arange(0, HALF)  # the input columns held in the low nibbles
        x_rows = x_ptr + offs_m[:, None] * stride_xm
        x_mask = (offs_m[:, None] < M) & (offs_even[None, :] < K)
        x_even = tl.load(x_rows + offs_even[None, :] * stride_xk, mask=x_mask, other=0.0)
        x_odd = tl.load(x_rows + (offs_even[None, :] + 1) * stride_xk, mask=x_mask, other=0.0)
        w_mask = (offs_n[None, :] < N) & (offs_even[:, None] < K)
        offs_byte = k0 // 2 + tl.arange(0, HALF)  # written so, Triton sees the bytes are contiguous
        packed = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_byte[:, None] * stride_wk,
                         mask=w_mask, other=0)  # [HALF, BLOCK_N]
        # One (scale, zero) per group and output channel, spread over the group's HALF rows.
        offs_g = k0 // GROUP + tl.arange(0, GROUPS)
        sz = sz_ptr + offs_g[:, None] * stride_sg + offs_n[None, :] * stride_sn
        sz_mask = (offs_n[None, :] < N) & (offs_g[:, None] * GROUP < K)
        scale = tl.load(sz, mask=sz_mask, other=0.0).to(tl.float32)
        zero = tl.load(sz + 1, mask=sz_mask, other=0.0).to(tl.float32)
        scale = tl.reshape(tl.broadcast_to(scale[:, None, :], (GROUPS, GROUP // 2, BLOCK_N)), (HALF, BLOCK_N))
        zero = tl.reshape(tl.broadcast_to(zero[:, None, :], (GROUPS, GROUP // 2, BLOCK_N)), (HALF, BLOCK_N))
        w_low = (((packed & 15).to(tl.float32) - 8.0) * scale + zero).to(x_even.dtype)
        w_high = (((packed >> 4).to(tl.float32) - 8.0) * scale + zero).to(x_even.dtype)
        acc = tl.dot(x_even.to(DOT_DTYPE), w_low.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
        acc = tl.dot(x_odd.to(DOT_DTYPE), w_high.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + split * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _int4_dequantize_kernel(w_ptr, sz_ptr, out_ptr, N, K, stride_wn, stride_sg, stride_sn, stride_on,
                            GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
    """One group of BLOCK_N output channels: out[n, k] = (q - 8) * scale + zero, in out's dtype."""
    HALF: tl.constexpr = GROUP // 2
    pid_n, group = tl.program_id(0), tl.program_id(1)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_half = group * HALF + tl.arange(0, HALF)
    mask = offs_n[:, None] < N
    packed = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_half[None, :], mask=mask, other=0)
    scale = tl.load(sz_ptr + group * stride_sg + offs_n * stride_sn, mask=offs_n < N, other=0.0).to(tl.float32)
    zero = tl.load(sz_ptr + group * stride_sg + offs_n * stride_sn + 1, mask=offs_n < N, other=0.0).to(tl.float32)
    low = ((packed & 15).to(tl.float32) - 8.0) * scale[:, None] + zero[:, None]
    high = ((packed >> 4).to(tl.float32) - 8.0) * scale[:, None] + zero[:, None]
    out = tl.reshape(tl.join(low, high), (BLOCK_N, GROUP))  # join pairs them as (low, high): columns 2j, 2j + 1
    offs_k = group * GROUP + tl.arange(0, GROUP)
    tl.store(out_ptr + offs_n[:, None] * stride_on + offs_k[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def int8_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                split_k: int | None = None) -> torch.Tensor:
    """x [..., K] @ (qweight [N, K] int8 * scale [N] fp32).T (+ bias) in x's dtype."""
    n, k = qweight.shape
    x2 = x.reshape(-1, k)
    block_m, block_n, block_k, warps, stages = _tiles(x2, block_k=128 if x2.shape[0] <= 16 else 64, weight_bits=8)
    grid, tiles, out, partial = _launch_plan(x2, n, k, block_m, block_n, block_k, split_k)
    _int8_matmul_kernel[grid](
        x2, qweight, scale, bias, partial, x2.shape[0], n, k, tiles,
        x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1), *_out_strides(partial),
        HAS_BIAS=bias is not None and partial is out, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        **_dot_options(x2.dtype), num_warps=warps, num_stages=stages)
    return _finish(out, partial, bias).view(*x.shape[:-1], n)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                bias: torch.Tensor | None = None, split_k: int | None = None) -> torch.Tensor:
    """x [..., K] @ W.T (+ bias) in x's dtype, W the int4 weight in the plain layout (`packed` [N, K / 2])
    with `scales_and_zeros` [K / group_size, N, 2]."""
    n, k = packed.shape[0], packed.shape[1] * 2
    x2 = x.reshape(-1, k)
    block_m, block_n, block_k, warps, stages = _tiles(x2, block_k=max(128, group_size), weight_bits=4)
    grid, tiles, out, partial = _launch_plan(x2, n, k, block_m, block_n, block_k, split_k)
    _int4_matmul_kernel[grid](
        x2, packed, scales_and_zeros, bias, partial, x2.shape[0], n, k, tiles,
        x2.stride(0), x2.stride(1), packed.stride(0), packed.stride(1),
        scales_and_zeros.stride(0), scales_and_zeros.stride(1), *_out_strides(partial),
        GROUP=group_size, HAS_BIAS=bias is not None and partial is out, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, **_dot_options(x2.dtype), num_warps=warps, num_stages=stages)
    return _finish(out, partial, bias).view(*x.shape[:-1], n)


def int4_dequantize(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """The int4 weight, dense [N, K] in `dtype`, rounded once from fp32."""
    sz = scales_and_zeros
    n, k = packed.shape[0], packed.shape[1] * 2
    out = torch.empty((n, k), dtype=dtype, device=packed.device)
    block_n = 64
    _int4_dequantize_kernel[(triton.cdiv(n, block_n), k // group_size)](
        packed, sz, out, n, k, packed.stride(0), sz.stride(0), sz.stride(1), out.stride(0),
        GROUP=group_size, BLOCK_N=block_n, num_warps=4)
    return out


def _tiles(x: torch.Tensor, block_k: int, weight_bits: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for x's rows. tl.dot needs 16+ on each
    side, so a decode step's 1..16 rows share one 16-row tile: W's bytes are what it waits on, and
    narrow N tiles with a deep K tile keep many loads in flight across many programs. Pipeline
    stages are as many as fit SHARED_MEMORY_BUDGET (estimated: each stage's x and W tiles, plus
    the dequantized W tile)."""
    rows, x_bytes = x.shape[0], x.element_size()
    if rows <= 16:
        block_m, block_n, warps = 16, 64, 4
    elif rows <= 64:
        block_m, block_n, warps = (32 if rows <= 32 else 64), 64, 4
    else:
        block_m, block_n, warps = 64, (64 if x_bytes == 4 else 128), 8
    per_stage = block_m * block_k * x_bytes + block_n * block_k * weight_bits // 8
    dequantized = block_n * block_k * x_bytes
    stages = max(2, min(4, (SHARED_MEMORY_BUDGET - dequantized) // per_stage))
    return block_m, block_n, block_k, warps, stages


def _launch_plan(x: torch.Tensor, n: int, k: int, block_m: int, block_n: int, block_k: int,
                 split_k: int | None) -> tuple[tuple[int, int, int], int, torch.Tensor, torch.Tensor]:
    """The grid, K tiles per split, the output, and where the kernel writes: the output itself, or
    fp32 partial sums [splits, M, N] when K is split."""
    rows = x.shape[0]
    tiles_m, tiles_n, tiles_k = triton.cdiv(rows, block_m), triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    if split_k is None:
        split_k = max(1, 2 * _num_sms(x.device) // (tiles_m * tiles_n))
    tiles = triton.cdiv(tiles_k, max(1, min(split_k, tiles_k)))
    splits = triton.cdiv(tiles_k, tiles)
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    partial = out if splits == 1 else torch.empty((splits, rows, n), dtype=torch.float32, device=x.device)
    return (tiles_m, tiles_n, splits), tiles, out, partial


def _out_strides(partial: torch.Tensor) -> tuple[int, int, int]:
    return (0, *partial.stride()) if partial.dim() == 2 else partial.stride()


def _finish(out: torch.Tensor, partial: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Sum split-K partials into `out` (the kernel wrote `out` directly, bias included, when K was not split)."""
    if partial is out:
        return out
    total = partial.sum(dim=0)
    if bias is not None:
        total += bias.float()
    return out.copy_(total)


def _dot_options(dtype: torch.dtype) -> dict[str, object]:
    """The operand dtype and precision of the kernels' tl.dot. On a GPU the operands are the
    activation dtype; fp32 ones keep full fp32 products (tf32 would drop 13 significand bits).
    Triton's interpreter multiplies bf16 as raw uint16 bits, so there the already-rounded operands
    go to the dot as fp32: the same products a GPU's bf16 dot forms exactly in fp32."""
    if _INTERPRETED or dtype == torch.float32:
        return {"DOT_DTYPE": tl.float32, "DOT_PRECISION": "ieee"}
    return {"DOT_DTYPE": _TL_DTYPES[dtype], "DOT_PRECISION": "tf32"}


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter on CPU: no split unless asked
    return torch.cuda.get_device_properties(device).multi_processor_count
