"""What a reader of the table must know about how it was measured on this machine."""

from __future__ import annotations

import torch

from llmserve.engine.engine import LLMEngine
from llmserve.profiling.workload import PROFILE_SAMPLING


def profile_notes(engine: LLMEngine, no_activation_peak: bool) -> list[str]:
    notes = [f"sampling: {', '.join(f'{k}={v}' for k, v in PROFILE_SAMPLING.items())}; prefix cache off; "
             "shares are of the step's wall time, the overhead being what no timed part covers "
             "(scheduler, bookkeeping, Python and torch dispatch between the ops, host-device copies)"]
    if engine.backend.name == "cpu":
        notes.append(cpu_kernels_note(engine.dtype))
    if engine.device.type == "cuda":
        notes.append("steps ran eagerly (no CUDA graphs) so that the profiler sees each layer op; "
                     "times are GPU time from CUDA events")
    if no_activation_peak:
        notes.append("activations peak: n/a, the CPU allocator keeps no peak")
    return notes


def cpu_kernels_note(dtype: torch.dtype) -> str:
    """Which of the cpu backend's C kernels this CPU runs: the rest fall back to torch ops."""
    from llmserve.model import kernels

    name = str(dtype).removeprefix("torch.")
    skinny = kernels.skinny_linear_bf16 if dtype == torch.bfloat16 else kernels.skinny_linear_f32
    found = {"norm/rope/silu kernels": kernels.layer_op_kernels(name) is not None,
             "decode attention kernel": kernels.paged_decode_attention(name) is not None,
             "skinny linear (AVX-512)": skinny() is not None,
             "AMX linear": dtype == torch.bfloat16 and kernels.amx_linear_kernels() is not None}
    used = [k for k, ok in found.items() if ok] or ["none"]
    missing = [k for k, ok in found.items() if not ok]
    avx512 = "avx512f" in _cpu_flags()
    text = f"cpu backend: C kernels in use: {', '.join(used)}"
    if missing:
        text += (f"; not on this CPU ({'has' if avx512 else 'no'} AVX-512), so torch ops run instead: "
                 f"{', '.join(missing)}")
    return text


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return ""
