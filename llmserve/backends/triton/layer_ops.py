"""RMSNorm (with the residual add) and silu * mul, rounding as HF's torch code does.

Both are memory-bound row operations. RMSNorm: one program per token holds the whole hidden row (up
to 8k elements: the sum of squares needs all of it, and one pass reads x and the residual once);
warps grow with the row so each thread keeps ~16 values. silu * mul: rows are split into 1024-wide
column tiles as well, since a batch of decodes has few rows and would otherwise leave most SMs idle.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, eps, x_stride, residual_stride, out_stride,
                     HIDDEN: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < HIDDEN
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # h = x + residual rounded to x's dtype, as torch's add of two bf16 tensors; the sum is
        # what the next layer adds to, so it goes back into the residual buffer.
        r = tl.load(residual_ptr + row * residual_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(residual_ptr + row * residual_stride + cols, x.to(residual_ptr.dtype.element_ty), mask=mask)
    h = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(h * h, 0) / HIDDEN + eps)
    # HF rounds the normalised row to the input dtype before the weight multiply.
    normed = (h * inv_rms).to(x_ptr.dtype.element_ty)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight * h / rms(h), residual) for x ``[T, H]``, h = x + residual (written into ``residual``) or x.

    Same contract as ``llmserve.model.layer_ops.rms_norm``: the norm in float32, the normalised value
    rounded to x's dtype and then multiplied by the weight.
    """
    tokens, hidden = x.shape
    if x.stride(1) != 1 or not weight.is_contiguous() or (residual is not None and residual.stride(1) != 1):
        raise ValueError("rms_norm needs rows with contiguous columns")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, x {tuple(x.shape)}")
    out = torch.empty((tokens, hidden), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if tokens == 0:
        return out, residual
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(tokens,)](
        x, x if residual is None else residual, weight, out, eps, x.stride(0),
        0 if residual is None else residual.stride(0), out.stride(0),
        HIDDEN=hidden, BLOCK=block, HAS_RESIDUAL=residual is not None, num_warps=min(16, max(1, block // 512)))
    return out, residual


_SILU_BLOCK = 1024


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, gate_up_stride, out_stride, INTER: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTER
    gate = tl.load(gate_up_ptr + row * gate_up_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * gate_up_stride + INTER + cols, mask=mask, other=0.0)
    # silu in float32 as x / (1 + e^-x) (torch's formula), rounded to the dtype before the multiply
    # as torch's separate silu and mul kernels round between them.
    silu = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty)
    out = silu.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for ``[T, 2I]`` rows holding gate then up; returns ``[T, I]``."""
    tokens, width = gate_up.shape
    if width % 2 or gate_up.stride(1) != 1:
        raise ValueError("gate_up must be [T, 2I] with contiguous columns")
    inter = width // 2
    out = gate_up.new_empty(tokens, inter)
    if tokens == 0:
        return out
    block = min(_SILU_BLOCK, triton.next_power_of_2(inter))
    _silu_mul_kernel[(tokens, triton.cdiv(inter, block))](
        gate_up, out, gate_up.stride(0), out.stride(0), INTER=inter, BLOCK=block, num_warps=4)
    return out
