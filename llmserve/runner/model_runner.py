"""Runs one engine step on the device: inputs -> one forward -> logits -> sampled tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmserve.config import ModelConfig
from llmserve.engine.request import Request
from llmserve.model.attention import LayerKVCache, allocate_kv_cache
from llmserve.model.memory import populate
from llmserve.runner.input_batch import build_inputs
from llmserve.runner.sampler import Sampler, TokenLogprobs


@dataclass
class SampledToken:
    request: Request
    token_id: int
    logprobs: TokenLogprobs | None


class ModelRunner:
    def __init__(self, model: nn.Module, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device, seed: int = 0) -> None:
        self.model = model
        self.config = config
        self.block_size = block_size
        self.device = device
        self.kv_caches: list[LayerKVCache] = allocate_kv_cache(
            config.num_layers, config.num_kv_heads, config.head_dim, num_blocks, block_size, dtype, device)
        self.sampler = Sampler(seed=seed)

    def make_kv_cache_resident(self) -> int:
        """Fault a CPU KV pool in now (see memory.populate); the bytes made resident, 0 where none."""
        tensors = [t for cache in self.kv_caches for t in (cache.key, cache.value)]
        return sum(t.numel() * t.element_size() for t in tensors if populate(t))

    @torch.inference_mode()
    def execute(self, scheduled: list[tuple[Request, int]]) -> list[SampledToken]:
        inputs = build_inputs(scheduled, self.block_size, self.device)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.attention)
        requests = inputs.sampled_requests
        if not requests:
            return []
        logits = self.model.compute_logits(hidden.index_select(0, inputs.logits_indices))
        result = self.sampler.sample(
            logits,
            [r.params for r in requests],
            [r.prompt_token_ids for r in requests],
            [r.output_token_ids for r in requests],
            [r.generator for r in requests],
            [_blocked_ids(r) for r in requests],
        )
        return [SampledToken(r, t, lp) for r, t, lp in zip(requests, result.token_ids, result.logprobs, strict=True)]


def _blocked_ids(request: Request) -> list[int]:
    """Tokens that would end the request before min_tokens is reached."""
    if len(request.output_token_ids) >= request.params.min_tokens:
        return []
    return list(request.eos_token_ids) + list(request.params.stop_token_ids or [])  # eos is () with ignore_eos
