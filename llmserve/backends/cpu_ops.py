"""The CPU backend's kernels for a decoder layer's steps: RMSNorm with the residual add, silu * mul, rope with
the KV store (one C pass each, kernels/layer_ops.c), and bf16 and float32 linears for decode-sized
batches (kernels/skinny_linear.c, kernels/amx_linear.c). Torch runs them elsewhere, or when kernels are
off; both paths round alike (see layer_ops.c)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from llmserve.backends.base import LayerKVCache
from llmserve.backends.torch_ref import apply_rotary, store_kv
from llmserve.model.kernels import (
    LayerOpKernels,
    amx_linear_kernels,
    layer_op_kernels,
    skinny_linear_bf16,
    skinny_linear_bf16_f32out,
    skinny_linear_f32,
)
from llmserve.model.memory import mapped_tensor


def _kernels(*tensors: torch.Tensor) -> LayerOpKernels | None:
    """layer_ops.c's kernels for these tensors: all on the CPU in one dtype the kernels know."""
    first = tensors[0]
    if first.device.type != "cpu" or any(t.dtype != first.dtype for t in tensors):
        return None
    return layer_op_kernels(str(first.dtype).removeprefix("torch."))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight * h / rms(h), h) where h = x + residual, or h = x without a residual.

    Normalises in float32 as HF does. The kernel writes h into `residual` in place; callers
    use the returned h either way.
    """
    operands = (x, weight) if residual is None else (x, weight, residual)
    kernels = _kernels(*operands)
    if kernels is not None and all(t.is_contiguous() for t in operands):
        out = torch.empty_like(x)
        cols = x.shape[-1]
        kernels.rms_norm(x.data_ptr(), None if residual is None else residual.data_ptr(), weight.data_ptr(),
                         out.data_ptr(), x.numel() // cols, cols, eps)
        return out, residual
    if residual is not None:
        x = residual = x + residual
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype), residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for [T, 2 * I] rows holding gate then up."""
    kernels = _kernels(gate_up)
    if kernels is not None and gate_up.is_contiguous():
        rows, cols = gate_up.numel() // gate_up.shape[-1], gate_up.shape[-1] // 2
        out = gate_up.new_empty(*gate_up.shape[:-1], cols)
        kernels.silu_mul(gate_up.data_ptr(), rows, cols, out.data_ptr())
        return out
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rotate_and_store(qk: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     cache: LayerKVCache, slot_mapping: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """Rotates q and k ([T, Hq + Hkv, D]), writes k and v ([T, Hkv, D]) to their cache slots and
    returns q as a new [T, Hq, D] tensor. q and k rotate together: one pass instead of two."""
    tokens, heads, dim = qk.shape
    kernels = _kernels(qk, v, cache.key)
    if (kernels is not None and _rows_of_heads(qk) and _rows_of_heads(v) and cos.dtype == torch.float32
            and cos.is_contiguous() and sin.is_contiguous() and slot_mapping.is_contiguous()):
        q = qk.new_empty(tokens, num_q_heads, dim)
        kernels.rope_store(qk.data_ptr(), qk.stride(0), v.data_ptr(), v.stride(0), cos.data_ptr(), sin.data_ptr(),
                           tokens, num_q_heads, heads - num_q_heads, dim, slot_mapping.data_ptr(),
                           cache.key.data_ptr(), cache.value.data_ptr(), cache.key.shape[1], q.data_ptr())
        return q
    q, k = apply_rotary(qk, cos, sin).split((num_q_heads, heads - num_q_heads), dim=1)
    store_kv(k, v, cache, slot_mapping)
    return q


def _rows_of_heads(x: torch.Tensor) -> bool:
    """Each token's heads lie contiguous ([H, D] dense), whatever the stride between tokens."""
    return x.stride(2) == 1 and x.stride(1) == x.shape[2]


# Which kernel multiplies a bf16 activation of `rows` rows on CPU (measured on this AMX machine,
# the embedded model's 120 linears, ours against torch): one row, the vdpbf16ps kernel reads the
# weights at 20-25 GB/s (batch-1 decode 24 -> 52 tok/s; 10.6 ms against AMX's 11.6); 2-256 rows,
# the AMX kernel reads them once per call (2 rows: 11.7 ms against the vdpbf16ps kernel's 14.0;
# 48 rows: 11.9 ms; 256 rows: 35.6 against 50.3 ms); from about 384 rows torch's oneDNN matmul
# is as fast or faster, and prefill chunks are that large.
SKINNY_MAX_ROWS = 1
AMX_MAX_ROWS = 256
# float32 has no AMX: up to 64 rows skinny_linear.c's FMA kernel beats MKL's sgemm (120 linears:
# 1 row 18.1 against 19.6 ms, 35 rows 45.7 against 64.6, 64 rows 67.6 against 73.1).
F32_SKINNY_MAX_ROWS = 64
# The LM head in bf16 (logits_linear) writes float32, which torch's CPU matmuls cannot from bf16: from 2
# rows on it takes amx_linear.c whatever the row count, as torch in float32 is slower still (embedded
# model's head, 49,152 x 576, float32 out: 64 rows 15 against 90 ms, 1024 rows 190 against 460-640 ms).
LOGITS_AMX_MIN_ROWS = SKINNY_MAX_ROWS + 1
# Output channels a bf16 LM head widens at a time where it falls back to torch in float32, so that
# the head never exists whole in float32 (a 128k x 4096 one would be 2 GiB).
LOGITS_CHUNK_CHANNELS = 1024


@dataclass
class PackedWeight:
    """A bf16 weight in amx_linear.c's tile layout, with what it was packed from."""

    source_ptr: int
    source_version: int
    packed: torch.Tensor


def pack_for_amx(weight: torch.Tensor, cached: PackedWeight | None) -> PackedWeight | None:
    """`cached` while it still matches `weight`, else a fresh packing; None when the AMX kernel
    cannot take this weight (dtype, device, shape) or there is no AMX."""
    out_features, in_features = weight.shape
    if (weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not weight.is_contiguous()
            or out_features % 16 or in_features % 32):
        return None
    if cached is not None and cached.source_ptr == weight.data_ptr() and cached.source_version == weight._version:
        return cached
    kernels = amx_linear_kernels()
    if kernels is None:
        return None
    packed = mapped_tensor((weight.numel(),), torch.bfloat16, huge_pages=True)  # read whole every step
    kernels.pack(weight.data_ptr(), packed.data_ptr(), out_features, in_features)
    return PackedWeight(weight.data_ptr(), weight._version, packed)


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.dim() else 0


def wants_packed(x: torch.Tensor) -> bool:
    """Whether `linear` would use a packed weight for this activation (so it is worth packing)."""
    return SKINNY_MAX_ROWS < _rows(x) <= AMX_MAX_ROWS and x.dtype == torch.bfloat16 and x.device.type == "cpu"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: PackedWeight | None = None) -> torch.Tensor:
    """F.linear, through a C kernel for decode-sized batches on CPU: bf16 (see SKINNY_MAX_ROWS)
    and float32 (see F32_SKINNY_MAX_ROWS)."""
    rows = _rows(x)
    out_features, in_features = weight.shape
    if not _kernel_operands(x, weight, bias) or rows == 0:
        return F.linear(x, weight, bias)
    if x.dtype == torch.float32:
        kernel = skinny_linear_f32()
        if kernel is not None and rows <= F32_SKINNY_MAX_ROWS and in_features % 16 == 0 and out_features % 4 == 0 \
                and weight.is_contiguous():
            return _skinny(kernel, x, weight, bias, rows)
        return F.linear(x, weight, bias)
    if rows <= SKINNY_MAX_ROWS and in_features % 32 == 0 and out_features % 4 == 0 and weight.is_contiguous():
        kernel = skinny_linear_bf16()
        if kernel is not None:
            return _skinny(kernel, x, weight, bias, rows)
    if packed is not None and SKINNY_MAX_ROWS < rows <= AMX_MAX_ROWS:
        kernels = amx_linear_kernels()
        assert kernels is not None  # packed weights exist only where it does
        out = x.new_empty(*x.shape[:-1], out_features)
        if kernels.linear(x.data_ptr(), rows, packed.packed.data_ptr(), None if bias is None else bias.data_ptr(),
                          out.data_ptr(), out_features, in_features, torch.get_num_threads()):
            raise MemoryError("the AMX linear could not allocate its padded input")
        return out
    return F.linear(x, weight, bias)


