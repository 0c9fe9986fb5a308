"""Building blocks shared by every Llama-family model: RMSNorm, rotary embedding, fused linears."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from llmserve.config import ModelConfig
from llmserve.model.layer_ops import (
    PackedWeight,
    linear,
    logits_linear,
    pack_for_amx,
    rms_norm,
    silu_and_mul,
    wants_packed,
    wants_packed_logits,
)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)[0]

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the residual add fused into the norm. `residual`
        may be overwritten with the sum."""
        out, total = rms_norm(x, self.weight, self.eps, residual)
        assert total is not None
        return out, total


def rope_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    # fp32 arithmetic on purpose: it is what HF does, and positions in the thousands amplify any difference.
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / float(scaling["factor"])
    return _llama3_frequencies(inv_freq, scaling)


def _llama3_frequencies(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between blended smoothly.
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(is_medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables indexed by absolute position (HF's rotate-half layout)."""

    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        inv_freq = rope_inverse_frequencies(config)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [T, 1, D/2], looked up once per forward and shared by every layer."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


class Linear(nn.Module):
    """nn.Linear without its random init: weights always come from a checkpoint, and nn.init on
    the meta device drags in torch._dynamo (2 s of start-up)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.packed: PackedWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(self, x, self.weight, self.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """As the LM head: float32 out, accumulated in float32 (see layer_ops.logits_linear)."""
        return project_logits(self, x, self.weight, self.bias)


def project(module: Linear | MergedLinear | Embedding, x: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias, packing the weight for the AMX kernel on the first batch that can use it."""
    if wants_packed(x):
        module.packed = pack_for_amx(weight, module.packed)
    return linear(x, weight, bias, module.packed)


def project_logits(module: Linear | Embedding, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """`project` for the LM head: float32 logits (layer_ops.logits_linear)."""
    if wants_packed_logits(x):
        module.packed = pack_for_amx(weight, module.packed)
    return logits_linear(x, weight, bias, module.packed)


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))
        self.packed: PackedWeight | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    def linear(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tied LM head: hidden states times the embedding matrix."""
        return project(self, hidden, self.weight, None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tied LM head's float32 logits (see layer_ops.logits_linear)."""
        return project_logits(self, hidden, self.weight, None)


class MergedLinear(nn.Module):
    """One weight matrix holding several projections stacked on the output dim (qkv, gate_up).

    One matmul instead of three keeps small-batch decode closer to the matmul roofline.
    """

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool) -> None:
        super().__init__()
        self.out_sizes = out_sizes
        self.weight = nn.Parameter(torch.empty(sum(out_sizes), in_features))
        self.bias = nn.Parameter(torch.zeros(sum(out_sizes))) if bias else None
        self.packed: PackedWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(self, x, self.weight, self.bias)


class GatedMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up_proj = MergedLinear(hidden, [intermediate, intermediate], bias=False)
        self.down_proj = Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))
