"""Which dtype torch's low-bit CPU kernels should see."""

from __future__ import annotations

import torch


def kernel_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """Activations for the int8/int4 weight kernels: bf16 in place of fp32 on CPU, where torch's fp32
    path of `_weight_int8pack_mm` is ~9x slower than its bf16 one (measured here at 1 row)."""
    if torch.device(device).type == "cpu" and dtype == torch.float32:
        return torch.bfloat16
    return dtype


def aligned(tensor: torch.Tensor, alignment: int = 64) -> torch.Tensor:
    """`tensor`, copied when its data does not start on an `alignment`-byte boundary.

    torch's `_weight_int8pack_mm` crashes (SIGSEGV) on a misaligned weight, and tensors read
    from a memory-mapped safetensors file start wherever the file's header puts them.
    """
    if tensor.device.type != "cpu" or tensor.data_ptr() % alignment == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)
