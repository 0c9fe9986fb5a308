"""Paged attention: the C decode kernel and the pure-torch path agree with plain causal attention."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from llmserve.model import attention
from llmserve.model.attention import (
    AttentionMetadata,
    LayerKVCache,
    allocate_kv_cache,
    paged_attention,
    store_kv,
)
from llmserve.model.kernels import paged_decode_attention
from llmserve.runner.input_batch import build_inputs
from tests.engine_helpers import fake_requests

HEADS, KV_HEADS, DIM, BLOCK = 6, 2, 16, 4


def _reference(q, k, v, start):
    """Causal attention for one sequence whose queries begin at absolute position `start`."""
    qlen, klen = q.shape[0], k.shape[0]
    mask = torch.arange(klen).unsqueeze(0) <= (start + torch.arange(qlen)).unsqueeze(1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask, enable_gqa=True)
    return out.transpose(0, 1)


def _run(history: list[int], new: list[int], use_kernel: bool, monkeypatch, dtype: torch.dtype = torch.float32,
         dim: int = DIM, block: int = BLOCK, heads: int = HEADS, kv_heads: int = KV_HEADS):
    """Fill the cache with `history[i]` tokens per sequence, then attend `new[i]` more; compare."""
    gen = torch.Generator().manual_seed(0)
    cache = allocate_kv_cache(1, kv_heads, dim, 256, block, dtype, "cpu")[0]
    totals = [h + n for h, n in zip(history, new, strict=True)]
    keys = [torch.randn(t, kv_heads, dim, generator=gen).to(dtype) for t in totals]
    values = [torch.randn(t, kv_heads, dim, generator=gen).to(dtype) for t in totals]
    queries = [torch.randn(n, heads, dim, generator=gen).to(dtype) for n in new]
    requests = fake_requests(totals, shuffle_blocks=True, block_size=block)
    for r, h in zip(requests, history, strict=True):
        r.num_computed_tokens = h
        # Earlier steps wrote the history into the cache.
        slots = torch.tensor([r.block_ids[p // block] * block + p % block for p in range(h)], dtype=torch.long)
        idx = int(r.request_id)
        cache.key[:, slots] = keys[idx][:h].transpose(0, 1)
        cache.value[:, slots] = values[idx][:h].transpose(0, 1)
    scheduled = sorted(zip(requests, new, strict=True), key=lambda item: item[1] != 1)
    inputs = build_inputs(scheduled, block, torch.device("cpu"))
    order = [int(r.request_id) for r, _ in scheduled]
    q = torch.cat([queries[i] for i in order])
    k = torch.cat([keys[i][history[i]:] for i in order])
    v = torch.cat([values[i][history[i]:] for i in order])
    if not use_kernel:
        monkeypatch.setattr(attention, "paged_decode_attention", lambda *_: None)
    store_kv(k, v, cache, inputs.attention.slot_mapping)
    out = paged_attention(q, cache, inputs.attention, dim ** -0.5)
    assert out.dtype == dtype
    # bf16 inputs are exact in float32; the bf16 output carries one rounding (8 mantissa bits).
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    row = 0
    for i in order:
        expected = _reference(queries[i].float(), keys[i].float(), values[i].float(), history[i])
        torch.testing.assert_close(out[row:row + new[i]].float(), expected, atol=tol, rtol=tol)
        row += new[i]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_kernel", [True, False])
def test_mixed_decode_and_prefill_batch(use_kernel, dtype, monkeypatch):
    if use_kernel and paged_decode_attention(str(dtype).removeprefix("torch.")) is None:
        pytest.skip("no C compiler")
    _run(history=[5, 0, 17, 3, 0, 30], new=[1, 7, 1, 4, 1, 1], use_kernel=use_kernel, monkeypatch=monkeypatch,
         dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_only_batch_with_very_different_lengths(dtype, monkeypatch):
    _run(history=[0, 1, 63, 120], new=[1, 1, 1, 1], use_kernel=True, monkeypatch=monkeypatch, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("dim", "block", "heads", "kv_heads"),
                         [(64, 16, 9, 3), (128, 16, 8, 2), (64, 8, 6, 1), (80, 32, 4, 4), (96, 4, 10, 2),
                          (72, 16, 4, 2)])
def test_decode_kernel_head_dims_and_block_sizes(dim, block, heads, kv_heads, dtype, monkeypatch):
    """Real models' head dims (64, 128 and others), runs of 16 keys that end mid-block or span
    several small blocks, group sizes 1 to 4; histories of every remainder modulo 16."""
    if paged_decode_attention(str(dtype).removeprefix("torch.")) is None:
        pytest.skip("no C compiler")
    _run(history=[0, 1, 15, 16, 17, 40, 133], new=[1] * 7, use_kernel=True, monkeypatch=monkeypatch,
         dtype=dtype, dim=dim, block=block, heads=heads, kv_heads=kv_heads)


def test_bf16_kernel_is_the_one_used(monkeypatch):
    calls = []
    real = attention.paged_decode_attention

    def spy(kv_dtype="float32"):
        calls.append(kv_dtype)
        return real(kv_dtype)

    monkeypatch.setattr(attention, "paged_decode_attention", spy)
    if real("bfloat16") is None:
        pytest.skip("no C compiler")
    _run(history=[9], new=[1], use_kernel=True, monkeypatch=monkeypatch, dtype=torch.bfloat16)
    assert calls == ["bfloat16"]


def test_kv_layout_types():
    caches = allocate_kv_cache(2, KV_HEADS, DIM, 8, BLOCK, torch.float32, "cpu")
    assert len(caches) == 2 and isinstance(caches[0], LayerKVCache)
    assert caches[0].key.shape == (KV_HEADS, 8 * BLOCK, DIM) and float(caches[0].key.abs().sum()) == 0.0
    assert AttentionMetadata.__dataclass_fields__.keys() >= {"slot_mapping", "groups"}
