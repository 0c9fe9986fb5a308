from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's real (byte-level BPE) tokenizer, without its weights."""
    from llmserve.model.embedded import embedded_model_path
    from llmserve.model.gguf_reader import read_gguf

    return read_gguf(embedded_model_path()).tokenizer
