"""Two fixes to Triton's CPU interpreter (checked on triton 3.9), applied only when it runs.

The interpreter holds bfloat16 as raw uint16 bits (numpy has no bf16), and
- its tl.dot hands those bits to numpy's matmul, which multiplies them as integers;
- its float32 -> bfloat16 cast drops the low mantissa bits (rounds toward zero), where the GPU and
  torch round to nearest even.
Without these the interpreter's bf16 results are garbage or an ulp off, and the tests, which run the
kernels on CPU, could not check bf16 at all. Both patched paths do what the GPU does: bf16 operands
are exact in float32, so a float32 product of them is what the tensor cores compute with float32
accumulation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton.language as tl

_PATCHED = False


def patch_interpreter() -> None:
    global _PATCHED
    if _PATCHED:
        return
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or not hasattr(builder, "cast_impl") or not hasattr(builder, "create_dot"):
        return  # another interpreter than the one these fixes were written for: leave it alone
    original_cast = builder.cast_impl
    original_dot = builder.create_dot

    def cast_impl(self: Any, src: Any, dst_type: Any) -> Any:
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            values = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            bits = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return interpreter.TensorHandle(bits.reshape(np.shape(src.data)), tl.bfloat16)
        return original_cast(self, src, dst_type)

    def create_dot(self: Any, a: Any, b: Any, d: Any, input_precision: Any, max_num_imprecise_acc: Any) -> Any:
        if a.dtype.scalar == tl.bfloat16:
            a = original_cast(self, a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = original_cast(self, b, tl.float32)
        return original_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.cast_impl = cast_impl
    builder.create_dot = create_dot
    _PATCHED = True
