"""Triton kernels for the CUDA backend: KV stores (with rope), paged decode and prefill attention,
RMSNorm and silu * mul. Tested on CPU tensors under TRITON_INTERPRET=1, which must be set before
this package is imported."""

from __future__ import annotations

from llmserve.backends.triton.common import interpreting
from llmserve.backends.triton.kv_store import rope_and_store, store_kv
from llmserve.backends.triton.layer_ops import rms_norm, silu_and_mul
from llmserve.backends.triton.paged_decode import decode_attention
from llmserve.backends.triton.paged_prefill import prefill_attention

if interpreting():
    from llmserve.backends.triton.interpreter import patch_interpreter

    patch_interpreter()

__all__ = ["decode_attention", "prefill_attention", "rms_norm", "rope_and_store", "silu_and_mul", "store_kv"]
