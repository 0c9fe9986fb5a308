"""Next-token scores over a text: the log-likelihood of each token and the model's top-1 guess."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmserve.config import ModelConfig
from llmserve.engine.request import Request
from llmserve.model.attention import allocate_kv_cache
from llmserve.runner.input_batch import build_inputs
from llmserve.sampling_params import SamplingParams

BLOCK_SIZE = 16


@dataclass
class TextScores:
    nll_sum: float  # summed negative log-likelihood of the scored tokens
    num_scored: int
    top1: list[int]  # the model's argmax after each scored position

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.num_scored)


@torch.inference_mode()
def score_text(model: nn.Module, config: ModelConfig, dtype: torch.dtype, device: torch.device,
               token_ids: list[int], window: int) -> TextScores:
    """Cut the text into windows of `window` tokens; each is one prefill with its own scratch KV
    cache (the engine's pool, and the prefixes it caches, stay untouched). Every token but each
    window's first is scored."""
    num_blocks = -(-window // BLOCK_SIZE)
    caches = allocate_kv_cache(config.num_layers, config.num_kv_heads, config.head_dim, num_blocks, BLOCK_SIZE,
                               dtype, device)
    nll, count, top1 = 0.0, 0, []
    for start in range(0, len(token_ids) - 1, window):
        ids = token_ids[start:start + window]
        if len(ids) < 2:
            break
        request = Request("score", "score", 0, ids, SamplingParams(), 1, ())
        request.block_ids = list(range(-(-len(ids) // BLOCK_SIZE)))
        inputs = build_inputs([(request, len(ids))], BLOCK_SIZE, device)
        hidden = model(inputs.input_ids, inputs.positions, caches, inputs.attention)
        logprobs = torch.log_softmax(model.compute_logits(hidden[:-1]).float(), dim=-1)
        targets = torch.tensor(ids[1:], device=device)
        nll -= float(logprobs.gather(1, targets.unsqueeze(1)).sum())
        count += len(ids) - 1
        top1 += logprobs.argmax(dim=-1).tolist()
    return TextScores(nll, count, top1)
