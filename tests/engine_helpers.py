"""Helpers that drive our model through the real paged-KV path for logit comparisons."""

from __future__ import annotations

from collections import OrderedDict

import torch

from llmserve.backends.base import AttentionBackend, KVCacheSpec
from llmserve.backends.select import select_backend
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.request import Request
from llmserve.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from llmserve.runner.step_batch import build_step_batch
from llmserve.sampling_params import SamplingParams


def step_of(scheduled: list[tuple[Request, int]]) -> SchedulerOutput:
    """The runner's message for computing `n` more tokens of each request (no sampling)."""
    return SchedulerOutput([ScheduledSequence(r.token_slice(r.num_computed_tokens, r.num_computed_tokens + n),
                                              r.num_computed_tokens, r.block_ids, None) for r, n in scheduled])


def paged_logits(loaded, prompts: list[list[int]], chunk: int | None = None, block_size: int = 4,
                 backend: AttentionBackend | None = None, device: str = "cpu") -> list[torch.Tensor]:
    """Logits for every position of every prompt, all prompts in one batch (optionally chunked),
    through `backend`, by default the backend of `device` (the model's)."""
    cfg = loaded.config
    backend = backend or select_backend(device)
    manager = BlockManager(256, block_size)
    dtype = next(loaded.model.parameters()).dtype
    caches = backend.allocate_kv_cache(KVCacheSpec(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, block_size, dtype),
                                       256)
    requests = [Request(str(i), str(i), 0, list(p), SamplingParams(), 16, ()) for i, p in enumerate(prompts)]
    logits: list[list[torch.Tensor]] = [[] for _ in prompts]
    with torch.inference_mode():
        while any(r.num_pending_tokens for r in requests):
            scheduled = []
            for r in requests:
                if r.num_pending_tokens:
                    n = min(r.num_pending_tokens, chunk or r.num_pending_tokens)
                    manager.allocate(r, n)
                    scheduled.append((r, n))
            scheduled.sort(key=lambda item: item[1] != 1)
            batch = build_step_batch(step_of(scheduled), block_size, all_logits=True)
            all_logits = loaded.model.compute_logits(backend.forward(loaded.model, batch, caches)).float().cpu()
            row = 0
            for r, n in scheduled:
                logits[int(r.request_id)].append(all_logits[row:row + n])
                row += n
                r.num_computed_tokens += n
    return [torch.cat(chunks) for chunks in logits]


def fake_requests(lengths: list[int], block_size: int = 4, shuffle_blocks: bool = False,
                  num_blocks: int = 256) -> list[Request]:
    """Requests holding blocks for `lengths` tokens, optionally scattered across the pool."""
    manager = BlockManager(num_blocks, block_size)
    if shuffle_blocks:
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(1)).tolist()
        manager._free = OrderedDict.fromkeys(order)
    requests = []
    for i, n in enumerate(lengths):
        r = Request(str(i), str(i), 0, list(range(3, 3 + n)), SamplingParams(), 16, ())
        manager.allocate(r, n)
        requests.append(r)
    return requests
