"""The CPU backend: our C kernels (llmserve/model/kernels/) where they apply, torch elsewhere.

Same KV layout and grouping as the torch backend; what differs is below: a lazily mapped KV pool,
the decode attention kernel, the fused rope + KV store, RMSNorm and silu * mul kernels, and the
bf16/float32 linears for decode-sized batches (AMX weights packed once per module).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from llmserve.backends import cpu_ops
from llmserve.backends.base import LayerKVCache
from llmserve.backends.torch_ref import AttentionGroup, GroupedMetadata, TorchBackend, sdpa_group_attention
from llmserve.model.kernels import paged_decode_attention
from llmserve.model.memory import mapped_tensor, populate

# torch's CPU flash attention runs a third faster on whole tiles of 16 query rows.
SDPA_TILE_ROWS = 16


class CpuBackend(TorchBackend):
    name = "cpu"

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self._packed: weakref.WeakKeyDictionary[nn.Module, cpu_ops.PackedWeight] = weakref.WeakKeyDictionary()

    def _zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        # An anonymous mapping is zero-filled lazily by the OS, so a multi-GiB pool costs nothing at
        # start-up: page faults are dear on this VM (2-20 us per 4 KiB page), and torch.zeros would
        # take them all before the first request. Plain pages, not huge pages: prefaulting 2 GiB on
        # huge pages took 5.5 s, and huge pages faulted during steps made the offline benchmark 8% slower.
        return mapped_tensor(shape, dtype, huge_pages=False)

    def make_resident(self, kv_caches: list[LayerKVCache]) -> int:
        tensors = [t for cache in kv_caches for t in (cache.key, cache.value)]
        return sum(t.numel() * t.element_size() for t in tensors if populate(t))

    def attend_group(self, q: torch.Tensor, cache: LayerKVCache, group: AttentionGroup, scale: float) -> torch.Tensor:
        if group.max_query_len == 1 and q.dtype == cache.key.dtype:
            kernel = paged_decode_attention(str(q.dtype).removeprefix("torch."))
            if kernel is not None:
                return _decode_kernel(kernel, q[group.start:group.end], cache, group, scale)
        return sdpa_group_attention(q, cache, group, scale, pad_rows_to=SDPA_TILE_ROWS)

    def rotate_and_store(self, qk: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         cache: LayerKVCache, meta: GroupedMetadata, num_q_heads: int) -> torch.Tensor:
        return cpu_ops.rotate_and_store(qk, v, cos, sin, cache, meta.slot_mapping, num_q_heads)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return cpu_ops.rms_norm(x, weight, eps, residual)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return cpu_ops.silu_and_mul(gate_up)

    def linear(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        return cpu_ops.linear(x, weight, bias, self._packed_for(module, x, weight))

    def logits(self, module: nn.Module, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        packed = self._packed_for(module, hidden, weight, cpu_ops.wants_packed_logits(hidden))
        return cpu_ops.logits_linear(hidden, weight, None, packed)

    def _packed_for(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                    wanted: bool | None = None) -> cpu_ops.PackedWeight | None:
        """The AMX packing of `module`'s weight, made on the first batch that can use it."""
        cached = self._packed.get(module)
        if cpu_ops.wants_packed(x) if wanted is None else wanted:
            packed = cpu_ops.pack_for_amx(weight, cached)
            if packed is not None and packed is not cached:
                self._packed[module] = packed
            return packed
        return cached


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
