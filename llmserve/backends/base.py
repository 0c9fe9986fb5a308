"""The seam between the model and a device: an attention backend.

A backend is chosen once, when the engine is built (`backends.select`). It owns:
- the KV layout and its allocation;
- the per-step attention metadata, built once per step from a device-neutral `StepBatch`;
- the per-layer calls whose fast form depends on the device: attention, the rotary + KV store,
  RMSNorm, silu * mul, the linears and the float32 LM head;
- how a forward runs: eagerly, or by replaying a captured CUDA graph.

The model calls these through `LayerOps` and never asks which device it is on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from llmserve.config import SchedulerConfig
from llmserve.runner.step_batch import StepBatch


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.block_size * element


@dataclass
class LayerKVCache:
    """One layer's keys and values, in the layout of the backend that allocated them."""

    key: torch.Tensor
    value: torch.Tensor
    block_size: int


class LayerOps(ABC):
    """What a decoder layer asks of its device. The torch forms are the reference."""

    @abstractmethod
    def attention(self, q: torch.Tensor, cache: LayerKVCache, meta: Any, scale: float) -> torch.Tensor:
        """q: [T, Hq, D] for this step's tokens, whose keys and values are already stored. -> [T, Hq, D]"""

    @abstractmethod
    def rotate_and_store(self, qk: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         cache: LayerKVCache, meta: Any, num_q_heads: int) -> torch.Tensor:
        """Rotates q and k ([T, Hq + Hkv, D], HF's rotate-half layout; cos, sin [T, 1, D/2] float32),
        writes k and v ([T, Hkv, D]) to their slots, and returns q as a new [T, Hq, D] tensor."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight * h / rms(h), h) where h = x + residual, or x without one. Normalises in float32
        as HF does. A backend may write h into `residual`; callers use the returned h either way."""
        if residual is not None:
            x = residual = x + residual
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(x.dtype), residual

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up for [T, 2 * I] rows holding gate then up."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def linear(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        """x @ weight.T + bias for `module`'s weight (a backend may keep a repacked copy per module)."""
        return F.linear(x, weight, bias)

    def logits(self, module: nn.Module, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The LM head: float32 logits, accumulated in float32 whatever the model's dtype, so that
        near-ties between tokens are decided as in float32 rather than by bf16 rounding."""
        return F.linear(hidden.float(), weight.float())


class AttentionBackend(LayerOps):
    name: str

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @abstractmethod
    def allocate_kv_cache(self, spec: KVCacheSpec, num_blocks: int) -> list[LayerKVCache]:
        """Zeroed caches, one per layer: masked-out slots still meet zero weights, and 0 * NaN is NaN."""

    @abstractmethod
    def build_metadata(self, batch: StepBatch) -> Any:
        """This step's attention metadata, on the device; built once and shared by every layer."""

    def forward(self, model: nn.Module, batch: StepBatch, kv_caches: list[LayerKVCache]) -> torch.Tensor:
        """Hidden states after the final norm, for the rows in `batch.logits_indices`."""
        hidden = model(batch.input_ids.to(self.device, non_blocking=True),
                       batch.positions.to(self.device, non_blocking=True), kv_caches, self.build_metadata(batch))
        return hidden.index_select(0, batch.logits_indices.to(self.device, non_blocking=True))

    def capture_graphs(self, model: nn.Module, kv_caches: list[LayerKVCache], max_num_seqs: int,
                       max_model_len: int) -> float:
        """Capture whatever this backend replays later; the seconds it took (0 where nothing is)."""
        return 0.0

    def kv_cache_budget(self, model: nn.Module, spec: KVCacheSpec, sched: SchedulerConfig,
                        utilization: float) -> int:
        """Bytes the KV pool may take, measured on the device (backends that can profile memory)."""
        raise ValueError(f"the {self.name} backend cannot size the KV pool from the device's memory; "
                         "give kv_cache_memory")

    def make_resident(self, kv_caches: list[LayerKVCache]) -> int:
        """Fault a lazily mapped KV pool in now; the bytes made resident (0 where nothing was lazy)."""
        return 0

    def describe(self) -> str:
        return f"{self.name} backend on {self.device}"
