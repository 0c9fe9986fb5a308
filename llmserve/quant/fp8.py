"""fp8 (e4m3) weights with a scale per output channel, activations scaled per token, on CUDA.

The product runs on fp8 tensor cores through `torch._scaled_mm` with row-wise scales, which needs
compute capability 8.9+; `QuantConfig.check_device` refuses other devices before anything loads.
`_scaled_mm` takes weights whose dims are both multiples of 16; a layer of another shape (an odd
vocabulary) multiplies by its dequantized weight, as w8a8 does where `_int_mm` refuses a shape.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight ≈ q.float() * scale[:, None]; scale is fp32 [N]."""
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / FP8_MAX
    return (w / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


class Fp8Linear(nn.Module):
    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        self._scaled_mm_takes = qweight.shape[0] % 16 == 0 and qweight.shape[1] % 16 == 0
        # Whether _scaled_mm writes float32 here: on CUDA, with row-wise scales, only Hopper's cuBLAS does.
        self._float32_logits = True

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> Fp8Linear:
        q, scale = quantize_fp8(weight)
        return cls(q, scale, bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._scaled_mm_takes:
            return F.linear(x, self.dequantize().to(x.dtype), self.bias)
        out = self._scaled_matmul(x, torch.bfloat16).to(x.dtype)
        return out if self.bias is None else out + self.bias

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """As the LM head: float32 out, straight from the fp8 GEMM where it can write float32."""
        if not self._scaled_mm_takes:
            return F.linear(x.float(), self.dequantize(), None if self.bias is None else self.bias.float())
        out = None
        if self._float32_logits:
            try:
                out = self._scaled_matmul(x, torch.float32)
            except (RuntimeError, ValueError):  # "Only bf16 ... output types are supported for row-wise scaling"
                self._float32_logits = False
        if out is None:
            out = self._scaled_matmul(x, torch.bfloat16).float()
        return out if self.bias is None else out + self.bias

    def _scaled_matmul(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        rows = x.shape[0]
        x32 = x.float()
        x_scale = x32.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12) / FP8_MAX
        xq = (x32 / x_scale).to(FP8)
        pad = -rows % 16  # the fp8 GEMM wants row counts in multiples of 16
        if pad:
            xq = F.pad(xq.view(torch.uint8), (0, 0, 0, pad)).view(FP8)
            x_scale = F.pad(x_scale, (0, 0, 0, pad), value=1.0)
        return torch._scaled_mm(xq, self.qweight.t(), scale_a=x_scale, scale_b=self.weight_scale.view(1, -1),
                                out_dtype=out_dtype)[:rows]

    def dequantize(self) -> torch.Tensor:
        return dequantize_fp8(self.qweight, self.weight_scale)
