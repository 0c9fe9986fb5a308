"""The CUDA backend: Triton kernels over a paged KV cache, cuBLAS linears, CUDA graphs for decode.

KV layout of one layer: ``[num_blocks, block_size, num_kv_heads, head_dim]`` for keys and values:
a block's keys for every head lie together, so the decode kernel reads one contiguous run per
block and kv head. The kernels live in backends/triton/ and are tested on the CPU under Triton's
interpreter; this backend runs them on any device Triton runs on (tests build it on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmserve.backends import triton as kernels
from llmserve.backends.base import AttentionBackend, KVCacheSpec, LayerKVCache
from llmserve.backends.cuda_graphs import DecodeGraphs
from llmserve.backends.cuda_memory import profile_kv_budget
from llmserve.config import SchedulerConfig
from llmserve.runner.step_batch import StepBatch


@dataclass
class PagedMetadata:
    slot_mapping: torch.Tensor  # [T] long; -1 for padding rows, which store nothing
    block_table: torch.Tensor  # [B, W] int32
    seq_lens: torch.Tensor  # [B] int32; 0 for padding rows, which attend nothing
    query_start_loc: torch.Tensor  # [B + 1] int32
    max_query_len: int
    decode_only: bool


class CudaBackend(AttentionBackend):
    name = "cuda"

    def __init__(self, device: torch.device, use_graphs: bool = True) -> None:
        super().__init__(device)
        if device.type == "cuda":  # Triton launches, and graphs capture, on the current device
            torch.cuda.set_device(device)
        self.use_graphs = use_graphs and device.type == "cuda"
        self.graphs: DecodeGraphs | None = None
        # Decode steps attend over block tables of this many columns, graphs or not: the decode
        # kernel's split of the context follows the width, so eager and replayed steps sum alike.
        self.decode_table_width: int | None = None
        self._fp32_gemm = device.type == "cuda"  # torch.mm(..., out_dtype=float32); off if this torch lacks it

    # --- memory ----------------------------------------------------------------------
    def allocate_kv_cache(self, spec: KVCacheSpec, num_blocks: int) -> list[LayerKVCache]:
        shape = (num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        return [LayerKVCache(torch.zeros(shape, dtype=spec.dtype, device=self.device),
                             torch.zeros(shape, dtype=spec.dtype, device=self.device), spec.block_size)
                for _ in range(spec.num_layers)]

    def kv_cache_budget(self, model: nn.Module, spec: KVCacheSpec, sched: SchedulerConfig,
                        utilization: float) -> int:
        return profile_kv_budget(self, model, spec, sched, utilization)

    # --- per step ----------------------------------------------------------------------
    def build_metadata(self, batch: StepBatch) -> PagedMetadata:
        table = batch.block_table.to(torch.int32)
        if batch.is_decode_only and self.decode_table_width and table.shape[1] < self.decode_table_width:
            table = torch.nn.functional.pad(table, (0, self.decode_table_width - table.shape[1]))
        return PagedMetadata(
            slot_mapping=batch.slot_mapping.to(self.device, non_blocking=True),
            block_table=table.to(self.device, non_blocking=True),
            seq_lens=batch.seq_lens.to(torch.int32).to(self.device, non_blocking=True),
            query_start_loc=batch.query_start_loc.to(torch.int32).to(self.device, non_blocking=True),
            max_query_len=int(batch.query_lens.max()),
            decode_only=batch.is_decode_only,
        )

    def forward(self, model: nn.Module, batch: StepBatch, kv_caches: list[LayerKVCache]) -> torch.Tensor:
        if self.graphs is not None and batch.is_decode_only and self.graphs.fits(batch):
            hidden = self.graphs.replay(batch)
            if len(batch.logits_indices) == batch.num_seqs:  # every sequence samples: all rows, in order
                return hidden
            return hidden.index_select(0, batch.logits_indices.to(self.device, non_blocking=True))
        return super().forward(model, batch, kv_caches)

    def capture_graphs(self, model: nn.Module, kv_caches: list[LayerKVCache], max_num_seqs: int,
                       max_model_len: int) -> float:
        block_size = kv_caches[0].block_size
        self.decode_table_width = -(-max_model_len // block_size)
        if self.device.type == "cuda":
            self._compile_prefill_kernels(model, kv_caches, block_size)
        if not self.use_graphs:
            return 0.0
        self.graphs = DecodeGraphs(self, model, kv_caches, max_num_seqs, self.decode_table_width, block_size)
        return self.graphs.capture_seconds

    @torch.inference_mode()
    def _compile_prefill_kernels(self, model: nn.Module, kv_caches: list[LayerKVCache], block_size: int) -> None:
        """Prefill tiles of 16, 32 and 64 query rows are separate kernels; compiling each now keeps the
        first short or long prompt from stalling a step for a second. Nothing is stored (slot -1)."""
        for query_len in (9, 20, 40):
            lens = torch.tensor([1, query_len])
            tokens = int(lens.sum())
            batch = StepBatch(input_ids=torch.zeros(tokens, dtype=torch.long),
                              positions=torch.cat((torch.zeros(1, dtype=torch.long), torch.arange(query_len))),
                              slot_mapping=torch.full((tokens,), -1, dtype=torch.long), query_lens=lens,
                              seq_lens=lens, block_table=torch.zeros(2, -(-query_len // block_size), dtype=torch.long),
                              num_decodes=1, logits_indices=torch.tensor([0]), block_size=block_size)
            self.forward(model, batch, kv_caches)

    # --- layer ops -----------------------------------------------------------------------
    def rotate_and_store(self, qk: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         cache: LayerKVCache, meta: PagedMetadata, num_q_heads: int) -> torch.Tensor:
        tokens = qk.shape[0]
        return kernels.rope_and_store(qk, v, cos.reshape(tokens, -1), sin.reshape(tokens, -1), cache.key,
                                      cache.value, meta.slot_mapping, num_q_heads)

    def attention(self, q: torch.Tensor, cache: LayerKVCache, meta: PagedMetadata, scale: float) -> torch.Tensor:
        if meta.decode_only:
            return kernels.decode_attention(q, cache.key, cache.value, meta.block_table, meta.seq_lens, scale)
        return kernels.prefill_attention(q, cache.key, cache.value, meta.block_table, meta.query_start_loc,
                                         meta.seq_lens, meta.max_query_len, scale)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if residual is not None:
            return kernels.rms_norm(x.contiguous(), weight, eps, residual)
        if x.dim() != 2 or not x.is_contiguous():  # per-head q/k norms (Qwen3) see [T, H, D] views
            out, _ = kernels.rms_norm(x.reshape(-1, x.shape[-1]), weight, eps)
            return out.view(x.shape), None
        return kernels.rms_norm(x, weight, eps)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return kernels.silu_and_mul(gate_up)

    def logits(self, module: nn.Module, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self._fp32_gemm and hidden.dtype != torch.float32:
            try:  # cuBLAS accumulates in float32 and writes it: no float32 copy of the head is made
                return torch.mm(hidden, weight.t(), out_dtype=torch.float32)
            except (RuntimeError, TypeError):
                self._fp32_gemm = False
        return super().logits(module, hidden, weight)
