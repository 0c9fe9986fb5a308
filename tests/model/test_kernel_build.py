"""Loading our C kernels must not change how the rest of the process computes."""

from __future__ import annotations

import pytest
import torch

from llmserve.model import kernels

SOURCES = ["paged_attention.c", "layer_ops.c", "amx_linear.c", "skinny_linear.c", "int8_rows.c"]


def test_loading_every_kernel_keeps_subnormal_floats():
    # Built with -ffast-math; linked with it, gcc's crtfastmath.o would set flush-to-zero for the
    # whole process as the library loads, and torch would turn 1e-40 into 0.
    loaded = [kernels._library(source) for source in SOURCES]
    if not any(loaded):
        pytest.skip("no C compiler, or LLMSERVE_NO_KERNELS set")
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert (tiny * 1.0).item() == pytest.approx(1e-40, rel=1e-3)
    assert (tiny / 2).item() > 0
