"""The profile as a terminal table and as JSON (the same numbers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmserve.profiling.roofline import Roofline
from llmserve.profiling.summary import PartRow, PhaseTable

COST_NOTE = ("GB/s and GFLOP/s use FLOPs and bytes computed analytically from the model's shapes and the "
             "batch (2*M*N*K per linear, weights as stored + activations read once, attention over each "
             "sequence's keys), not counted by the hardware; 'roof' is the roofline time at the measured copy "
             "bandwidth and matmul peak over the measured time (a part that mostly reads can pass 100%: the copy "
             "bandwidth counts a read and a write per byte).")


@dataclass
class ProfileReport:
    model: str
    device: str
    backend: str
    dtype: str
    quantization: str
    threads: int
    batch: int
    context: int
    decode_steps: int
    roofline: Roofline
    memory: dict[str, int | None]  # bytes: weights, kv_pool, kv_in_use, activations_peak
    phases: list[PhaseTable]
    profiler_ms: dict[str, float] = field(default_factory=dict)  # torch.profiler's host time per range
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["roofline"] = {"copy_gb_per_s": self.roofline.copy_bytes_per_s / 1e9,
                            "matmul_gflop_per_s": self.roofline.matmul_flops_per_s / 1e9,
                            "matmul_dtype": self.roofline.matmul_dtype}
        for phase, table in zip(data["phases"], self.phases, strict=True):
            phase["parts_ms"] = table.parts_ms
        return data

    def format(self) -> str:
        roof = self.roofline
        memory = ", ".join(f"{name.replace('_', ' ')} {_size(size)}" for name, size in self.memory.items())
        threads = f"{self.threads} thread{'' if self.threads == 1 else 's'}"
        lines = [f"{self.model} on {self.device} ({self.backend} backend, {self.dtype}, {self.quantization}, "
                 f"{threads}): batch {self.batch}, context {self.context}, {self.decode_steps} decode steps",
                 f"roofline: copy {roof.copy_bytes_per_s / 1e9:.1f} GB/s, matmul "
                 f"{roof.matmul_flops_per_s / 1e9:.1f} GFLOP/s ({roof.matmul_dtype})",
                 f"memory: {memory}",
                 ""]
        for table in self.phases:
            lines += _phase_lines(table) + [""]
        lines += [f"note: {note}" for note in [*self.notes, COST_NOTE]]
        return "\n".join(lines)


def _phase_lines(table: PhaseTable) -> list[str]:
    details = [] if table.steps == 1 else [f"mean of {table.steps}"]
    if table.unprofiled_wall_ms is not None:
        details.append(f"unprofiled {table.unprofiled_wall_ms:.2f} ms")
    head = (f"{table.phase}: {table.sequences} sequences, {table.tokens_per_step:.0f} tokens per step, "
            f"{table.wall_ms:.2f} ms per step" + (f" ({'; '.join(details)})" if details else ""))
    rows = [("part", "ms", "share", "GB/s", "GFLOP/s", "roof", "bound")]
    rows += [_cells(p) for p in table.parts]
    rows.append(("total", f"{table.parts_ms:.2f}", f"{sum(p.share for p in table.parts):.1%}", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [head]
    for row in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append(("  " + "  ".join(cells)).rstrip())
    return out


def _cells(p: PartRow) -> tuple[str, ...]:
    return (p.part, f"{p.ms:.2f}", f"{p.share:.1%}", _num(p.gbytes_per_s), _num(p.gflops_per_s),
            "" if p.roof_share is None else f"{p.roof_share:.0%}", p.bound or "")


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _size(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 2**20:.1f} MiB"
