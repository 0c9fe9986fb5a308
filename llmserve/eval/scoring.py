"""Next-token scores over a text: the log-likelihood of each token and the model's top-1 guess."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmserve.backends.base import AttentionBackend, KVCacheSpec
from llmserve.config import ModelConfig
from llmserve.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from llmserve.runner.step_batch import build_step_batch

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
def score_text(model: nn.Module, config: ModelConfig, dtype: torch.dtype, backend: AttentionBackend,
               token_ids: list[int], window: int) -> TextScores:
    """Cut the text into windows of `window` tokens; each is one prefill with its own scratch KV
    cache (the engine's pool, and the prefixes it caches, stay untouched). Every token but each
    window's first is scored."""
    num_blocks = -(-window // BLOCK_SIZE)
    spec = KVCacheSpec(config.num_layers, config.num_kv_heads, config.head_dim, BLOCK_SIZE, dtype)
    caches = backend.allocate_kv_cache(spec, num_blocks)
    nll, count, top1 = 0.0, 0, []
    for start in range(0, len(token_ids) - 1, window):
        ids = token_ids[start:start + window]
        if len(ids) < 2:
            break
        window_blocks = list(range(-(-len(ids) // BLOCK_SIZE)))
        step = SchedulerOutput([ScheduledSequence(ids, 0, window_blocks, None)])
        hidden = backend.forward(model, build_step_batch(step, BLOCK_SIZE, all_logits=True), caches)
        logprobs = torch.log_softmax(model.compute_logits(hidden[:-1]), dim=-1)
        targets = torch.tensor(ids[1:], device=backend.device)
        nll -= float(logprobs.gather(1, targets.unsqueeze(1)).sum())
        count += len(ids) - 1
        top1 += logprobs.argmax(dim=-1).tolist()
    return TextScores(nll, count, top1)
