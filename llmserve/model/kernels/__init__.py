"""Small C kernels for the CPU hot path, compiled on first use and loaded with ctypes.

They need only a C compiler (no torch headers, so a build takes about a second). Without one,
or with LLMSERVE_NO_KERNELS=1, callers fall back to pure-torch code that computes the same thing.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_SOURCE_DIR = Path(__file__).parent
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11"]
# Linked in a second step without -ffast-math: linked with it, gcc adds crtfastmath.o, whose
# constructor turns on flush-to-zero for the whole process when the library loads, so torch and
# every other library in it would silently lose subnormal floats.
_LINK_FLAGS = ["-shared", "-fopenmp"]


def _cache_dir() -> Path:
    root = os.environ.get("LLMSERVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llmserve")
    return Path(root) / "kernels"


def _compile(source: Path) -> Path | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found; using the slower pure-torch attention")
        return None
    # The machine is part of the key: -march=native code must not be reused on another CPU.
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))  # what sources include
    flags = " ".join(_FLAGS + _LINK_FLAGS).encode()
    key = hashlib.sha256(source.read_bytes() + headers + flags + platform.processor().encode()
                         + platform.machine().encode() + _cpu_flags().encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = _build(compiler, source, built)
        if result.returncode != 0:
            logger.warning("compiling %s failed; using pure torch:\n%s", source.name, result.stderr[-2000:])
            return None
        os.replace(built, target)  # atomic, so concurrent processes never load a half-written file
    return target


def _build(compiler: str, source: Path, built: Path) -> subprocess.CompletedProcess:
    """Compile, then link separately (see _LINK_FLAGS)."""
    obj = built.with_suffix(".o")
    result = subprocess.run([compiler, *_FLAGS, "-c", str(source), "-o", str(obj)], capture_output=True, text=True)
    if result.returncode != 0:
        return result
    return subprocess.run([compiler, *_LINK_FLAGS, str(obj), "-o", str(built), "-lmvec", "-lm"],
                          capture_output=True, text=True)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


# Element type -> suffix of the kernels compiled for it (KV caches, w8a8 activations).
KV_DTYPE_SUFFIXES = {"float32": "f32", "bfloat16": "bf16"}


@functools.cache
def _library(source: str) -> ctypes.CDLL | None:
    """The compiled `source` of this folder, or None when kernels are unavailable or disabled."""
    if os.environ.get("LLMSERVE_NO_KERNELS"):
        return None
    library = _compile(_SOURCE_DIR / source)
    return None if library is None else ctypes.CDLL(str(library))


@functools.cache
def int8_row_kernels(dtype: str) -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    """(quantize_rows, epilogue) of int8_rows.c for float32 or bfloat16 activations, or None
    when kernels are unavailable or disabled or the dtype has none."""
    library = _library("int8_rows.c")
    if library is None or dtype not in KV_DTYPE_SUFFIXES:
        return None
    suffix = KV_DTYPE_SUFFIXES[dtype]
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    quantize = getattr(library, f"quantize_rows_{suffix}")
    quantize.argtypes = [ptr, i64, i64, ptr, ptr]
    quantize.restype = None
    epilogue = getattr(library, f"epilogue_{suffix}")
    epilogue.argtypes = [ptr, ptr, ptr, ptr, i64, i64, ptr]
    epilogue.restype = None
    return quantize, epilogue


@functools.cache
def paged_decode_attention(kv_dtype: str = "float32") -> ctypes._CFuncPtr | None:
    """The C decode-attention function for a cache of `kv_dtype` (float32 queries and output),
    or None when kernels are unavailable or disabled or the type has no kernel."""
    library = _library("paged_attention.c")
    if library is None or kv_dtype not in KV_DTYPE_SUFFIXES:
        return None
    fn = getattr(library, f"paged_decode_attention_{KV_DTYPE_SUFFIXES[kv_dtype]}")
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, ctypes.c_float, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@dataclass(frozen=True)
class LayerOpKernels:
    """The functions of layer_ops.c for one activation type."""

    rms_norm: ctypes._CFuncPtr
    rope_store: ctypes._CFuncPtr
    silu_mul: ctypes._CFuncPtr


@functools.cache
def layer_op_kernels(dtype: str) -> LayerOpKernels | None:
    """layer_ops.c's kernels for float32 or bfloat16 tensors, or None when kernels are
    unavailable or disabled or the dtype has none."""
    library = _library("layer_ops.c")
    if library is None or dtype not in KV_DTYPE_SUFFIXES:
        return None
    suffix = KV_DTYPE_SUFFIXES[dtype]
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    signatures = {
        "rms_norm": [ptr, ptr, ptr, ptr, i64, i64, ctypes.c_float],
        "rope_store": [ptr, i64, ptr, i64, ptr, ptr, i64, i64, i64, i64, ptr, ptr, ptr, i64, ptr],
        "silu_mul": [ptr, i64, i64, ptr],
    }
    functions = {}
    for name, argtypes in signatures.items():
        fn = getattr(library, f"{name}_{suffix}")
        fn.argtypes = argtypes
        fn.restype = None
        functions[name] = fn
    return LayerOpKernels(**functions)


def skinny_linear_bf16() -> ctypes._CFuncPtr | None:
    """skinny_linear.c's bf16 linear for a few rows, or None when kernels are unavailable or
    disabled or the CPU lacks AVX512-BF16."""
    return _skinny_linear("skinny_linear_bf16")


def skinny_linear_bf16_f32out() -> ctypes._CFuncPtr | None:
    """skinny_linear_bf16 writing float32 (the LM head's logits), or None as for skinny_linear_bf16."""
    return _skinny_linear("skinny_linear_bf16_f32out")


def skinny_linear_f32() -> ctypes._CFuncPtr | None:
    """skinny_linear.c's float32 linear for a few rows, or None when kernels are unavailable or
    disabled or the CPU lacks AVX-512."""
    return _skinny_linear("skinny_linear_f32")


@functools.cache
def _skinny_linear(symbol: str) -> ctypes._CFuncPtr | None:
    """`symbol` of skinny_linear.c, (x, w, bias, y, m, n, k, threads), if the build has it."""
    library = _library("skinny_linear.c")
    if library is None or not hasattr(library, symbol):
        return None
    fn = getattr(library, symbol)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, ctypes.c_int]
    fn.restype = None
    return fn


@dataclass(frozen=True)
class AmxLinearKernels:
    """amx_linear.c: `pack(w, packed, n, k)` once per weight, then `linear(x, m, packed, bias, y, n, k, threads)`;
    `linear_f32out` takes the same arguments and writes y in float32 (the LM head's logits)."""

    pack: ctypes._CFuncPtr
    linear: ctypes._CFuncPtr
    linear_f32out: ctypes._CFuncPtr


@functools.cache
def amx_linear_kernels() -> AmxLinearKernels | None:
    """The AMX bf16 linear, or None when kernels are unavailable or disabled, the CPU has no
    AMX-BF16, or the OS refuses the process AMX state."""
    library = _library("amx_linear.c")
    if library is None or not hasattr(library, "amx_linear_bf16") or library.amx_enable() != 0:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    library.pack_weights.argtypes = [ptr, ptr, i64, i64]
    library.pack_weights.restype = None
    for fn in (library.amx_linear_bf16, library.amx_linear_bf16_f32out):
        fn.argtypes = [ptr, i64, ptr, ptr, ptr, i64, i64, ctypes.c_int]
        fn.restype = ctypes.c_int
    return AmxLinearKernels(pack=library.pack_weights, linear=library.amx_linear_bf16,
                            linear_f32out=library.amx_linear_bf16_f32out)
