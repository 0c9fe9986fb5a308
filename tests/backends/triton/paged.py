"""A paged KV cache with shuffled block ids and a dense torch reference of attention over it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Tolerances against a float64 reference. fp32: the kernels accumulate in fp32 in another order
# (tiles, online softmax rescaling, split merge), so a few ulps of O(1) values. bf16: the kernel
# rounds the softmax weights to bf16 before the value product and the output to bf16 (2^-8 ~ 4e-3
# relative each), so a couple of bf16 ulps.
TOLERANCES = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2}}


@dataclass
class PagedCache:
    key: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    value: torch.Tensor
    block_table: torch.Tensor  # [B, max_blocks] int32
    seq_lens: torch.Tensor  # [B] int32

    @property
    def block_size(self) -> int:
        return self.key.shape[1]


def make_cache(seq_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
               device: torch.device, generator: torch.Generator, extra_blocks: int = 0) -> PagedCache:
    """Random keys and values in shuffled blocks. Slots no sequence owns hold NaN, and the table is
    padded with a NaN block, so a kernel that reads past a sequence's end shows it in its output."""
    counts = [-(-n // block_size) for n in seq_lens]
    max_blocks = max(1, max(counts) + extra_blocks)
    num_blocks = sum(counts) + 1
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key = torch.full(shape, float("nan"), dtype=dtype)
    value = torch.full(shape, float("nan"), dtype=dtype)
    ids = torch.randperm(num_blocks, generator=generator)
    pad_block = int(ids[-1])
    table = torch.full((len(seq_lens), max_blocks), pad_block, dtype=torch.int32)
    next_id = 0
    for b, (n, count) in enumerate(zip(seq_lens, counts, strict=True)):
        blocks = ids[next_id:next_id + count]
        next_id += count
        table[b, :count] = blocks.to(torch.int32)
        slots = (blocks[:, None] * block_size + torch.arange(block_size)).flatten()[:n]
        key.view(-1, num_kv_heads, head_dim)[slots] = torch.randn(n, num_kv_heads, head_dim, generator=generator,
                                                                    dtype=torch.float32).to(dtype)
        value.view(-1, num_kv_heads, head_dim)[slots] = torch.randn(n, num_kv_heads, head_dim,
                                                                      generator=generator).to(dtype)
    return PagedCache(key.to(device), value.to(device), table.to(device),
                      torch.tensor(seq_lens, dtype=torch.int32, device=device))


def reference_attention(q: torch.Tensor, cache: PagedCache, query_lens: list[int], scale: float) -> torch.Tensor:
    """Dense causal attention in float64: q [T, Hq, D] holds each sequence's last query_lens[b] tokens."""
    num_q_heads = q.shape[1]
    num_kv_heads, head_dim = cache.key.shape[2:]
    group = num_q_heads // num_kv_heads
    out = torch.zeros(q.shape, dtype=torch.float64)
    start = 0
    for b, q_len in enumerate(query_lens):
        seq_len = int(cache.seq_lens[b])
        blocks = cache.block_table[b].long().cpu()
        keys = cache.key.cpu()[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].double()
        values = cache.value.cpu()[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].double()
        if seq_len > 0:
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
            rows = q[start:start + q_len].cpu().double()
            scores = torch.einsum("qhd,khd->hqk", rows, keys) * scale
            q_pos = torch.arange(seq_len - q_len, seq_len)[:, None]
            scores = scores.masked_fill(torch.arange(seq_len)[None, :] > q_pos, float("-inf"))
            out[start:start + q_len] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)
        start += q_len
    return out


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.cpu().double(), expected.double(), **TOLERANCES[actual.dtype])