def wants_packed_logits(x: torch.Tensor) -> bool:
    """Whether `logits_linear` would use a packed weight for this activation."""
    return _rows(x) >= LOGITS_AMX_MIN_ROWS and x.dtype == torch.bfloat16 and x.device.type == "cpu"


def logits_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  packed: PackedWeight | None = None) -> torch.Tensor:
    """F.linear accumulated and written in float32 whatever the operands' dtype: the LM head. Logits
    rounded to bf16 tie (8 bits of mantissa: steps of 1/16 at 20) and greedy picks then go another way.

    float32 operands take `linear` as they are. bf16 ones on CPU take the C kernels' float32-output
    variants: one row skinny_linear.c's, more amx_linear.c's with `packed` (see LOGITS_AMX_MIN_ROWS).
    Anything else runs in float32 in torch, LOGITS_CHUNK_CHANNELS output channels at a time.
    """
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return linear(x, weight, bias, packed)
    rows = _rows(x)
    out_features, in_features = weight.shape
    if x.dtype == torch.bfloat16 and _kernel_operands(x, weight, bias) and rows > 0:
        if rows <= SKINNY_MAX_ROWS and in_features % 32 == 0 and out_features % 4 == 0 and weight.is_contiguous():
            kernel = skinny_linear_bf16_f32out()
            if kernel is not None:
                return _skinny(kernel, x, weight, bias, rows, torch.float32)
        if packed is not None and rows >= LOGITS_AMX_MIN_ROWS:
            kernels = amx_linear_kernels()
            assert kernels is not None  # packed weights exist only where it does
            out = x.new_empty(*x.shape[:-1], out_features, dtype=torch.float32)
            if kernels.linear_f32out(x.data_ptr(), rows, packed.packed.data_ptr(),
                                     None if bias is None else bias.data_ptr(), out.data_ptr(), out_features,
                                     in_features, torch.get_num_threads()):
                raise MemoryError("the AMX linear could not allocate its padded input")
            return out
    return _float32_linear(x, weight, bias)


