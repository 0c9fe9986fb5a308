"""Sizing the KV pool from the GPU: what is left of `utilization` x its memory after the weights, the
largest step's activations and what CUDA itself holds (vLLM's --gpu-memory-utilization)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from llmserve.backends.base import KVCacheSpec
from llmserve.config import SchedulerConfig
from llmserve.engine.scheduler_output import SamplingInputs, ScheduledSequence, SchedulerOutput
from llmserve.runner.sampler import Sampler
from llmserve.runner.step_batch import build_step_batch
from llmserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llmserve.backends.cuda import CudaBackend

logger = logging.getLogger(__name__)

# CUDA graphs keep their own memory pool; decode activations are small next to a prefill step's.
GRAPH_RESERVE_FRACTION = 0.02


@torch.inference_mode()
def profile_kv_budget(backend: CudaBackend, model: nn.Module, spec: KVCacheSpec, sched: SchedulerConfig,
                      utilization: float) -> int:
    device = backend.device
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    scratch = _largest_step(backend, model, spec, sched)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - scratch  # the scratch pool is the real pool's to take
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    outside_torch = total - free - torch.cuda.memory_reserved(device)  # the CUDA context, cuBLAS, NCCL...
    budget = int(total * (utilization - GRAPH_RESERVE_FRACTION)) - peak - max(outside_torch, 0)
    logger.info("GPU memory: %.1f GiB total, %.1f GiB at the largest step, %.1f GiB outside torch: "
                "%.1f GiB for the KV pool at utilization %.2f", total / 2**30, peak / 2**30,
                outside_torch / 2**30, budget / 2**30, utilization)
    if budget <= 0:
        raise ValueError(f"no GPU memory is left for the KV pool at --gpu-memory-utilization {utilization}; "
                         "raise it, or lower --max-num-batched-tokens")
    return budget


def _largest_step(backend: CudaBackend, model: nn.Module, spec: KVCacheSpec, sched: SchedulerConfig) -> int:
    """One forward at the token budget, with logits and sampling for the most sequences a step holds,
    on a scratch KV pool just large enough for it; returns the scratch pool's bytes."""
    tokens = sched.max_num_batched_tokens
    lengths = [min(sched.max_model_len, tokens - done) for done in range(0, tokens, sched.max_model_len)]
    num_sampled = min(sched.max_num_seqs, tokens)
    sequences, next_block = [], 0
    for i, length in enumerate(lengths):
        blocks = list(range(next_block, next_block + -(-length // spec.block_size)))
        next_block += len(blocks)
        sampling = SamplingInputs(SamplingParams(), [], [], None, []) if i < num_sampled else None
        sequences.append(ScheduledSequence([0] * length, 0, blocks, sampling))
    caches = backend.allocate_kv_cache(spec, next_block)
    hidden = backend.forward(model, build_step_batch(SchedulerOutput(sequences), spec.block_size), caches)
    rows = hidden.new_zeros(num_sampled, hidden.shape[-1])  # as many sampled rows as a step can have
    logits = model.compute_logits(rows)
    # The sampler's costliest path: penalties, top-k/top-p sorting, logprobs, a random draw.
    costly = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, repetition_penalty=1.1, logprobs=20)
    Sampler(seed=0).sample(logits, [costly] * num_sampled, [[0]] * num_sampled, [[0]] * num_sampled,
                           [None] * num_sampled, [[]] * num_sampled)
    return next_block * spec.bytes_per_block
