"""FLOPs and bytes each part of a step needs, computed from the model's shapes and the step's batch.

These are analytical, not counted by the hardware: the least work each part must do, with every
weight and activation read or written once. A part that reads more (a gather of KV blocks, a
float32 copy of a bf16 tensor) shows it as a lower share of the roofline.
- linears: 2*M*N*K FLOPs for M tokens through an N x K weight; bytes = the weights as stored
  (quantized ones at their packed size) + the input and output activations;
- attention: 4 * heads * head_dim FLOPs per (query, key) pair a causal mask allows (QK^T and PV);
  bytes = each sequence's keys and values once per layer + queries and outputs;
- rope + KV store: the q and k rows rotated, k and v written to the pool;
- norms, activations, embedding: their rows read and written once;
- logits: the head's weight + float32 logits; sampling: the float32 logits read once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmserve.config import ModelConfig
from llmserve.profiling import categories as cat
from llmserve.runner.step_batch import StepBatch

_LAYER_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


@dataclass(frozen=True)
class ModelShapes:
    """What the cost model needs to know about a loaded model."""

    config: ModelConfig
    act_bytes: int  # bytes of one activation element (the model's dtype)
    kv_bytes: int  # bytes of one KV pool element
    linear_weight_bytes: int  # every decoder layer's linears, as stored
    linear_macs_per_token: int  # multiply-adds one token takes through them
    head_weight_bytes: int

    @classmethod
    def of(cls, model: nn.Module, dtype: torch.dtype, kv_dtype: torch.dtype) -> ModelShapes:
        config: ModelConfig = model.config
        linears = [layer.get_submodule(path) for layer in model.layers for path in _LAYER_LINEARS]
        head = model.embed_tokens if model.lm_head is None else model.lm_head
        q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        hidden, inter = config.hidden_size, config.intermediate_size
        macs = hidden * (q + 2 * kv) + q * hidden + hidden * 2 * inter + inter * hidden
        return cls(config, _element_size(dtype), _element_size(kv_dtype), sum(_nbytes(m) for m in linears),
                   macs * config.num_layers, _nbytes(head))


def step_costs(shapes: ModelShapes, batch: StepBatch, sampled_rows: int) -> dict[str, Cost]:
    """Cost per category of one step over `batch`, `sampled_rows` of which get logits and a token."""
    c, a = shapes.config, shapes.act_bytes
    tokens, layers, hidden, inter = batch.num_tokens, c.num_layers, c.hidden_size, c.intermediate_size
    q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    linear_act = tokens * (hidden + (q_width + 2 * kv_width) + q_width + hidden + hidden + 2 * inter
                           + inter + hidden) * a
    pairs, keys = _attended_pairs(batch)
    attention = Cost(4.0 * c.num_heads * c.head_dim * pairs * layers,
                     (2.0 * keys * kv_width * shapes.kv_bytes + 2.0 * tokens * q_width * a) * layers)
    rotated = tokens * (q_width + kv_width)
    rope = Cost(6.0 * rotated * layers,
                (2.0 * rotated * a + tokens * kv_width * (a + 2 * shapes.kv_bytes) + tokens * c.head_dim * 4) * layers)
    norm_rows = 2 * layers + 1
    norms = Cost(6.0 * tokens * hidden * norm_rows, 4.0 * tokens * hidden * a * norm_rows)
    if c.qk_norm:
        norms = norms + Cost(4.0 * rotated * layers, 2.0 * rotated * a * layers)
    logits_out = sampled_rows * c.vocab_size * 4.0
    linears = Cost(2.0 * tokens * shapes.linear_macs_per_token, shapes.linear_weight_bytes + linear_act * layers)
    return {
        cat.LINEARS: linears,
        cat.ATTENTION: attention,
        cat.ROPE_KV: rope,
        cat.NORMS: norms,
        cat.ACTIVATIONS: Cost(5.0 * tokens * inter * layers, 3.0 * tokens * inter * a * layers),
        cat.EMBEDDING: Cost(0.0, 2.0 * tokens * hidden * a),
        cat.LOGITS: Cost(2.0 * sampled_rows * hidden * c.vocab_size,
                         shapes.head_weight_bytes + sampled_rows * hidden * a + logits_out),
        cat.SAMPLING: Cost(0.0, logits_out),
    }


def _attended_pairs(batch: StepBatch) -> tuple[float, float]:
    """(query-key pairs the causal mask allows, keys read), summed over the batch's sequences."""
    pairs = keys = 0.0
    for query_len, seq_len in zip(batch.query_lens.tolist(), batch.seq_lens.tolist(), strict=True):
        first = seq_len - query_len + 1  # keys the step's first query sees
        pairs += query_len * (first + seq_len) / 2
        keys += seq_len
    return pairs, keys


def _nbytes(module: nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