def chunked_logits_linear(x: torch.Tensor, out_features: int,
                          weight_chunk: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """`logits_linear` of a weight that exists only LOGITS_CHUNK_CHANNELS output channels at a time,
    `weight_chunk(lo, hi)` (a quantized head dequantizing). bf16 chunks go through amx_linear.c, each
    packed into one reused buffer: for the embedded model's int8 head at 17-128 rows about as fast as
    torch's bf16 matmul was (16-19 ms), where float32 in torch takes 35-75 ms. Others: torch in float32."""
    in_features = x.shape[-1]
    x2 = x.reshape(-1, in_features)
    rows = x2.shape[0]
    out = torch.empty(rows, out_features, dtype=torch.float32, device=x.device)
    amx = None
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and rows >= LOGITS_AMX_MIN_ROWS and in_features % 32 == 0:
        amx = amx_linear_kernels()
        x2 = x2.contiguous()
    x32 = buffer = None
    for lo in range(0, out_features, LOGITS_CHUNK_CHANNELS):
        hi = min(lo + LOGITS_CHUNK_CHANNELS, out_features)
        weight = weight_chunk(lo, hi)
        if amx is not None and (hi - lo) % 16 == 0 and weight.dtype == torch.bfloat16 and weight.is_contiguous():
            if buffer is None:
                buffer = torch.empty(LOGITS_CHUNK_CHANNELS * in_features, dtype=torch.bfloat16)
            amx.pack(weight.data_ptr(), buffer.data_ptr(), hi - lo, in_features)
            part = torch.empty(rows, hi - lo)
            if amx.linear_f32out(x2.data_ptr(), rows, buffer.data_ptr(), None, part.data_ptr(), hi - lo, in_features,
                                 torch.get_num_threads()):
                raise MemoryError("the AMX linear could not allocate its padded input")
            out[:, lo:hi] = part
        else:
            if x32 is None:
                x32 = x2.float()
            out[:, lo:hi] = F.linear(x32, weight.float())
    return out.view(*x.shape[:-1], out_features)


def _float32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear in float32, widening the weight LOGITS_CHUNK_CHANNELS output channels at a time into one
    reused buffer: a float32 copy of the whole head never exists, and the buffer stays in cache
    (a fresh float32 copy per call faults its pages in: at 1 row 5x the time)."""
    out_features, in_features = weight.shape
    x32 = x.reshape(-1, in_features).float()
    out = x32.new_empty(x32.shape[0], out_features)
    buffer = x32.new_empty(min(LOGITS_CHUNK_CHANNELS, out_features), in_features)
    for lo in range(0, out_features, LOGITS_CHUNK_CHANNELS):
        hi = min(lo + LOGITS_CHUNK_CHANNELS, out_features)
        chunk = buffer[:hi - lo].copy_(weight[lo:hi])
        out[:, lo:hi] = F.linear(x32, chunk, None if bias is None else bias[lo:hi].float())
    return out.view(*x.shape[:-1], out_features)


def _kernel_operands(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the C linears could take these: CPU, bf16 or float32 throughout, x (and bias) dense."""
    return (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32) and weight.dtype == x.dtype
            and x.is_contiguous() and (bias is None or bias.dtype == x.dtype and bias.is_contiguous()))


def _skinny(kernel: ctypes._CFuncPtr, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            rows: int, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    out_features, in_features = weight.shape
    out = x.new_empty(*x.shape[:-1], out_features, dtype=out_dtype or x.dtype)
    kernel(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(),
           rows, out_features, in_features, torch.get_num_threads())
    return out
