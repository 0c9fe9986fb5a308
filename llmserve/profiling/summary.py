"""Measured steps -> one table per phase: time, share of the step, achieved rates and the roofline."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.profiling import categories as cat
from llmserve.profiling.cost import Cost, ModelShapes, step_costs
from llmserve.profiling.roofline import Roofline
from llmserve.profiling.workload import StepSample


@dataclass(frozen=True)
class PartRow:
    part: str
    ms: float  # per step
    share: float  # of the step's wall time
    gbytes_per_s: float | None  # None for parts with no analytical cost (preparation, overhead)
    gflops_per_s: float | None
    roof_share: float | None  # roofline time / measured time
    bound: str | None  # "memory" or "compute", per the roofline


@dataclass(frozen=True)
class PhaseTable:
    phase: str  # "prefill" or "decode"
    steps: int
    sequences: int
    tokens_per_step: float
    wall_ms: float  # per step
    parts: list[PartRow]
    unprofiled_wall_ms: float | None = None  # per step, the same steps run without profiling

    @property
    def parts_ms(self) -> float:
        return sum(p.ms for p in self.parts)


def summarize(samples: list[StepSample], shapes: ModelShapes, roofline: Roofline) -> list[PhaseTable]:
    tables = []
    for phase in ("prefill", "decode"):
        steps = [s for s in samples if s.phase == phase]
        if steps:
            tables.append(_phase_table(phase, steps, shapes, roofline))
    return tables


def _phase_table(phase: str, steps: list[StepSample], shapes: ModelShapes, roofline: Roofline) -> PhaseTable:
    n = len(steps)
    wall = sum(s.wall_s for s in steps) / n
    seconds = {part: sum(s.parts_s.get(part, 0.0) for s in steps) / n
               for part in cat.MEASURED if any(part in s.parts_s for s in steps)}
    costs: dict[str, Cost] = {}
    for step in steps:
        for batch in step.batches:
            for part, cost in step_costs(shapes, batch, step.sampled_rows).items():
                costs[part] = costs.get(part, Cost(0.0, 0.0)) + Cost(cost.flops / n, cost.bytes / n)
    rows = [_row(part, spent, wall, costs.get(part), roofline) for part, spent in seconds.items()]
    # What no region covers: the scheduler, the engine's bookkeeping, Python and torch dispatch
    # between the ops, host-device copies. Taken as the remainder, so the shares sum to the step.
    rows.append(_row(cat.OVERHEAD, max(wall - sum(seconds.values()), 0.0), wall, None, roofline))
    tokens = sum(b.num_tokens for s in steps for b in s.batches) / n
    sequences = max(b.num_seqs for s in steps for b in s.batches)
    bare = [s.unprofiled_wall_s for s in steps]
    unprofiled = None if None in bare else sum(bare) / n * 1000.0
    return PhaseTable(phase, n, sequences, tokens, wall * 1000.0, rows, unprofiled)


def _row(part: str, seconds: float, wall: float, cost: Cost | None, roofline: Roofline) -> PartRow:
    share = seconds / wall if wall > 0 else 0.0
    if cost is None or seconds <= 0:
        return PartRow(part, seconds * 1000.0, share, None, None, None, None)
    return PartRow(part, seconds * 1000.0, share, cost.bytes / seconds / 1e9,
                   cost.flops / seconds / 1e9 if cost.flops else None,
                   roofline.seconds(cost) / seconds, roofline.bound(cost))
