"""`llmserve profile`: build the engine, measure the roofs, run the workload, summarize."""

from __future__ import annotations

import torch

from llmserve.engine.engine import LLMEngine
from llmserve.model.embedded import EMBEDDED_MODEL_NAME
from llmserve.profiling.clock import DeviceClock
from llmserve.profiling.cost import ModelShapes
from llmserve.profiling.notes import profile_notes
from llmserve.profiling.report import ProfileReport
from llmserve.profiling.roofline import Roofline, measure_roofline
from llmserve.profiling.summary import summarize
from llmserve.profiling.workload import ProfileSettings, run_workload, warm_up
from llmserve.quant.apply import weights_nbytes


def profile(settings: ProfileSettings, trace_path: str | None = None,
            roofline: Roofline | None = None) -> ProfileReport:
    """`roofline`: measured here unless given (tests pass a small one)."""
    engine = LLMEngine(settings.engine_config())
    clock = DeviceClock.for_device(engine.device)
    warm_up(engine, settings, clock)
    # Measured between the warm-up and the measured round, on the threads the engine runs with now.
    roofline = roofline or measure_roofline(engine.device, engine.dtype, clock)
    run = run_workload(engine, settings, clock, trace_path)
    runner = engine.runner
    shapes = ModelShapes.of(runner.model, engine.dtype, runner.kv_caches[0].key.dtype)
    kv_pool = sum(t.numel() * t.element_size() for c in runner.kv_caches for t in (c.key, c.value))
    kv_per_token = kv_pool // (engine.block_manager.num_blocks * engine.block_manager.block_size)
    memory = {"weights": weights_nbytes(runner.model), "kv_pool": kv_pool,
              "kv_in_use": kv_per_token * settings.batch * (settings.context + settings.decode_steps),
              "activations_peak": run.activation_peak_bytes}
    return ProfileReport(
        model=settings.model or EMBEDDED_MODEL_NAME, device=str(engine.device), backend=engine.backend.name,
        dtype=str(engine.dtype).removeprefix("torch."),
        quantization=engine.quant.describe() if engine.quant.enabled else "unquantized",
        threads=torch.get_num_threads(), batch=settings.batch, context=settings.context,
        decode_steps=settings.decode_steps, roofline=roofline, memory=memory,
        phases=summarize(run.samples, shapes, roofline), profiler_ms=run.profiler_ms,
        notes=profile_notes(engine, run.activation_peak_bytes is None))
