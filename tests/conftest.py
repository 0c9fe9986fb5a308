"""Set-up for the whole test session."""

from __future__ import annotations

import os

import torch

# Without CUDA, Triton kernels run on CPU tensors under Triton's interpreter. It has to be chosen
# before Triton is first imported, as Triton decorates its own library functions then.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
