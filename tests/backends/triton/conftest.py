"""Runs the Triton kernels on CPU tensors under Triton's interpreter when there is no GPU.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any test module
imports llmserve.backends.triton (the tests import it inside their functions).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
