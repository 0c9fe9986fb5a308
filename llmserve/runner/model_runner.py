"""Runs one engine step on the device: the scheduler's message -> one forward -> logits -> tokens,
and the prompt logprobs and pooled hidden states of the sequences that ask for them."""

from __future__ import annotations

import torch
from torch import nn

from llmserve.backends.base import AttentionBackend, KVCacheSpec, LayerKVCache
from llmserve.engine.scheduler_output import SchedulerOutput
from llmserve.runner.prompt_rows import KeptRows, prompt_logprobs, prompt_targets
from llmserve.runner.sampler import Sampler
from llmserve.runner.step_batch import StepBatch, build_step_batch
from llmserve.runner.step_result import SampledToken, StepResult
from llmserve.spec_decode.verify_rows import VerifyRows

__all__ = ["ModelRunner", "SampledToken", "StepResult"]


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
    def execute(self, output: SchedulerOutput) -> StepResult:
        kept, batch = self.build_step(output)
        hidden = self.backend.forward(self.model, batch, self.kv_caches)  # the kept rows
        result = StepResult()
        rows = [i for i, seq in enumerate(output.sequences) if seq.sampling is not None]
        if rows:
            result.sampled = self._sample(output, kept, hidden, rows)
        for i, seq in enumerate(output.sequences):
            if seq.prompt_logprobs is not None:
                targets = prompt_targets(seq)
                states = hidden[kept.rows(i, len(targets))]
                result.prompt_logprobs[i] = prompt_logprobs(self.model.compute_logits, states, targets,
                                                            seq.prompt_logprobs)
            if seq.pool:
                result.pooled[i] = hidden[kept.rows(i, seq.num_tokens)].float().sum(dim=0)
        return result

    def build_step(self, output: SchedulerOutput) -> tuple[KeptRows, StepBatch]:
        """The rows whose hidden states the step keeps, and its device-neutral inputs (built on the host)."""
        kept = KeptRows.of(output)
        return kept, build_step_batch(output, self.block_size, kept=kept)

    def _sample(self, output: SchedulerOutput, kept: KeptRows, hidden: torch.Tensor,
                rows: list[int]) -> list[SampledToken]:
        seqs = output.sequences
        if any(seqs[i].draft_token_ids for i in rows):
            return self._verify(output, kept, hidden, rows)
        if kept.num_rows != len(rows):  # other rows were kept too: take each sampled sequence's last
            index = [kept.row(i, seqs[i].num_tokens - 1) for i in rows]
            hidden = hidden.index_select(0, torch.tensor(index, device=hidden.device))
        logits = self.model.compute_logits(hidden)
        inputs = [seqs[i].sampling for i in rows]
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

    def _verify(self, output: SchedulerOutput, kept: KeptRows, hidden: torch.Tensor,
                rows: list[int]) -> list[SampledToken]:
        """Sample every verified row (spec_decode/verify_rows.py) and keep each sequence's accepted tokens."""
        plan = VerifyRows.of(output, kept, rows)
        hidden = hidden.index_select(0, torch.tensor(plan.hidden_rows, device=hidden.device))
        result = self.sampler.sample(self.model.compute_logits(hidden), plan.params, plan.prompt_token_ids,
                                     plan.output_token_ids, plan.generators, plan.blocked_token_ids, plan.guides,
                                     plan.draft_token_ids)
        return plan.accepted(result.token_ids, result.logprobs)
