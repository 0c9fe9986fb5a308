"""The profiled workload: `batch` prompts of `context` random tokens prefilled in one engine step,
then `decode_steps` decode steps, run once to warm up and once measured under torch's profiler."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from llmserve.config import EngineConfig
from llmserve.engine.engine import LLMEngine
from llmserve.profiling.clock import DeviceClock
from llmserve.profiling.instrument import instrumented
from llmserve.profiling.recorder import RANGE_PREFIX, Recorder
from llmserve.runner.step_batch import StepBatch
from llmserve.sampling_params import SamplingParams

# Sampling as a chat client asks for it (top-p sorts the vocabulary), not greedy's argmax alone; no
# per-request seed, as most traffic sends none (seeded rows draw their noise one row at a time).
PROFILE_SAMPLING = dict(temperature=0.8, top_p=0.95)


@dataclass(frozen=True)
class ProfileSettings:
    model: str | None = None
    dtype: str = "auto"
    quantization: str | None = None
    device: str = "auto"
    backend: str = "auto"
    batch: int = 1
    context: int = 128
    decode_steps: int = 8
    threads: int | None = None
    block_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "context", "decode_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    @property
    def max_model_len(self) -> int:
        return self.context + self.decode_steps + 1

    def engine_config(self) -> EngineConfig:
        """One prefill step for the whole batch (token budget = batch * context), a pool just large
        enough, no prefix cache (the measured round repeats the warm-up's shapes with new prompts),
        and eager steps on CUDA: a replayed graph would hide the layer ops from the profiler."""
        needed = self.batch * -(-self.max_model_len // self.block_size)
        spare = needed // 50 + 2  # the scheduler keeps ~1% of the pool free when admitting
        return EngineConfig.create(
            self.model, dtype=self.dtype, quantization=self.quantization, device=self.device, backend=self.backend,
            max_model_len=self.max_model_len, block_size=self.block_size, num_kv_blocks=needed + spare,
            enable_prefix_caching=False, max_num_seqs=self.batch, max_num_batched_tokens=self.batch * self.context,
            scheduling_policy="fcfs", num_threads=self.threads, enforce_eager=True, seed=self.seed)


@dataclass
class StepSample:
    """One measured engine step."""

    wall_s: float
    parts_s: dict[str, float]  # seconds per measured category
    batches: list[StepBatch]  # what the runner ran (one per forward)
    sampled_rows: int
    unprofiled_wall_s: float | None = None  # the same step of a round run without any profiling

    @property
    def phase(self) -> str:
        return "decode" if all(b.is_decode_only for b in self.batches) else "prefill"


@dataclass
class WorkloadRun:
    samples: list[StepSample]
    profiler_ms: dict[str, float] = field(default_factory=dict)  # torch.profiler's total per range
    activation_peak_bytes: int | None = None


def warm_up(engine: LLMEngine, settings: ProfileSettings, clock: DeviceClock) -> None:
    """One unmeasured round of the same shapes: the allocator, kernel choices and weight packing settle."""
    _one_round(engine, settings, clock, None, round_index=0)


def _unprofiled_walls(engine: LLMEngine, settings: ProfileSettings, clock: DeviceClock,
                      samples: list[StepSample]) -> None:
    """Runs the round again without the profiler, so the table can show what profiling cost. The
    scheduler is deterministic, so its steps match the measured round's one for one."""
    walls, _ = _one_round(engine, settings, clock, None, round_index=2)
    if len(walls) == len(samples):
        for sample, wall in zip(samples, walls, strict=True):
            sample.unprofiled_wall_s = wall


def run_workload(engine: LLMEngine, settings: ProfileSettings, clock: DeviceClock,
                 trace_path: str | None = None) -> WorkloadRun:
    """The measured round, under torch's profiler and the profiler's timed regions."""
    recorder = Recorder(clock)
    clock.synchronize()
    base = clock.allocated_memory()
    clock.reset_peak_memory()
    with torch.profiler.profile(activities=clock.profiler_activities) as prof, \
            instrumented(engine.runner, recorder):
        _, samples = _one_round(engine, settings, clock, recorder, round_index=1)
    peak = clock.peak_memory()
    _unprofiled_walls(engine, settings, clock, samples)
    if trace_path:
        prof.export_chrome_trace(trace_path)
    return WorkloadRun(samples, _profiler_totals(prof),
                       None if peak is None or base is None else max(peak - base, 0))


def _one_round(engine: LLMEngine, settings: ProfileSettings, clock: DeviceClock, recorder: Recorder | None,
               round_index: int) -> tuple[list[float], list[StepSample]]:
    """Each step's wall time, and with a recorder, each step's sample."""
    vocab = engine.model_config.vocab_size
    generator = torch.Generator().manual_seed(settings.seed + round_index)
    for i in range(settings.batch):
        prompt = torch.randint(0, vocab, (settings.context,), generator=generator).tolist()
        params = SamplingParams(max_tokens=settings.decode_steps + 1, ignore_eos=True, **PROFILE_SAMPLING)
        engine.add_request(f"profile-{round_index}-{i}", prompt, params)
    walls: list[float] = []
    samples: list[StepSample] = []
    while engine.has_unfinished_requests():
        clock.synchronize()
        start = time.perf_counter()
        outputs = engine.step()
        clock.synchronize()
        wall = time.perf_counter() - start
        walls.append(wall)
        errors = [o.error for o in outputs if o.error]
        if errors:
            raise RuntimeError(f"a profiled step failed: {errors[0]}")
        if recorder is not None:
            batches = recorder.take_batches()
            sampled = sum(len(b.logits_indices) for b in batches)  # the rows that get logits and a token
            samples.append(StepSample(wall, recorder.take(), batches, sampled))
    return walls, samples


def _profiler_totals(prof: torch.profiler.profile) -> dict[str, float]:
    """The profiler's own total per llmserve range (host time; a cross-check of the clock's)."""
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith(RANGE_PREFIX):
            totals[event.key.removeprefix(RANGE_PREFIX)] = event.cpu_time_total / 1000.0
    return totals
