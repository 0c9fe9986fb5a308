"""Pieces the Triton kernels share: the interpreter switch and a matrix product that survives it."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1, read at import as Triton does)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def mma(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b accumulated in float32.

    UPCAST: the interpreter (triton 3.9) multiplies bfloat16 operands as their raw uint16 bits, so under it
    the operands go to float32 first. A bf16 x bf16 product is exact in float32, so this is the same
    arithmetic the tensor cores do (fp32 accumulate); only the summation order may differ.
    PRECISION: "ieee" for float32 inputs so that they are not silently rounded to tf32 on the GPU.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    return tl.dot(a, b, input_precision=PRECISION)


def dot_precision(dtype: torch.dtype) -> str:
    """float32 attention keeps float32 products (tests compare it near-exactly); 16-bit types ignore this."""
    return "ieee" if dtype == torch.float32 else "tf32"
