"""store_kv and rope_and_store against plain torch indexing and HF's rotate-half rotary."""

from __future__ import annotations

import pytest
import torch

from tests.backends.triton.paged import TOLERANCES

NUM_BLOCKS, BLOCK_SIZE = 6, 16


def _fused(tokens: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
           gen: torch.Generator) -> torch.Tensor:
    # A fused projection's output: the kernels get views of it whose token stride is the whole row.
    return torch.randn(tokens, heads * head_dim, generator=gen).to(dtype).to(device)


def _caches(num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim)
    return (torch.randn(shape, generator=gen).to(dtype).to(device),
            torch.randn(shape, generator=gen).to(dtype).to(device))


def _slots(device: torch.device) -> torch.Tensor:
    # Out of order, across blocks, and -1 for CUDA-graph padding rows (which must write nothing).
    return torch.tensor([37, 5, -1, 90, 16, -1, 64], dtype=torch.int64, device=device)


def _expected_cache(cache: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    expected = cache.clone().view(-1, *cache.shape[2:])
    keep = slots >= 0
    expected[slots[keep]] = rows[keep]
    return expected.view(cache.shape)


@pytest.mark.parametrize(("num_kv_heads", "head_dim", "dtype"), [(2, 64, torch.float32), (3, 128, torch.bfloat16)])
def test_store_kv(num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
    from llmserve.backends.triton import store_kv

    gen = torch.Generator().manual_seed(0)
    slots = _slots(device)
    kv = _fused(len(slots), 2 * num_kv_heads + 1, head_dim, dtype, device, gen)
    key = kv[:, :num_kv_heads * head_dim].view(-1, num_kv_heads, head_dim)
    value = kv[:, num_kv_heads * head_dim:2 * num_kv_heads * head_dim].view(-1, num_kv_heads, head_dim)
    key_cache, value_cache = _caches(num_kv_heads, head_dim, dtype, device, gen)
    expected_key = _expected_cache(key_cache, key, slots)
    expected_value = _expected_cache(value_cache, value, slots)
    store_kv(key, value, key_cache, value_cache, slots)
    # A copy: bit-exact, and the padding rows' values are nowhere in the cache.
    assert torch.equal(key_cache, expected_key)
    assert torch.equal(value_cache, expected_value)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotate-half rotary in float32, rounded to x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


# fp32: the same float32 formula, at most a rounding apart where the GPU fuses a multiply-add.
# bf16: the float32 results rounded to bf16 can land one bf16 ulp apart for the same reason.
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim", "dtype"), [
    (4, 1, 64, torch.float32),
    (6, 2, 128, torch.bfloat16),
    (3, 3, 64, torch.bfloat16),
])
def test_rope_and_store(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                        device: torch.device) -> None:
    from llmserve.backends.triton import rope_and_store

    gen = torch.Generator().manual_seed(num_q_heads)
    slots = _slots(device)
    tokens = len(slots)
    qkv = _fused(tokens, num_q_heads + 2 * num_kv_heads, head_dim, dtype, device, gen)
    qk = qkv[:, :(num_q_heads + num_kv_heads) * head_dim].view(tokens, -1, head_dim)
    v = qkv[:, (num_q_heads + num_kv_heads) * head_dim:].view(tokens, num_kv_heads, head_dim)
    angles = torch.rand(tokens, head_dim // 2, generator=gen) * 50
    cos, sin = angles.cos().to(device), angles.sin().to(device)
    key_cache, value_cache = _caches(num_kv_heads, head_dim, dtype, device, gen)

    rotated = _rotate(qk, cos, sin)
    expected_key = _expected_cache(key_cache, rotated[:, num_q_heads:], slots)
    expected_value = _expected_cache(value_cache, v, slots)
    qk_before = qk.clone()

    q = rope_and_store(qk, v, cos, sin, key_cache, value_cache, slots, num_q_heads)
    assert q.shape == (tokens, num_q_heads, head_dim) and q.is_contiguous() and q.dtype == dtype
    torch.testing.assert_close(q, rotated[:, :num_q_heads], **TOLERANCES[dtype])
    torch.testing.assert_close(key_cache, expected_key, **TOLERANCES[dtype])
    assert torch.equal(value_cache, expected_value)
    assert torch.equal(qk, qk_before)  # the projection's output is left as it was
