"""Attention over a paged KV cache for mixed prefill + decode batches.

Layout of one layer's cache: ``[num_kv_heads, num_blocks * block_size, head_dim]`` for keys and
for values. Keeping heads outermost makes the per-step gather of a batch's blocks a single
``index_select`` whose result is already laid out ``[batch, heads, tokens, dim]`` for SDPA.

The batch is cut into groups of sequences with similar query lengths (the runner puts all
decodes in one group and all prefill chunks in another), so that padding queries to the
longest one in a group wastes little. ``paged_attention`` is the one call site a CUDA kernel
will later replace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from llmserve.model.kernels import paged_decode_attention
from llmserve.model.memory import mapped_tensor

_SDPA_ROWS = 16  # a prompt's query rows are padded to a multiple of this on CPU (see _group_attention)


@dataclass
class AttentionGroup:
    """Sequences whose query tokens form the contiguous slice [start, end) of the flat batch."""

    start: int
    end: int
    num_seqs: int
    max_query_len: int
    block_tables: torch.Tensor  # [G, max_blocks] long, padded with block 0 (masked out)
    # [G, 1, Q, L] bool, True where a query may attend a key; None for a single sequence whose
    # queries are all its keys (a prompt's first chunk): plain causal attention over Q keys.
    mask: torch.Tensor | None
    context_lens: torch.Tensor  # [G] long: keys each sequence attends (cached + this step's)
    token_index: torch.Tensor | None  # [G * Q] rows of the slice to gather; None when no padding
    real_rows: torch.Tensor | None  # [end - start] rows of the padded [G * Q] output that are real


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot each new token's K/V is written to
    groups: list[AttentionGroup]


@dataclass
class LayerKVCache:
    key: torch.Tensor  # [num_kv_heads, num_slots, head_dim]
    value: torch.Tensor
    block_size: int


def allocate_kv_cache(num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                      dtype: torch.dtype, device: torch.device | str) -> list[LayerKVCache]:
    shape = (num_kv_heads, num_blocks * block_size, head_dim)
    return [LayerKVCache(_zeros(shape, dtype, device), _zeros(shape, dtype, device), block_size)
            for _ in range(num_layers)]


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    # Zeros, not empty: masked-out slots are still multiplied by zero weights, and 0 * NaN is NaN.
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    # An anonymous mapping is zero-filled lazily by the OS, so a multi-GiB pool costs nothing at
    # start-up: page faults are dear on this VM (2-20 us per 4 KiB page), and torch.zeros would
    # take them all before the first request. Plain pages, not huge pages: prefaulting 2 GiB on
    # huge pages took 5.5 s, and huge pages faulted during steps made the offline benchmark 8% slower.
    return mapped_tensor(shape, dtype, huge_pages=False)


def kv_bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                       dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_dim * block_size * element


def store_kv(k: torch.Tensor, v: torch.Tensor, cache: LayerKVCache, slot_mapping: torch.Tensor) -> None:
    """k, v: [T, Hkv, D] for this step's tokens, written to their slots before attention reads them."""
    cache.key.index_copy_(1, slot_mapping, k.transpose(0, 1))
    cache.value.index_copy_(1, slot_mapping, v.transpose(0, 1))


def paged_attention(q: torch.Tensor, cache: LayerKVCache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, Hq, D] for this step's tokens, whose keys and values are already in the cache.
    Returns [T, Hq, D]."""
    if len(meta.groups) == 1:
        return _attend(q, cache, meta.groups[0], scale)
    out = torch.empty_like(q)
    for group in meta.groups:
        out[group.start:group.end] = _attend(q, cache, group, scale)
    return out


def _attend(q: torch.Tensor, cache: LayerKVCache, group: AttentionGroup, scale: float) -> torch.Tensor:
    if group.max_query_len == 1 and q.device.type == "cpu" and q.dtype == cache.key.dtype:
        kernel = paged_decode_attention(str(q.dtype).removeprefix("torch."))
        if kernel is not None:
            return _decode_kernel(kernel, q[group.start:group.end], cache, group, scale)
    return _group_attention(q, cache, group, scale)


def _decode_kernel(kernel, q: torch.Tensor, cache: LayerKVCache, group: AttentionGroup,
                   scale: float) -> torch.Tensor:
    """The kernel reads the cache in its own dtype but takes and returns float32 queries: one
    token per sequence, so converting them costs nothing next to reading the history."""
    dtype = q.dtype
    q = q.to(torch.float32).contiguous()
    out = torch.empty_like(q)
    tables = group.block_tables
    heads, slots, dim = cache.key.shape
    failed = kernel(q.data_ptr(), cache.key.data_ptr(), cache.value.data_ptr(), tables.data_ptr(),
                    group.context_lens.data_ptr(), out.data_ptr(), q.shape[0], q.shape[1], heads, dim, slots,
                    cache.block_size, tables.shape[1], scale, torch.get_num_threads())
    if failed:
        raise MemoryError("paged attention kernel could not allocate its scratch space")
    return out.to(dtype)


def _group_attention(q: torch.Tensor, cache: LayerKVCache, group: AttentionGroup, scale: float) -> torch.Tensor:
    num_heads, head_dim = q.shape[1], q.shape[2]
    g, qlen = group.num_seqs, group.max_query_len
    q_slice = q[group.start:group.end]
    if group.token_index is not None:
        q_slice = q_slice.index_select(0, group.token_index)
    q_batch = q_slice.view(g, qlen, num_heads, head_dim).transpose(1, 2)
    keys = _gather_blocks(cache.key, group.block_tables, cache.block_size)
    values = _gather_blocks(cache.value, group.block_tables, cache.block_size)
    if group.mask is None:  # drop the last block's unused slots: then causal attention needs no mask
        padded = -(-qlen // _SDPA_ROWS) * _SDPA_ROWS
        if padded <= keys.shape[2] and q.device.type == "cpu":
            # torch's CPU flash attention runs a third faster on whole tiles of 16 rows. Keys past
            # the prompt are never attended (causal), and the padding queries' rows are dropped.
            q_batch = F.pad(q_batch, (0, 0, 0, padded - qlen))
        keys, values = keys[:, :, :q_batch.shape[2]], values[:, :, :q_batch.shape[2]]
    out = F.scaled_dot_product_attention(q_batch, keys, values, attn_mask=group.mask, scale=scale,
                                         is_causal=group.mask is None, enable_gqa=num_heads != keys.shape[1])
    out = out[:, :, :qlen]
    out = out.transpose(1, 2).reshape(g * qlen, num_heads, head_dim)
    if group.real_rows is not None:
        out = out.index_select(0, group.real_rows)
    return out


def _gather_blocks(cache: torch.Tensor, block_tables: torch.Tensor, block_size: int) -> torch.Tensor:
    """[Hkv, slots, D] cache + [G, B] block ids -> [G, Hkv, B * block_size, D]."""
    heads, slots, dim = cache.shape
    g, nblocks = block_tables.shape
    blocks = cache.view(heads, slots // block_size, block_size, dim)
    picked = blocks.index_select(1, block_tables.reshape(-1))
    return picked.view(heads, g, nblocks * block_size, dim).transpose(0, 1)
