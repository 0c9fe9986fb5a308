"""The profiling step that sizes a GPU's KV pool, run through the Triton path on whatever device is here."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from llmserve.backends.base import KVCacheSpec  # noqa: E402
from llmserve.backends.cuda import CudaBackend  # noqa: E402
from llmserve.backends.cuda_memory import _largest_step  # noqa: E402
from llmserve.config import SchedulerConfig  # noqa: E402
from llmserve.model.loader import load_model  # noqa: E402
from tests.tiny_models import save_tiny_model  # noqa: E402


def test_the_largest_step_runs_on_a_scratch_pool_and_says_its_size(tmp_path):
    save_tiny_model("llama", tmp_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = CudaBackend(device, use_graphs=False)
    loaded = load_model(str(tmp_path), torch.float32, 64, device=str(device), ops=backend)
    cfg = loaded.config
    spec = KVCacheSpec(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 16, torch.float32)
    # 40 tokens at a context of 32: a prompt of 32 and one of 8, three blocks of scratch
    sched = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=40, max_model_len=32)
    with torch.inference_mode():
        scratch = _largest_step(backend, loaded.model, spec, sched)
    assert scratch == 3 * spec.bytes_per_block
