from __future__ import annotations

import pytest

from llmserve.engine.async_engine import AsyncEngine
from llmserve.server.app import ServerConfig
from llmserve.service_classes import ServiceClasses
from tests.server.live_server import MODEL_NAME, live_server
from tests.tiny_models import save_tiny_chat_model

# Targets a tiny model meets under light load; the overload the Prometheus test causes is a full
# queue, whose refusals (shed) count against p0's SLO whatever the machine's speed.
CLASSES = ServiceClasses.from_mapping({"default": "p3", "classes": [
    {"name": "p0", "ttft": "2s", "e2e": "20s", "share": 0.4},
    {"name": "p1", "ttft": "4s", "e2e": "40s", "share": 0.3},
    {"name": "p2", "ttft": "8s", "e2e": "80s", "share": 0.2},
    {"name": "p3", "share": 0.1}]})
MAX_QUEUED = 6


@pytest.fixture(scope="session")
def chat_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-chat")
    save_tiny_chat_model(path)
    return path


@pytest.fixture(scope="module")
def observed(chat_model_path):
    """A live server with every optional signal on (the response cache, a queue limit)."""
    engine = AsyncEngine.from_args(str(chat_model_path), max_model_len=512, block_size=16, num_kv_blocks=256,
                                   max_num_seqs=4, service_classes=CLASSES)
    config = ServerConfig(served_model_name=MODEL_NAME, max_queued_requests=MAX_QUEUED, response_cache="16MiB")
    try:
        with live_server(engine, config) as live:
            yield live
    finally:
        engine.shutdown()
