"""The reference backend: SDPA over gathered KV blocks, on any device torch runs on.

KV layout of one layer: ``[num_kv_heads, num_blocks * block_size, head_dim]`` for keys and for
values. Heads outermost make the per-step gather of a batch's blocks a single ``index_select``
whose result is already laid out ``[batch, heads, tokens, dim]`` for SDPA.

The batch is cut into groups of sequences with similar query lengths: all decodes form one group,
each prefill chunk a group of its own. A shared prefill group would pad every chunk to the longest
query and the longest context, and a chunk alone that starts a prompt needs no mask, so attention
can skip the masked half. Chunks per step are few (the token budget bounds them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from llmserve.backends.base import AttentionBackend, KVCacheSpec, LayerKVCache
from llmserve.runner.step_batch import StepBatch


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
class GroupedMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot each new token's K/V is written to
    groups: list[AttentionGroup]


class TorchBackend(AttentionBackend):
    name = "torch"

    def allocate_kv_cache(self, spec: KVCacheSpec, num_blocks: int) -> list[LayerKVCache]:
        shape = (spec.num_kv_heads, num_blocks * spec.block_size, spec.head_dim)
        return [LayerKVCache(self._zeros(shape, spec.dtype), self._zeros(shape, spec.dtype), spec.block_size)
                for _ in range(spec.num_layers)]

    def _zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def build_metadata(self, batch: StepBatch) -> GroupedMetadata:
        lengths = batch.query_lens.tolist()
        num_decodes = batch.num_decodes
        spans = [(0, num_decodes)] if num_decodes else []
        spans += [(i, i + 1) for i in range(num_decodes, batch.num_seqs)]
        groups, offset = [], 0
        for lo, hi in spans:
            group = _group(batch.block_table[lo:hi], batch.query_lens[lo:hi], batch.seq_lens[lo:hi], batch.block_size)
            group.start, offset = offset, offset + sum(lengths[lo:hi])
            group.end = offset
            groups.append(self._to_device(group))
        return GroupedMetadata(batch.slot_mapping.to(self.device, non_blocking=True), groups)

    def _to_device(self, group: AttentionGroup) -> AttentionGroup:
        if self.device.type == "cpu":
            return group
        return AttentionGroup(group.start, group.end, group.num_seqs, group.max_query_len,
                              _move(group.block_tables, self.device), _move(group.mask, self.device),
                              _move(group.context_lens, self.device),
                              _move(group.token_index, self.device), _move(group.real_rows, self.device))

    def rotate_and_store(self, qk: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         cache: LayerKVCache, meta: GroupedMetadata, num_q_heads: int) -> torch.Tensor:
        q, k = apply_rotary(qk, cos, sin).split((num_q_heads, qk.shape[1] - num_q_heads), dim=1)
        store_kv(k, v, cache, meta.slot_mapping)
        return q

    def attention(self, q: torch.Tensor, cache: LayerKVCache, meta: GroupedMetadata, scale: float) -> torch.Tensor:
        if len(meta.groups) == 1:
            return self.attend_group(q, cache, meta.groups[0], scale)
        out = torch.empty_like(q)
        for group in meta.groups:
            out[group.start:group.end] = self.attend_group(q, cache, group, scale)
        return out

    def attend_group(self, q: torch.Tensor, cache: LayerKVCache, group: AttentionGroup, scale: float) -> torch.Tensor:
        return sdpa_group_attention(q, cache, group, scale)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D] in HF's rotate-half layout; cos, sin: [T, 1, D/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def store_kv(k: torch.Tensor, v: torch.Tensor, cache: LayerKVCache, slot_mapping: torch.Tensor) -> None:
    """k, v: [T, Hkv, D] for this step's tokens, written to their slots before attention reads them."""
    cache.key.index_copy_(1, slot_mapping, k.transpose(0, 1))
    cache.value.index_copy_(1, slot_mapping, v.transpose(0, 1))


def sdpa_group_attention(q: torch.Tensor, cache: LayerKVCache, group: AttentionGroup, scale: float,
                         pad_rows_to: int = 1) -> torch.Tensor:
    """Attention for one group; a lone prompt's query rows may be padded to a multiple of
    `pad_rows_to` (keys past the prompt are never attended, and the padding rows are dropped)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    g, qlen = group.num_seqs, group.max_query_len
    q_slice = q[group.start:group.end]
    if group.token_index is not None:
        q_slice = q_slice.index_select(0, group.token_index)
    q_batch = q_slice.view(g, qlen, num_heads, head_dim).transpose(1, 2)
    keys = _gather_blocks(cache.key, group.block_tables, cache.block_size)
    values = _gather_blocks(cache.value, group.block_tables, cache.block_size)
    if group.mask is None:  # drop the last block's unused slots: then causal attention needs no mask
        padded = -(-qlen // pad_rows_to) * pad_rows_to
        if padded <= keys.shape[2]:
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


def _group(block_tables: torch.Tensor, query_lens: torch.Tensor, context_lens: torch.Tensor,
           block_size: int) -> AttentionGroup:
    num_seqs = len(query_lens)
    max_q = int(query_lens.max())
    num_blocks = -(-int(context_lens.max()) // block_size)
    key_len = num_blocks * block_size
    # Query row i of a sequence sits at absolute position ctx - qlen + i and sees keys up to it;
    # padded rows repeat the last real row so no row is fully masked (that would give NaN).
    rows = torch.arange(max_q).unsqueeze(0).minimum(query_lens.unsqueeze(1) - 1)
    query_pos = (context_lens - query_lens).unsqueeze(1) + rows
    mask: torch.Tensor | None = None
    if num_seqs > 1 or int(context_lens[0]) != max_q:
        mask = (torch.arange(key_len).view(1, 1, -1) <= query_pos.unsqueeze(-1)).unsqueeze(1)
    token_index = real_rows = None
    if bool((query_lens != max_q).any()):
        first = torch.cumsum(query_lens, 0) - query_lens
        token_index = (first.unsqueeze(1) + rows).reshape(-1)
        is_real = torch.arange(max_q).unsqueeze(0) < query_lens.unsqueeze(1)
        real_rows = torch.nonzero(is_real.reshape(-1)).squeeze(1)
    return AttentionGroup(start=0, end=0, num_seqs=num_seqs, max_query_len=max_q,
                          block_tables=block_tables[:, :num_blocks].contiguous(), mask=mask,
                          context_lens=context_lens.contiguous(),
                          token_index=token_index, real_rows=real_rows)


def _move(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device, non_blocking=True)
