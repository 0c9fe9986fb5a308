"""Once the server is ready, its KV pool becomes resident: RSS does not creep up as blocks are first used."""

from __future__ import annotations

import time

import httpx
import pytest
import torch

from llmserve.engine.async_engine import AsyncEngine
from llmserve.model.memory import mapped_tensor, populate
from tests.model.test_memory import resident_pages
from tests.server.live_server import live_server


def test_the_kv_pool_is_resident_after_start_and_requests_still_work(chat_model_path):
    engine = AsyncEngine.from_args(str(chat_model_path), max_model_len=256, num_kv_blocks=2048, block_size=16)
    try:
        caches = engine.engine.runner.kv_caches
        tensors = [t for c in caches for t in (c.key, c.value)]
        if not populate(mapped_tensor((1024,), torch.float32, huge_pages=False)):
            pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14): the pool stays lazy")
        with live_server(engine) as live:
            deadline = time.monotonic() + 60  # made resident on a worker thread after /health turns 200
            while time.monotonic() < deadline:
                counts = [resident_pages(t) for t in tensors]
                if all(resident == total for resident, total in counts):
                    break
                time.sleep(0.05)
            assert all(resident == total for resident, total in counts)
            body = {"model": "tiny-chat", "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0}
            response = httpx.post(live.base_url + "/completions", json=body, timeout=60)
            assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4
    finally:
        engine.shutdown()
