"""Variable-length causal attention over the paged KV cache: prompts, chunked prefill, prefix-cache hits.

Work split: one program per (tile of ``BLOCK_M`` query rows, query head, sequence). Prefill is bound by
arithmetic, so each query head gets its own programs (the kv head's tiles are re-read by the group's
programs, mostly from L2) and the tiles are sized for the tensor cores: ``BLOCK_M`` = 64 rows (fewer
when every query in the batch is shorter, e.g. a batch of decodes and short chunks) by ``_BLOCK_N`` = 64
keys, i.e. four 16-token cache blocks gathered per tile; head_dim is contiguous, so each key row is
one coalesced load. 4 warps for head_dim 64, 8 for 128 keep the [64, 128] fp32 accumulator in
registers.

The keys of a tile come in two runs: those at or below the tile's first query position, which every
row of the tile sees (no mask), then the few tiles along the diagonal, masked causally. The grid depends
on ``max_query_len`` (a python int) and shapes only; tiles past a sequence's query length run no
iterations and store nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.backends.triton.common import check_attention_inputs, dot_precision, output_like

_BLOCK_N = 64
_MAX_BLOCK_M = 64
_LOG2E = 1.4426950408889634
_NEG = -1.0e30  # finite running-max start: a fully masked tile gives exp2(-inf - _NEG) = 0, never NaN


@triton.jit
def _attend_tile(acc, m, denom, q, key_cache_ptr, value_cache_ptr, table, tile, seq_len, q_pos, kv_head,
                 qk_scale, dims, MASKED: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    pos = tile + tl.arange(0, BLOCK_N)
    if MASKED:
        valid = pos < seq_len
        block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    else:
        block = tl.load(table + pos // BLOCK_SIZE).to(tl.int64)
    rows = (block * BLOCK_SIZE + pos % BLOCK_SIZE) * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM
    if MASKED:
        k = tl.load(key_cache_ptr + rows[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
    else:
        k = tl.load(key_cache_ptr + rows[:, None] + dims[None, :])
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASKED:
        visible = (pos[None, :] <= q_pos[:, None]) & valid[None, :]
        scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(scores - m_new[:, None])
    denom = denom * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(value_cache_ptr + rows[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
    else:
        v = tl.load(value_cache_ptr + rows[:, None] + dims[None, :])
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, denom


@triton.jit
def _prefill_kernel(
    q_ptr, key_cache_ptr, value_cache_ptr, block_table_ptr, query_start_ptr, seq_lens_ptr, out_ptr,
    qk_scale, q_stride_t, q_stride_h, out_stride_t, out_stride_h, block_table_stride,
    GROUP: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    NEG: tl.constexpr,
):
    row_tile = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    cached = seq_len - q_len  # keys before this step's queries (prefix-cache hit or earlier chunks)

    rows = row_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    real = rows < q_len
    dims = tl.arange(0, HEAD_DIM)
    tokens = (q_start + rows).to(tl.int64)
    q = tl.load(q_ptr + tokens[:, None] * q_stride_t + head * q_stride_h + dims[None, :], mask=real[:, None],
                other=0.0)
    q_pos = cached + rows

    # Keys 0..first_pos are visible to every row of the tile; whole tiles of them need no mask.
    # A tile past this sequence's queries gets empty ranges and so does nothing.
    active = row_tile * BLOCK_M < q_len
    first_pos = cached + row_tile * BLOCK_M
    unmasked_end = tl.where(active, (first_pos + 1) // BLOCK_N * BLOCK_N, 0)
    key_end = tl.where(active, tl.minimum(first_pos + BLOCK_M, seq_len), 0)

    m = tl.full([BLOCK_M], NEG, tl.float32)
    denom = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    table = block_table_ptr + seq.to(tl.int64) * block_table_stride
    for tile in range(0, unmasked_end, BLOCK_N):
        acc, m, denom = _attend_tile(acc, m, denom, q, key_cache_ptr, value_cache_ptr, table, tile, seq_len,
                                     q_pos, kv_head, qk_scale, dims, False,
                                     NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N, PRECISION)
    for tile in range(unmasked_end, key_end, BLOCK_N):
        acc, m, denom = _attend_tile(acc, m, denom, q, key_cache_ptr, value_cache_ptr, table, tile, seq_len,
                                     q_pos, kv_head, qk_scale, dims, True,
                                     NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BLOCK_N, PRECISION)

    o = acc / tl.where(denom > 0, denom, 1.0)[:, None]
    tl.store(out_ptr + tokens[:, None] * out_stride_t + head * out_stride_h + dims[None, :],
             o.to(out_ptr.dtype.element_ty), mask=real[:, None])


def prefill_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_table: torch.Tensor,
                      query_start_loc: torch.Tensor, seq_lens: torch.Tensor, max_query_len: int, scale: float,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of q ``[T, Hq, D]`` (sequences back to back, ``query_start_loc`` ``[B+1]`` int32)
    over the paged cache: query row i of sequence b sits at position ``seq_lens[b] - qlen_b + i`` and sees
    keys 0..that position. Returns ``out`` (or a new tensor) ``[T, Hq, D]`` in q's dtype.
    """
    tokens, num_q_heads, dim = q.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    check_attention_inputs(q, key_cache, value_cache)
    out = output_like(q, out)
    batch = seq_lens.shape[0]
    if tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    # float32 tiles take twice the registers (and its "ieee" products run on FMA units): 64 rows spill several
    # KB per thread on sm_90; 32 rows, 8 warps and no pipelining spill little or nothing. float32 is a
    # debugging path on the GPU; bf16 is the tuned one (no spills at these sizes, per the sm_90 cubin).
    wide = q.dtype == torch.float32
    block_m = min(_MAX_BLOCK_M // 2 if wide else _MAX_BLOCK_M, max(16, triton.next_power_of_2(max_query_len)))
    grid = (triton.cdiv(max_query_len, block_m), num_q_heads, batch)
    _prefill_kernel[grid](
        q, key_cache, value_cache, block_table, query_start_loc, seq_lens, out,
        scale * _LOG2E, q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_table.stride(0),
        GROUP=num_q_heads // num_kv_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=dim, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=_BLOCK_N, PRECISION=dot_precision(q.dtype), NEG=_NEG,
        num_warps=4 if dim <= 64 and not wide else 8, num_stages=1 if wide else 2)
    return out
