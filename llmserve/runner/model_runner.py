"""Runs one engine step on the device: the scheduler's message -> one forward -> logits -> tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmserve.backends.base import AttentionBackend, KVCacheSpec, LayerKVCache
from llmserve.engine.outputs import TokenLogprobs
from llmserve.engine.scheduler_output import SchedulerOutput
from llmserve.runner.sampler import Sampler
from llmserve.runner.step_batch import build_step_batch


@dataclass(frozen=True)
class SampledToken:
    seq_index: int  # the sequence's place in SchedulerOutput.sequences
    token_id: int
    logprobs: TokenLogprobs | None


class ModelRunner:
    def __init__(self, model: nn.Module, backend: AttentionBackend, kv_spec: KVCacheSpec, num_blocks: int,
                 seed: int = 0) -> None:
        self.model = model
        self.backend = backend
        self.block_size = kv_spec.block_size
        self.kv_caches: list[LayerKVCache] = backend.allocate_kv_cache(kv_spec, num_blocks)
        self.sampler = Sampler(seed=seed)

    def make_kv_cache_resident(self) -> int:
        """Fault a lazily mapped KV pool in now (see memory.populate); the bytes made resident."""
        return self.backend.make_resident(self.kv_caches)

    def capture_graphs(self, max_num_seqs: int, max_model_len: int) -> float:
        return self.backend.capture_graphs(self.model, self.kv_caches, max_num_seqs, max_model_len)

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput) -> list[SampledToken]:
        batch = build_step_batch(output, self.block_size)
        rows = [i for i, seq in enumerate(output.sequences) if seq.sampling is not None]
        hidden = self.backend.forward(self.model, batch, self.kv_caches)
        if not rows:
            return []
        logits = self.model.compute_logits(hidden)
        inputs = [output.sequences[i].sampling for i in rows]
        result = self.sampler.sample(
            logits,
            [s.params for s in inputs],
            [s.prompt_token_ids for s in inputs],
            [s.output_token_ids for s in inputs],
            [s.generator for s in inputs],
            [s.blocked_token_ids for s in inputs],
            [s.guide for s in inputs],
        )
        return [SampledToken(i, t, lp) for i, t, lp in zip(rows, result.token_ids, result.logprobs, strict=True)]
