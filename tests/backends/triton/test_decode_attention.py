"""decode_attention against dense float64 attention over the same shuffled paged cache."""

from __future__ import annotations

import pytest
import torch

from tests.backends.triton.paged import assert_close, make_cache, reference_attention


def _run(seq_lens: list[int], num_kv_heads: int, group: int, head_dim: int, block_size: int, dtype: torch.dtype,
         device: torch.device, seed: int, extra_blocks: int = 0) -> None:
    from llmserve.backends.triton import decode_attention

    gen = torch.Generator().manual_seed(seed)
    cache = make_cache(seq_lens, block_size, num_kv_heads, head_dim, dtype, device, gen, extra_blocks)
    q = torch.randn(len(seq_lens), num_kv_heads * group, head_dim, generator=gen).to(dtype).to(device)
    scale = head_dim ** -0.5
    out = decode_attention(q, cache.key, cache.value, cache.block_table, cache.seq_lens, scale)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, reference_attention(q, cache, [1] * len(seq_lens), scale))


# GQA ratios 1/3/4/8, head dims 64/128, block sizes 16/32, both dtypes: spread over a few cases rather
# than the full product, which the interpreter would take minutes over. Lengths cross block
# boundaries (17, 33, 40), and 0 is a padding row of a CUDA-graph batch (zeros, not NaN).
@pytest.mark.parametrize(("num_kv_heads", "group", "head_dim", "block_size", "dtype"), [
    (2, 1, 64, 16, torch.float32),
    (1, 3, 128, 32, torch.bfloat16),
    (2, 4, 64, 32, torch.float32),
    (1, 8, 128, 16, torch.bfloat16),
    (1, 8, 64, 16, torch.float32),
])
def test_mixed_lengths(num_kv_heads: int, group: int, head_dim: int, block_size: int, dtype: torch.dtype,
                       device: torch.device) -> None:
    _run([17, 1, 40, 0, 33], num_kv_heads, group, head_dim, block_size, dtype, device, seed=group + head_dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_context_uses_several_splits(dtype: torch.dtype, device: torch.device) -> None:
    from llmserve.backends.triton.paged_decode import _plan_splits

    # 1030 tokens of table width split four ways; the 300-token sequence leaves two splits empty
    # and the empty one leaves them all empty.
    seq_lens = [1030, 300, 0]
    assert _plan_splits(len(seq_lens), 2, 1040, device)[1] >= 4
    _run(seq_lens, 2, 4, 64, 16, dtype, device, seed=7)


def test_padding_rows_are_zero_and_out_is_filled(device: torch.device) -> None:
    from llmserve.backends.triton import decode_attention

    gen = torch.Generator().manual_seed(3)
    cache = make_cache([0, 5, 0], 16, 2, 64, torch.float32, device, gen, extra_blocks=2)
    q = torch.randn(3, 4, 64, generator=gen).to(device)
    out = torch.full_like(q, float("nan"))
    returned = decode_attention(q, cache.key, cache.value, cache.block_table, cache.seq_lens, 0.125, out=out)
    assert returned is out
    assert (out[0] == 0).all() and (out[2] == 0).all()
    assert_close(out, reference_attention(q, cache, [1, 1, 1], 0.125))


def test_q_view_of_fused_projection(device: torch.device) -> None:
    from llmserve.backends.triton import decode_attention

    # q as the runner hands it over: a [B, Hq, D] view with a token stride wider than Hq * D.
    gen = torch.Generator().manual_seed(5)
    cache = make_cache([9, 20], 16, 1, 64, torch.float32, device, gen)
    fused = torch.randn(2, 6 * 64, generator=gen).to(device)
    q = fused[:, :4 * 64].view(2, 4, 64)
    out = decode_attention(q, cache.key, cache.value, cache.block_table, cache.seq_lens, 0.125)
    assert_close(out, reference_attention(q, cache, [1, 1], 0.125))


def test_empty_block_table_gives_zeros(device: torch.device) -> None:
    from llmserve.backends.triton import decode_attention

    # A batch made only of padding rows, with a zero-width table: still one split, so out is written.
    cache = make_cache([0, 0], 16, 1, 64, torch.bfloat16, device, torch.Generator().manual_seed(0))
    q = torch.randn(2, 2, 64).to(torch.bfloat16).to(device)
    out = decode_attention(q, cache.key, cache.value, cache.block_table[:, :0], cache.seq_lens, 0.125)
    assert (out == 0).all()
