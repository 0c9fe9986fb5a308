"""Writing new keys and values into the paged KV cache, alone or fused with the rotary embedding.

Cache layout per layer: ``[num_blocks, block_size, num_kv_heads, head_dim]``, contiguous, so one slot
(``block * block_size + offset``) holds a token's ``num_kv_heads * head_dim`` values back to back: a
token's whole K (or V) row is one contiguous copy. One program per token keeps every load and store a
run of contiguous elements; heads x head_dim is at most a few thousand elements, which one program
moves in a single vectorised pass.

Slots below zero are padding rows of a CUDA-graph batch: their stores are masked off, and the grid
depends on shapes only, so the calls can be captured.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_ptr,
                     key_token_stride, value_token_stride,
                     ROW: tl.constexpr, ROW_PAD: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    cols = tl.arange(0, ROW_PAD)
    # A padding row gets an empty column range (the bound, not `& (slot >= 0)`: the interpreter
    # rejects masks combined with a scalar condition).
    mask = cols < tl.where(slot >= 0, ROW, 0)
    # int64 offsets: a large pool has more than 2**31 elements per layer.
    dst = slot * ROW + cols
    k = tl.load(key_ptr + token.to(tl.int64) * key_token_stride + cols, mask=mask)
    v = tl.load(value_ptr + token.to(tl.int64) * value_token_stride + cols, mask=mask)
    tl.store(key_cache_ptr + dst, k, mask=mask)
    tl.store(value_cache_ptr + dst, v, mask=mask)


def store_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Writes key/value ``[T, Hkv, D]`` to ``slot_mapping`` ``[T]``'s cache slots; slots < 0 are skipped."""
    tokens, heads, dim = key.shape
    _check_rows(key, "key")
    _check_rows(value, "value")
    _check_cache(key_cache, value_cache, heads, dim)
    if tokens == 0:
        return
    row = heads * dim
    _store_kv_kernel[(tokens,)](key, value, key_cache, value_cache, slot_mapping, key.stride(0), value.stride(0),
                                ROW=row, ROW_PAD=triton.next_power_of_2(row), num_warps=_warps(row))


@triton.jit
def _rope_store_kernel(qk_ptr, v_ptr, cos_ptr, sin_ptr, key_cache_ptr, value_cache_ptr, slot_ptr, q_out_ptr,
                       qk_token_stride, v_token_stride,
                       NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                       HEADS_PAD: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
                       HEAD_DIM: tl.constexpr, HALF: tl.constexpr):
    token = tl.program_id(0)
    token64 = token.to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    heads = tl.arange(0, HEADS_PAD)[:, None]
    half = tl.arange(0, HALF)[None, :]
    in_range = heads < NUM_Q_HEADS + NUM_KV_HEADS

    # q and k rotate together in one [heads, D/2] tile: both halves of every head at once.
    first = qk_ptr + token64 * qk_token_stride + heads * HEAD_DIM + half
    x1 = tl.load(first, mask=in_range).to(tl.float32)
    x2 = tl.load(first + HALF, mask=in_range).to(tl.float32)
    cos = tl.load(cos_ptr + token64 * HALF + half)
    sin = tl.load(sin_ptr + token64 * HALF + half)
    out1 = (x1 * cos - x2 * sin).to(q_out_ptr.dtype.element_ty)
    out2 = (x2 * cos + x1 * sin).to(q_out_ptr.dtype.element_ty)

    is_q = heads < NUM_Q_HEADS
    q_dst = q_out_ptr + token64 * (NUM_Q_HEADS * HEAD_DIM) + heads * HEAD_DIM + half
    tl.store(q_dst, out1, mask=is_q)
    tl.store(q_dst + HALF, out2, mask=is_q)

    # k heads follow the q heads in the tile; slot < 0 (graph padding) stores nothing.
    is_k = (heads >= NUM_Q_HEADS) & (heads < tl.where(slot >= 0, NUM_Q_HEADS + NUM_KV_HEADS, 0))
    k_dst = key_cache_ptr + slot * (NUM_KV_HEADS * HEAD_DIM) + (heads - NUM_Q_HEADS) * HEAD_DIM + half
    tl.store(k_dst, out1, mask=is_k)
    tl.store(k_dst + HALF, out2, mask=is_k)

    kv_heads = tl.arange(0, KV_HEADS_PAD)[:, None]
    dims = tl.arange(0, HEAD_DIM)[None, :]
    v_mask = kv_heads < tl.where(slot >= 0, NUM_KV_HEADS, 0)
    v = tl.load(v_ptr + token64 * v_token_stride + kv_heads * HEAD_DIM + dims, mask=v_mask)
    tl.store(value_cache_ptr + slot * (NUM_KV_HEADS * HEAD_DIM) + kv_heads * HEAD_DIM + dims, v, mask=v_mask)


def rope_and_store(qk: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                   num_q_heads: int) -> torch.Tensor:
    """Rotates q and k of ``qk`` ``[T, Hq + Hkv, D]`` (HF rotate-half, float32, rounded to the input dtype),
    writes k and v ``[T, Hkv, D]`` to their slots (slots < 0 skipped) and returns q as a new ``[T, Hq, D]``.

    cos, sin: ``[T, D/2]`` float32, contiguous.
    """
    tokens, heads, dim = qk.shape
    num_kv_heads = heads - num_q_heads
    _check_rows(qk, "qk")
    _check_rows(v, "v")
    _check_cache(key_cache, value_cache, num_kv_heads, dim)
    if v.shape != (tokens, num_kv_heads, dim):
        raise ValueError(f"v has shape {tuple(v.shape)}, expected {(tokens, num_kv_heads, dim)}")
    if dim % 2 or dim & (dim - 1):
        raise ValueError(f"head_dim must be an even power of two, got {dim}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.shape != (tokens, dim // 2):
            raise ValueError(f"{name} must be contiguous float32 [T, D/2]")
    q = qk.new_empty(tokens, num_q_heads, dim)
    if tokens == 0:
        return q
    _rope_store_kernel[(tokens,)](
        qk, v, cos, sin, key_cache, value_cache, slot_mapping, q, qk.stride(0), v.stride(0),
        NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads,
        HEADS_PAD=triton.next_power_of_2(heads), KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_DIM=dim, HALF=dim // 2, num_warps=_warps(heads * dim))
    return q


def _warps(elements: int) -> int:
    # About 8-16 elements per thread: enough in flight to cover memory latency without spilling.
    return min(8, triton.next_power_of_2(max(1, elements // 512)))


def _check_rows(x: torch.Tensor, name: str) -> None:
    # The kernels step over tokens with the given stride but assume each token's [H, D] is dense.
    if x.dim() != 3 or x.stride(2) != 1 or x.stride(1) != x.shape[2]:
        raise ValueError(f"{name} must be [T, H, D] with each token's heads contiguous")


def _check_cache(key_cache: torch.Tensor, value_cache: torch.Tensor, heads: int, dim: int) -> None:
    for t in (key_cache, value_cache):
        if t.dim() != 4 or t.shape[2:] != (heads, dim) or not t.is_contiguous():
            raise ValueError("caches must be contiguous [num_blocks, block_size, num_kv_heads, head_dim] "
                             f"with {heads} heads of {dim}, got {tuple(t.shape)}")
