"""The profile on each backend this machine can run: the torch reference, and the CUDA backend's
Triton kernels under Triton's interpreter (how CI runs them without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve.profiling import categories as cat
from llmserve.profiling.profile import profile
from llmserve.profiling.roofline import Roofline
from llmserve.profiling.workload import ProfileSettings
from tests.tiny_models import save_tiny_model

ROOF = Roofline(copy_bytes_per_s=10e9, matmul_flops_per_s=50e9, matmul_dtype="float32")


@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_each_backend_is_profiled_whole(backend: str, tmp_path: Path) -> None:
    save_tiny_model("llama", tmp_path)
    settings = ProfileSettings(model=str(tmp_path), dtype="float32", device="cpu", backend=backend, batch=2,
                               context=9, decode_steps=2, threads=1)
    report = profile(settings, roofline=ROOF)
    assert report.backend == backend
    assert [t.phase for t in report.phases] == ["prefill", "decode"]
    for table in report.phases:
        assert abs(table.parts_ms - table.wall_ms) <= 0.05 * table.wall_ms
        parts = {p.part: p for p in table.parts}
        assert set(parts) == set(cat.ALL)
        assert all(p.ms >= 0 for p in parts.values())
        assert parts[cat.ATTENTION].ms > 0 and parts[cat.LINEARS].ms > 0 and parts[cat.PREPARATION].ms > 0
    assert not any("C kernels" in note for note in report.notes)  # only the cpu backend has them
