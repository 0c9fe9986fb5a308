"""Suite-wide setup. Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter;
the switch must be set before any kernel is decorated, so it is set here, before tests import them."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _release_gpu_memory() -> Iterator[None]:
    """On a GPU, each engine sizes its KV pool from the memory left free: an earlier test's engine,
    kept alive only by a reference cycle, would leave the next one none."""
    yield
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
