"""int4 weights in groups along the input dim, each group with its own scale and zero point.

A weight is `(q - 8) * scale + zero` with q in [0, 15]; `zero` is the value q = 8 stands for, the
convention of torch's `_weight_int4pack_mm_for_cpu`, so scales and zeros go to the kernel as stored.
On CPU the weights live in that kernel's packed layout (64-row blocks, row j and row j+32 of a
block sharing a byte) when the output dim is a multiple of 64; files, other devices and odd shapes
keep a plain layout (two columns per byte, the even one low). On CUDA our Triton kernel
(triton_matmul.py) reads that plain layout directly; elsewhere, and for wide batches, the module
multiplies by the dequantized weight.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from llmserve.quant.kernels import TRITON_KERNEL_MAX_ROWS, kernel_dtype, triton_kernels

# From this many rows on, dequantizing to a dense matmul beats torch's CPU int4 kernel (prefill chunks).
DENSE_MIN_ROWS = 64


def quantize_int4(weight: torch.Tensor, group_size: int, scale_dtype: torch.dtype = torch.bfloat16
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (uint8 [N, K], values 0..15), scale and zero ([N, K / group] in `scale_dtype`)."""
    rows, cols = weight.shape
    if cols % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide the input dim {cols}")
    w = weight.float().view(rows, cols // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    # Round scale and zero to their stored dtype first, then pick each q against the rounded values.
    scale = ((high - low).clamp(min=1e-8) / 15.0).to(scale_dtype)
    zero = (low + 8.0 * scale.float()).to(scale_dtype)
    q = torch.round((w - zero.float()[..., None]) / scale.float()[..., None] + 8.0).clamp_(0, 15)
    return q.to(torch.uint8).view(rows, cols), scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    rows, cols = q.shape
    groups = scale.shape[1]
    w = (q.float().view(rows, groups, -1) - 8.0) * scale.float()[..., None] + zero.float()[..., None]
    return w.view(rows, cols)


def pack_plain(q: torch.Tensor) -> torch.Tensor:
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)


def unpack_plain(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack((packed & 15, packed >> 4), dim=-1).view(packed.shape[0], -1)


def unpack_cpu_kernel_layout(packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of `_convert_weight_to_int4pack_for_cpu`. The order that kernel stores nibbles in
    depends on the CPU torch runs on (its AVX-512 and AVX2 builds tile differently), so it is read
    off probes packed here rather than assumed."""
    values = torch.empty(rows * cols, dtype=torch.uint8)
    values[_cpu_kernel_nibble_sources(rows, cols)] = _nibbles(packed)
    return values.view(rows, cols)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Every 4-bit value of `packed`, the low nibble of each byte first."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).flatten()


def _cpu_kernel_nibble_sources(rows: int, cols: int) -> torch.Tensor:
    """For each nibble of a packed [rows, cols] weight, the flat index of the value it holds: each
    probe carries one hex digit of every value's own index through the packing."""
    index = torch.arange(rows * cols, dtype=torch.int64)
    sources = torch.zeros_like(index)
    for shift in range(0, max(1, (rows * cols - 1).bit_length()), 4):
        probe = ((index >> shift) & 15).view(rows, cols).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
        sources |= _nibbles(packed).to(torch.int64) << shift
    return sources


class Int4Linear(nn.Module):
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group_size = group_size
        # On CUDA, chosen once: the Triton matmul for narrow batches, its one-pass dequantize for
        # wide ones; both read the plain layout.
        triton = triton_kernels(q.device)
        self._triton_matmul = None if triton is None else triton.int4_matmul
        self._triton_dequantize = None if triton is None else triton.int4_dequantize
        self.kernel_layout = triton is None and q.device.type == "cpu" and self.out_features % 64 == 0
        if self.kernel_layout:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        else:
            packed = pack_plain(q)
        self.register_buffer("qweight", packed)
        # [K / group, N, 2]: the kernel's scales_and_zeros argument.
        scales_and_zeros = torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(kernel_dtype(dtype, q.device)))
        self.register_buffer("bias", None if bias is None else bias.to(dtype))

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, group_size: int,
                   dtype: torch.dtype) -> Int4Linear:
        q, scale, zero = quantize_int4(weight, group_size, kernel_dtype(dtype, weight.device))
        return cls(q, scale, zero, group_size, bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._triton_matmul is not None and x.shape[0] <= TRITON_KERNEL_MAX_ROWS:
            return self._triton_matmul(x, self.qweight, self.scales_and_zeros, self.group_size, self.bias)
        if self.kernel_layout and x.shape[0] < DENSE_MIN_ROWS:
            sz = self.scales_and_zeros
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(sz.dtype), self.qweight, self.group_size, sz)
            out = out.to(x.dtype)
        else:
            out = F.linear(x, self._dense_weight(x.dtype))
        return out if self.bias is None else out + self.bias

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """As an LM head (which int4 never quantizes, VOCAB_PROJECTION): its output widened to float32."""
        return self(x).float()

    def _dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        if self._triton_dequantize is not None:
            return self._triton_dequantize(self.qweight, self.scales_and_zeros, self.group_size, dtype)
        q = self.unpacked()
        scale, zero = self.scales_and_zeros.to(dtype).transpose(0, 1).unbind(-1)
        w = (q.view(self.out_features, -1, self.group_size).to(dtype) - 8) * scale[..., None] + zero[..., None]
        return w.view(self.out_features, self.in_features)

    def unpacked(self) -> torch.Tensor:
        """q as uint8 [N, K] in 0..15, whatever the device layout."""
        if self.kernel_layout:
            return unpack_cpu_kernel_layout(self.qweight, self.out_features, self.in_features)
        return unpack_plain(self.qweight)

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zero = self.scales_and_zeros.transpose(0, 1).unbind(-1)
        return scale.contiguous(), zero.contiguous()

    def dequantize(self) -> torch.Tensor:
        return dequantize_int4(self.unpacked(), *self.scales())
