"""prefill_attention against dense causal float64 attention over the same shuffled paged cache."""

from __future__ import annotations

import pytest
import torch

from tests.backends.triton.paged import assert_close, make_cache, reference_attention


def _run(seqs: list[tuple[int, int]], num_kv_heads: int, group: int, head_dim: int, block_size: int,
         dtype: torch.dtype, device: torch.device, seed: int) -> None:
    """seqs: (cached tokens, query tokens) per sequence; the queries' own keys are already in the cache."""
    from llmserve.backends.triton import prefill_attention

    gen = torch.Generator().manual_seed(seed)
    seq_lens = [cached + q_len for cached, q_len in seqs]
    query_lens = [q_len for _, q_len in seqs]
    cache = make_cache(seq_lens, block_size, num_kv_heads, head_dim, dtype, device, gen)
    q = torch.randn(sum(query_lens), num_kv_heads * group, head_dim, generator=gen).to(dtype).to(device)
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    scale = head_dim ** -0.5
    out = prefill_attention(q, cache.key, cache.value, cache.block_table, starts, cache.seq_lens, max(query_lens),
                            scale)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, reference_attention(q, cache, query_lens, scale))


# Whole prompts (nothing cached), of mixed lengths crossing block and 64-row tile boundaries, with a
# one-token prompt among them. GQA ratios, head dims, block sizes and dtypes spread over the cases.
@pytest.mark.parametrize(("num_kv_heads", "group", "head_dim", "block_size", "dtype"), [
    (2, 1, 64, 16, torch.float32),
    (1, 3, 128, 32, torch.bfloat16),
    (1, 4, 64, 32, torch.bfloat16),
    (1, 8, 128, 16, torch.float32),
])
def test_prompts(num_kv_heads: int, group: int, head_dim: int, block_size: int, dtype: torch.dtype,
                 device: torch.device) -> None:
    _run([(0, 70), (0, 1), (0, 17)], num_kv_heads, group, head_dim, block_size, dtype, device, seed=group)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefix_cache_hit(dtype: torch.dtype, device: torch.device) -> None:
    # The cached context is longer than the query, and the query starts mid-block.
    _run([(100, 20), (37, 5)], 2, 4, 64, 16, dtype, device, seed=11)


@pytest.mark.parametrize(("group", "head_dim", "block_size", "dtype"), [
    (3, 64, 16, torch.float32),
    (8, 128, 32, torch.bfloat16),
])
def test_chunked_prefill_with_decodes(group: int, head_dim: int, block_size: int, dtype: torch.dtype,
                                      device: torch.device) -> None:
    # A mixed step: chunks of prompts behind different cached prefixes (one of them past a 64-key tile),
    # a fresh prompt and two decode rows (query length 1), all in one call.
    _run([(40, 30), (0, 66), (63, 1), (130, 17), (5, 1)], 1, group, head_dim, block_size, dtype, device, seed=5)


def test_out_and_strided_q(device: torch.device) -> None:
    from llmserve.backends.triton import prefill_attention

    # q as a view of a fused qkv projection (token stride wider than Hq * D), written into a given out.
    gen = torch.Generator().manual_seed(2)
    cache = make_cache([12, 30], 16, 1, 64, torch.float32, device, gen)
    fused = torch.randn(12 + 10, 6 * 64, generator=gen).to(device)
    q = fused[:, :4 * 64].view(-1, 4, 64)
    starts = torch.tensor([0, 12, 22], dtype=torch.int32, device=device)
    out = torch.full((22, 4, 64), float("nan"), device=device)
    returned = prefill_attention(q, cache.key, cache.value, cache.block_table, starts, cache.seq_lens, 12, 0.125,
                                 out=out)
    assert returned is out
    assert_close(out, reference_attention(q, cache, [12, 10], 0.125))
