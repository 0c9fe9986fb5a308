"""Paged attention through each CPU-runnable backend agrees with plain causal attention: decode and
prefill mixed, blocks out of order, GQA, head dims, block sizes, prefix hits."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from llmserve.backends import cpu
from llmserve.backends.base import AttentionBackend, KVCacheSpec, LayerKVCache
from llmserve.backends.select import select_backend
from llmserve.backends.torch_ref import GroupedMetadata
from llmserve.model.kernels import paged_decode_attention
from llmserve.runner.step_batch import build_step_batch
from tests.engine_helpers import fake_requests, step_of

HEADS, KV_HEADS, DIM, BLOCK = 6, 2, 16, 4


def _reference(q, k, v, start):
    """Causal attention for one sequence whose queries begin at absolute position `start`."""
    qlen, klen = q.shape[0], k.shape[0]
    mask = torch.arange(klen).unsqueeze(0) <= (start + torch.arange(qlen)).unsqueeze(1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask, enable_gqa=True)
    return out.transpose(0, 1)


def _store(backend: AttentionBackend, cache: LayerKVCache, meta, q, k, v) -> torch.Tensor:
    """Writes k and v through the backend's own store (a rotation by angle 0) and returns q."""
    half = q.shape[-1] // 2
    cos, sin = torch.ones(q.shape[0], 1, half), torch.zeros(q.shape[0], 1, half)
    return backend.rotate_and_store(torch.cat((q, k), dim=1), v, cos, sin, cache, meta, q.shape[1])


def run_attention(backend: AttentionBackend, history: list[int], new: list[int], dtype: torch.dtype = torch.float32,
                  dim: int = DIM, block: int = BLOCK, heads: int = HEADS, kv_heads: int = KV_HEADS) -> None:
    """Fill the cache with `history[i]` tokens per sequence, then attend `new[i]` more; compare."""
    gen = torch.Generator().manual_seed(0)
    cache = backend.allocate_kv_cache(KVCacheSpec(1, kv_heads, dim, block, dtype), 256)[0]
    totals = [h + n for h, n in zip(history, new, strict=True)]
    keys = [torch.randn(t, kv_heads, dim, generator=gen).to(dtype) for t in totals]
    values = [torch.randn(t, kv_heads, dim, generator=gen).to(dtype) for t in totals]
    queries = [torch.randn(t, heads, dim, generator=gen).to(dtype) for t in totals]
    requests = fake_requests(totals, shuffle_blocks=True, block_size=block)
    earlier = [(r, h) for r, h in zip(requests, history, strict=True) if h]
    if earlier:  # earlier steps wrote the history into the cache
        meta = backend.build_metadata(build_step_batch(step_of(earlier), block))
        idx = [int(r.request_id) for r, _ in earlier]
        _store(backend, cache, meta, *(torch.cat([t[i][:history[i]] for i in idx]) for t in (queries, keys, values)))
        for r, h in earlier:
            r.num_computed_tokens = h
    scheduled = sorted(zip(requests, new, strict=True), key=lambda item: item[1] != 1)
    meta = backend.build_metadata(build_step_batch(step_of(scheduled), block))
    order = [int(r.request_id) for r, _ in scheduled]
    q, k, v = (torch.cat([t[i][history[i]:] for i in order]) for t in (queries, keys, values))
    out = backend.attention(_store(backend, cache, meta, q, k, v), cache, meta, dim ** -0.5)
    assert out.dtype == dtype
    # bf16 inputs are exact in float32; the bf16 output carries one rounding (8 mantissa bits).
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    row = 0
    for i in order:
        expected = _reference(queries[i][history[i]:].float(), keys[i].float(), values[i].float(), history[i])
        torch.testing.assert_close(out[row:row + new[i]].float().cpu(), expected, atol=tol, rtol=tol)
        row += new[i]


def _backend(name: str, dtype: torch.dtype) -> AttentionBackend:
    if name == "cpu" and paged_decode_attention(str(dtype).removeprefix("torch.")) is None:
        pytest.skip("no C compiler")
    return select_backend("cpu", name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["cpu", "torch"])
def test_mixed_decode_and_prefill_batch(name, dtype):
    run_attention(_backend(name, dtype), history=[5, 0, 17, 3, 0, 30], new=[1, 7, 1, 4, 1, 1], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["cpu", "torch"])
def test_decode_only_batch_with_very_different_lengths(name, dtype):
    run_attention(_backend(name, dtype), history=[0, 1, 63, 120], new=[1, 1, 1, 1], dtype=dtype)


@pytest.mark.parametrize("name", ["cpu", "torch"])
def test_prefix_hits_and_chunks_of_several_prompts(name):
    """Chunks whose cached prefix is longer than the chunk, beside a prompt's first chunk."""
    run_attention(_backend(name, torch.float32), history=[40, 0, 9, 16], new=[5, 12, 23, 16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("dim", "block", "heads", "kv_heads"),
                         [(64, 16, 9, 3), (128, 16, 8, 2), (64, 8, 6, 1), (80, 32, 4, 4), (96, 4, 10, 2),
                          (72, 16, 4, 2), (64, 16, 8, 1)])
def test_decode_kernel_head_dims_and_block_sizes(dim, block, heads, kv_heads, dtype):
    """Real models' head dims (64, 128 and others), runs of 16 keys that end mid-block or span
    several small blocks, group sizes 1 to 8; histories of every remainder modulo 16."""
    run_attention(_backend("cpu", dtype), history=[0, 1, 15, 16, 17, 40, 133], new=[1] * 7,
                  dtype=dtype, dim=dim, block=block, heads=heads, kv_heads=kv_heads)


def test_bf16_kernel_is_the_one_used(monkeypatch):
    calls = []
    real = cpu.paged_decode_attention

    def spy(kv_dtype="float32"):
        calls.append(kv_dtype)
        return real(kv_dtype)

    backend = _backend("cpu", torch.bfloat16)
    monkeypatch.setattr(cpu, "paged_decode_attention", spy)
    run_attention(backend, history=[9], new=[1], dtype=torch.bfloat16)
    assert calls == ["bfloat16"]


def test_kv_layout_of_the_cpu_and_torch_backends():
    for name in ("cpu", "torch"):
        caches = select_backend("cpu", name).allocate_kv_cache(KVCacheSpec(2, KV_HEADS, DIM, BLOCK, torch.float32), 8)
        assert len(caches) == 2 and isinstance(caches[0], LayerKVCache)
        assert caches[0].key.shape == (KV_HEADS, 8 * BLOCK, DIM) and float(caches[0].key.abs().sum()) == 0.0
    assert GroupedMetadata.__dataclass_fields__.keys() >= {"slot_mapping", "groups"}
