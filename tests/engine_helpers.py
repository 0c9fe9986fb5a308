"""Helpers that drive our model through the real paged-KV path for logit comparisons."""

from __future__ import annotations

from collections import OrderedDict

import torch

from llmserve.engine.block_manager import BlockManager
from llmserve.engine.request import Request
from llmserve.model.attention import allocate_kv_cache
from llmserve.runner.input_batch import build_inputs
from llmserve.sampling_params import SamplingParams


def paged_logits(loaded, prompts: list[list[int]], chunk: int | None = None, block_size: int = 4,
                 device: str = "cpu") -> list[torch.Tensor]:
    """Logits for every position of every prompt, all prompts in one batch (optionally chunked);
    `device` is the model's."""
    cfg = loaded.config
    manager = BlockManager(256, block_size)
    caches = allocate_kv_cache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 256, block_size,
                               next(loaded.model.parameters()).dtype, device)
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
            inputs = build_inputs(scheduled, block_size, torch.device(device))
            hidden = loaded.model(inputs.input_ids, inputs.positions, caches, inputs.attention)
            all_logits = loaded.model.compute_logits(hidden).float().cpu()
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
