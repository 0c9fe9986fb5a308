"""Decode attention (one query token per sequence) over the paged KV cache, flash-decoding style.

Work split: one program per (sequence, kv head, context split). The program holds every query head that
shares its kv head (GQA group, padded to 16 rows so the products run on tensor cores), so each key and
value block is read from memory once per group rather than once per query head; decode is bound by
those reads. Each program walks its split in tiles of ``_BLOCK_N`` = 64 tokens (four 16-token cache
blocks, one [64, head_dim] load per operand; head_dim is contiguous, so every row is a coalesced run),
keeps an online softmax in float32 and writes its partial (max, sum, normalised output) to a
workspace; a second kernel merges the splits. When the shape allows only one split, the first kernel
writes the output directly and the merge is skipped.

The split count comes from shapes only (batch, kv heads, block-table width), never from sequence
lengths, so a CUDA graph can capture the call: we aim for a few programs per SM, never splitting below
``_MIN_PARTITION`` tokens (shorter splits cost more in merging than they gain in parallelism). A split
that starts past its sequence's end runs no iterations and writes an empty partial (sum 0), which the
merge weighs as nothing; a sequence of length 0 (graph padding) therefore comes out as zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.backends.triton.common import check_attention_inputs, dot_precision, output_like

_BLOCK_N = 64
_MIN_PARTITION = 256
_SPLIT_TILE = 16  # splits the merge kernel reads per step
_LOG2E = 1.4426950408889634
# Finite "minus infinity" for running maxima: exp2(_NEG - m) is 0 without inf - inf = NaN.
_NEG = -1.0e30


@triton.jit
def _decode_split_kernel(
    q_ptr, key_cache_ptr, value_cache_ptr, block_table_ptr, seq_lens_ptr, out_ptr,
    part_m_ptr, part_l_ptr, part_o_ptr,
    qk_scale, num_splits,
    q_stride_b, q_stride_h, out_stride_b, out_stride_h, block_table_stride,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PARTITION: tl.constexpr,
    DIRECT: tl.constexpr, PRECISION: tl.constexpr, NEG: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * PARTITION
    end = tl.minimum(start + PARTITION, seq_len)

    group = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + group
    real = group < GROUP
    q = tl.load(q_ptr + seq.to(tl.int64) * q_stride_b + heads[:, None] * q_stride_h + dims[None, :],
                mask=real[:, None], other=0.0)

    m = tl.full([GROUP_PAD], NEG, tl.float32)
    denom = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    table = block_table_ptr + seq.to(tl.int64) * block_table_stride
    for tile in range(start, end, BLOCK_N):
        pos = tile + tl.arange(0, BLOCK_N)
        valid = pos < end
        block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        rows = (block * BLOCK_SIZE + pos % BLOCK_SIZE) * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM
        k = tl.load(key_cache_ptr + rows[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        denom = denom * alpha + tl.sum(p, 1)
        v = tl.load(value_cache_ptr + rows[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new

    # An empty split (or an empty sequence) has denom == 0 and acc == 0: its output is 0, not 0/0.
    o = acc / tl.where(denom > 0, denom, 1.0)[:, None]
    if DIRECT:
        dst = out_ptr + seq.to(tl.int64) * out_stride_b + heads[:, None] * out_stride_h + dims[None, :]
        tl.store(dst, o.to(out_ptr.dtype.element_ty), mask=real[:, None])
    else:
        # Workspace [B, Hq, splits(, D)]: the merge program of one (sequence, head) reads one dense run.
        part = (seq.to(tl.int64) * NUM_Q_HEADS + heads) * num_splits + split
        tl.store(part_m_ptr + part, m, mask=real)
        tl.store(part_l_ptr + part, denom, mask=real)
        tl.store(part_o_ptr + part[:, None] * HEAD_DIM + dims[None, :], o, mask=real[:, None])


@triton.jit
def _decode_merge_kernel(
    part_m_ptr, part_l_ptr, part_o_ptr, out_ptr, num_splits, out_stride_b, out_stride_h,
    NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT_TILE: tl.constexpr, NEG: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    base = (seq.to(tl.int64) * NUM_Q_HEADS + head) * num_splits
    splits = tl.arange(0, SPLIT_TILE)
    dims = tl.arange(0, HEAD_DIM)

    # Two passes over the (small) maxima keep the loop free of scalar carries: first the global max,
    # then every split's output weighted by its share sum * 2^(max_s - max).
    m_run = tl.full([SPLIT_TILE], NEG, tl.float32)
    for first in range(0, num_splits, SPLIT_TILE):
        s = first + splits
        m_run = tl.maximum(m_run, tl.load(part_m_ptr + base + s, mask=s < num_splits, other=NEG))
    m_max = tl.max(m_run, 0)

    weight_run = tl.zeros([SPLIT_TILE], tl.float32)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    for first in range(0, num_splits, SPLIT_TILE):
        s = first + splits
        inside = s < num_splits
        m_s = tl.load(part_m_ptr + base + s, mask=inside, other=NEG)
        l_s = tl.load(part_l_ptr + base + s, mask=inside, other=0.0)
        o_s = tl.load(part_o_ptr + (base + s)[:, None] * HEAD_DIM + dims[None, :], mask=inside[:, None], other=0.0)
        w = tl.exp2(m_s - m_max) * l_s
        weight_run += w
        acc += tl.sum(w[:, None] * o_s, 0)
    total = tl.sum(weight_run, 0)
    o = acc / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq.to(tl.int64) * out_stride_b + head * out_stride_h + dims, o.to(out_ptr.dtype.element_ty))


def decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q ``[B, Hq, D]`` (one token per sequence) over keys 0..seq_len-1 of each sequence.

    Caches ``[num_blocks, block_size, Hkv, D]``; block_table ``[B, max_blocks]`` int32; seq_lens ``[B]``
    int32. Returns ``out`` (or a new tensor) ``[B, Hq, D]`` in q's dtype.
    """
    batch, num_q_heads, dim = q.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    check_attention_inputs(q, key_cache, value_cache)
    out = output_like(q, out)
    if batch == 0:
        return out
    group = num_q_heads // num_kv_heads
    partition, num_splits = _plan_splits(batch, num_kv_heads, block_table.shape[1] * block_size, q.device)
    direct = num_splits == 1
    if direct:
        part_m = part_l = part_o = out  # unused: the kernel writes the output itself
    else:
        part_m = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
        part_o = torch.empty(batch, num_q_heads, num_splits, dim, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, key_cache, value_cache, block_table, seq_lens, out, part_m, part_l, part_o,
        scale * _LOG2E, num_splits, q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_table.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), NUM_Q_HEADS=num_q_heads,
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=dim, BLOCK_SIZE=block_size, BLOCK_N=_BLOCK_N, PARTITION=partition,
        DIRECT=direct, PRECISION=dot_precision(q.dtype), NEG=_NEG,
        num_warps=8 if q.dtype == torch.float32 else 4, num_stages=2)  # float32 spills with 4 warps (sm_90)
    if not direct:
        _decode_merge_kernel[(batch, num_q_heads)](
            part_m, part_l, part_o, out, num_splits, out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=dim, SPLIT_TILE=_SPLIT_TILE, NEG=_NEG, num_warps=4)
    return out


def _plan_splits(batch: int, num_kv_heads: int, max_context: int, device: torch.device) -> tuple[int, int]:
    """(tokens per split, number of splits) from shapes only: about four programs per SM in all.

    The partition is a power of two (at least _MIN_PARTITION) so that few kernel variants get compiled
    as the block-table width changes from step to step.
    """
    wanted = triton.cdiv(4 * _num_sms(device), batch * num_kv_heads)
    splits = max(1, min(wanted, triton.cdiv(max_context, _MIN_PARTITION)))
    partition = max(_MIN_PARTITION, triton.next_power_of_2(triton.cdiv(max_context, splits)))
    return partition, max(1, triton.cdiv(max_context, partition))  # an empty table still writes its zeros


_SM_COUNTS: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter on CPU: plan as for an H100/H200, so tests see the same splits
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]
