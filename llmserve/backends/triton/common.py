"""Pieces the Triton kernels share: the interpreter switch and the float32 product precision."""

from __future__ import annotations

import os

import torch
import triton


def interpreting() -> bool:
    """True when kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: "ieee" keeps float32 attention in float32 (tl.dot would round its inputs
    to tf32 on the GPU, ~1e-3 relative); 16-bit inputs ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_attention_inputs(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    num_q_heads, dim = q.shape[1:]
    num_kv_heads = key_cache.shape[2]
    if q.stride(2) != 1:
        raise ValueError("q's head_dim must be contiguous")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads do not group over {num_kv_heads} kv heads")
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {dim}")
    for t in (key_cache, value_cache):
        if t.dim() != 4 or t.shape[3] != dim or not t.is_contiguous():
            raise ValueError("caches must be contiguous [num_blocks, block_size, num_kv_heads, head_dim]")


def output_like(q: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """`out`, checked to fit q (the kernels step over its first two dims by stride), or a new tensor."""
    if out is None:
        return torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(2) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} with a contiguous head_dim")
    return out
