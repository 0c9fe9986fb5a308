"""Suite-wide setup. Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter;
the switch must be set before any kernel is decorated, so it is set here, before tests import them."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
