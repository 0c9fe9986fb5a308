"""The profiler's timed regions: installed only while profiling, never changing a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve import LLM, SamplingParams
from llmserve.profiling import categories as cat
from llmserve.profiling.clock import DeviceClock
from llmserve.profiling.instrument import TimedOps, instrumented
from llmserve.profiling.recorder import Recorder
from llmserve.runner.sampler import Sampler
from tests.tiny_models import save_tiny_model

PROMPTS = [[5, 9, 17, 33, 2, 70], [100, 3, 3, 8], [11] * 20]


def _tokens(llm: LLM) -> list[list[int]]:
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    save_tiny_model("qwen3", path)  # per-head q/k norms too
    return path


def test_profiling_changes_no_token_and_leaves_nothing_behind(folder: Path) -> None:
    llm = LLM(str(folder), dtype="float32", num_threads=1, enable_prefix_caching=False)
    runner = llm.engine.runner
    expected = _tokens(llm)
    recorder = Recorder(DeviceClock.for_device("cpu"))
    with instrumented(runner, recorder):
        assert isinstance(runner.model.layers[0].self_attn.ops, TimedOps)
        assert _tokens(llm) == expected
    parts = recorder.take()
    for name in (cat.ATTENTION, cat.ROPE_KV, cat.LINEARS, cat.NORMS, cat.ACTIVATIONS, cat.EMBEDDING, cat.LOGITS,
                 cat.SAMPLING, cat.PREPARATION):
        assert parts.get(name, 0.0) > 0, name
    assert recorder.take_batches()  # the steps' shapes, one per forward
    assert all(getattr(m, "ops", runner.backend) is runner.backend for m in runner.model.modules())
    assert not any("forward" in vars(m) or "logits" in vars(m) for m in runner.model.modules())
    assert "build_step" not in vars(runner) and "build_metadata" not in vars(runner.backend)
    assert type(runner.sampler) is Sampler
    assert _tokens(llm) == expected


def test_quantized_linears_are_timed_as_linears(tmp_path: Path) -> None:
    save_tiny_model("llama", tmp_path)  # an untied head: int8 as its own module
    llm = LLM(str(tmp_path), dtype="float32", num_threads=1, quantization="int8")
    recorder = Recorder(DeviceClock.for_device("cpu"))
    with instrumented(llm.engine.runner, recorder):
        _tokens(llm)
    parts = recorder.take()
    assert parts[cat.LINEARS] > 0 and parts[cat.LOGITS] > 0
    assert not any("forward" in vars(m) for m in llm.engine.runner.model.modules())


def test_nested_regions_count_once() -> None:
    recorder = Recorder(DeviceClock.for_device("cpu"))
    with recorder.region(cat.LOGITS), recorder.region(cat.LINEARS):
        pass
    assert set(recorder.take()) == {cat.LOGITS}
