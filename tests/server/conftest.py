from __future__ import annotations

import pytest

from llmserve.engine.async_engine import AsyncEngine
from llmserve.server.app import ServerConfig
from tests.server.fp32_server import Reference
from tests.server.fp32_server import fp32_engine as fp32_engine_for
from tests.server.live_server import MODEL_NAME, live_server
from tests.timing import classes_without_targets
from tests.tiny_models import save_tiny_chat_model

NUM_BLOCKS = 256
BLOCK_SIZE = 16
MAX_MODEL_LEN = 512


@pytest.fixture(scope="session")
def chat_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-chat")
    save_tiny_chat_model(path)
    return path


@pytest.fixture(scope="session")
def engine(chat_model_path):
    """The default classes without latency targets: no test here may be shed for a slow machine."""
    eng = AsyncEngine.from_args(str(chat_model_path), max_model_len=MAX_MODEL_LEN, block_size=BLOCK_SIZE,
                                num_kv_blocks=NUM_BLOCKS, max_num_seqs=64,
                                service_classes=classes_without_targets())
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def server(engine):
    with live_server(engine, ServerConfig(served_model_name=MODEL_NAME)) as live:
        yield live


@pytest.fixture(scope="session")
def fp32_engine(chat_model_path):
    """The tiny chat model in float32: its numbers can be held to transformers' within 1e-4."""
    eng = fp32_engine_for(chat_model_path)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def fp32_server(fp32_engine):
    with live_server(fp32_engine, ServerConfig(served_model_name=MODEL_NAME)) as live:
        yield live


@pytest.fixture(scope="session")
def reference(chat_model_path):
    return Reference(chat_model_path)
