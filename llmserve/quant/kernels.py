"""Which kernels the quantized modules use: the dtype torch's low-bit CPU kernels should see, and our
Triton kernels on CUDA."""

from __future__ import annotations

import importlib.util
from types import ModuleType

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


# Up to this many rows the Triton weight-only kernels run on CUDA; more go through a dense
# dequantized weight and cuBLAS. Dequantizing costs ~3 bytes of traffic per weight (read int8/int4,
# write and read back bf16), paid once per call and shared by all rows, while the fused kernels
# (fixed tiles, not autotuned) are assumed to reach ~50-60% of cuBLAS's bf16 throughput. On an
# H100/H200 (~4.8 TB/s, ~990 bf16 TFLOP/s) the dequantize pass costs less than that lost throughput
# from roughly 250-350 rows on: decode steps and small mixed batches stay fused, prefill chunks
# (512+ tokens) go dense. An estimate, not a measurement: retune it with a benchmark on the GPU.
TRITON_KERNEL_MAX_ROWS = 256


def triton_kernels(device: torch.device | str) -> ModuleType | None:
    """`llmserve.quant.triton_matmul` for weights on a CUDA GPU with Triton installed, else None.
    Imported only then: importing Triton costs a CPU-only start ~0.15 s."""
    if torch.device(device).type != "cuda" or importlib.util.find_spec("triton") is None:
        return None
    from llmserve.quant import triton_matmul

    return triton_matmul
