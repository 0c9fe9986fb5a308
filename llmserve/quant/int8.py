"""int8 weights, symmetric per output channel: weight-only (int8) and with dynamic int8 activations (w8a8).

Weight-only decode uses torch's `_weight_int8pack_mm` on CPU, which reads a quarter of fp32's bytes,
and our Triton kernel (triton_matmul.py) on CUDA. With many rows a dense bf16/fp32 matmul on the
dequantized weight is faster on CPU (measured: at 256 rows the int8 kernel is ~10x slower than
bf16 here), so wide prefill batches take that path; on CUDA from `TRITON_KERNEL_MAX_ROWS` rows on.
w8a8 multiplies int8 by int8 with `torch._int_mm` on either device.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from llmserve.backends.cpu_ops import chunked_logits_linear
from llmserve.model.kernels import int8_row_kernels
from llmserve.quant.kernels import TRITON_KERNEL_MAX_ROWS, aligned, kernel_dtype, triton_kernels

# At most this many rows go through the weight-only kernel; more are cheaper dequantized.
WEIGHT_ONLY_KERNEL_MAX_ROWS = 16
# Output channels dequantized at a time on the dense path, so a large vocabulary head never
# exists whole in the activation dtype (a 128k x 4096 head would be 1 GiB in bf16).
DENSE_CHUNK_CHANNELS = 8192


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight ≈ q * scale[:, None] with q in [-127, 127]; scale is fp32 [N]."""
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token (per-row) symmetric quantization of activations: x ≈ q * scale."""
    x32 = x.float()
    amax = x32.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-8)
    # torch computes 127 / amax as reciprocal(amax) * 127 (int8_rows.c does the same). bf16
    # activations often land exactly on .5 steps, so this rounding decides many ties: with a
    # correctly rounded 127 / amax instead, the embedded model's w8a8 perplexity is +2.30%, not +1.85%.
    q = torch.round(x32 * (127.0 / amax)).to(torch.int8)
    return q, amax / 127.0


def int_mm_takes(qweight: torch.Tensor) -> bool:
    """Whether `torch._int_mm` takes this weight: on CUDA (cuBLASLt) both of its dims must be
    multiples of 8; the CPU kernel takes any shape."""
    return qweight.device.type != "cuda" or (qweight.shape[0] % 8 == 0 and qweight.shape[1] % 8 == 0)


def _int8_dynamic_matmul_torch(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                               bias: torch.Tensor | None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    rows = x.shape[0]
    xq, x_scale = quantize_rows_int8(x)
    if xq.is_cuda and rows <= 16:  # cuBLASLt's int8 path wants more than 16 rows
        xq = F.pad(xq, (0, 0, 0, 17 - rows))
    acc = torch._int_mm(xq, qweight.t())[:rows]
    out = (acc.float() * x_scale * scale).to(out_dtype or x.dtype)
    return out if bias is None else out + bias


def _int8_dynamic_matmul_fused(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                               bias: torch.Tensor | None, quantize, epilogue) -> torch.Tensor:
    """The same arithmetic as the torch path, with its two elementwise ends in C
    (llmserve/model/kernels/int8_rows.c)."""
    rows, cols = x.shape
    xq = torch.empty((rows, cols), dtype=torch.int8)
    x_scale = torch.empty(rows, dtype=torch.float32)
    quantize(x.data_ptr(), rows, cols, xq.data_ptr(), x_scale.data_ptr())
    acc = torch._int_mm(xq, qweight.t())
    out = torch.empty((rows, qweight.shape[0]), dtype=x.dtype)
    epilogue(acc.data_ptr(), x_scale.data_ptr(), scale.data_ptr(), None if bias is None else bias.data_ptr(),
             rows, qweight.shape[0], out.data_ptr())
    return out


class Int8Matmul(nn.Module):
    """Holds int8 weights and multiplies by them: the part Int8Linear and Int8Embedding share."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, dynamic: bool) -> None:
        super().__init__()
        self.register_buffer("qweight", aligned(qweight.contiguous()))
        self.register_buffer("weight_scale", scale.float())
        # Copies in the dtypes the kernels take, made once rather than at every call.
        self.register_buffer("_scale_kernel", aligned(scale.to(kernel_dtype(dtype, qweight.device))),
                             persistent=False)
        self.register_buffer("_scale_dense", scale.to(dtype), persistent=False)
        # How it multiplies, chosen once for the weight's device. w8a8: `_int_mm`, its ends in C on
        # CPU (None: the torch ops); a weight whose shape cuBLASLt refuses runs weight-only instead.
        # Weight-only: torch's int8 kernel on CPU, our Triton kernel on CUDA (None: dequantized),
        # each for narrow batches.
        on_cpu = qweight.device.type == "cpu"
        self.dynamic = dynamic and int_mm_takes(qweight)
        self._row_kernels = int8_row_kernels(str(dtype).removeprefix("torch.")) if self.dynamic and on_cpu else None
        triton = None if self.dynamic else triton_kernels(qweight.device)
        self._triton_matmul = None if triton is None else triton.int8_matmul

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x @ W.T (+ bias), in x's dtype or `out_dtype`. float32 for logits: the w8a8 and dense paths
        then accumulate and write float32; the weight-only kernels write their activation dtype, widened."""
        out_dtype = out_dtype or x.dtype
        rows = x.shape[0]
        if self.dynamic:
            if self._row_kernels is not None and out_dtype == x.dtype:
                return _int8_dynamic_matmul_fused(x.contiguous(), self.qweight, self.weight_scale, bias,
                                                  *self._row_kernels)
            return _int8_dynamic_matmul_torch(x, self.qweight, self.weight_scale, bias, out_dtype)
        if self._triton_matmul is not None and rows <= TRITON_KERNEL_MAX_ROWS:
            return self._triton_matmul(x, self.qweight, self.weight_scale, bias).to(out_dtype)
        if x.device.type == "cpu" and rows <= WEIGHT_ONLY_KERNEL_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(x.to(self._scale_kernel.dtype), self.qweight, self._scale_kernel)
            out = out.to(out_dtype)
        elif out_dtype != x.dtype:  # float32 logits of a bf16 model
            out = chunked_logits_linear(x, self.qweight.shape[0], lambda lo, hi: self._dense_weight(x.dtype, lo, hi))
        else:
            chunks = [F.linear(x, self._dense_weight(x.dtype, lo, lo + DENSE_CHUNK_CHANNELS))
                      for lo in range(0, self.qweight.shape[0], DENSE_CHUNK_CHANNELS)]
            out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=-1)
        return out if bias is None else out + bias

    def _dense_weight(self, dtype: torch.dtype, lo: int, hi: int) -> torch.Tensor:
        """Output channels lo .. hi-1 dequantized in `dtype`, as the dense path multiplies them."""
        return self.qweight[lo:hi].to(dtype) * self._scale_dense[lo:hi].to(dtype)[:, None]

    def dequantize(self) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.weight_scale)


class Int8Linear(Int8Matmul):
    """A Linear (or fused MergedLinear) with int8 weights; `dynamic` makes it w8a8."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype, dynamic: bool) -> None:
        super().__init__(qweight, scale, dtype, dynamic)
        self.register_buffer("bias", None if bias is None else bias.to(dtype))

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                   dynamic: bool) -> Int8Linear:
        q, scale = quantize_int8(weight)
        return cls(q, scale, bias, dtype, dynamic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """As the LM head: float32 out."""
        return self.matmul(x, self.bias, torch.float32)


class Int8Embedding(Int8Matmul):
    """Token embeddings as int8 rows with a scale per token. With tied embeddings the same bytes
    also serve as the LM head (`linear`, weight-only), so the vocabulary matrix is stored once."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__(qweight, scale, dtype, dynamic=False)
        self.dtype = dtype

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: torch.dtype) -> Int8Embedding:
        q, scale = quantize_int8(weight)
        return cls(q, scale, dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.qweight).to(self.dtype)
        return rows * self._scale_dense[ids].unsqueeze(-1)

    def linear(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.matmul(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """As the tied LM head: float32 out."""
        return self.matmul(hidden, out_dtype=torch.float32)
