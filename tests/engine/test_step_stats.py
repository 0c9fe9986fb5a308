"""The engine's per-step facts add up to what known requests must cost."""

from __future__ import annotations

import pytest
import torch

from llmserve import SamplingParams
from llmserve.config import CacheConfig, EngineConfig, SchedulerConfig
from llmserve.engine.engine import LLMEngine
from llmserve.engine.step_stats import StepRecorder
from tests.timing import FakeClock
from tests.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    hf = save_tiny_model("llama", path)
    return str(path), hf


def _engine(folder: str, num_blocks: int = 256, **sched) -> LLMEngine:
    return LLMEngine(EngineConfig(model=folder, max_model_len=256,
                                  cache=CacheConfig(block_size=4, num_blocks=num_blocks, enable_prefix_caching=False),
                                  scheduler=SchedulerConfig(**sched)))


def _run(engine: LLMEngine, prompts: list[list[int]], max_tokens: list[int]) -> dict:
    for i, (prompt, n) in enumerate(zip(prompts, max_tokens, strict=True)):
        engine.add_request(str(i), prompt, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def _prompts(count: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(3, 250, (int(n),), generator=gen).tolist()
            for n in torch.randint(5, 40, (count,), generator=gen)]


def test_one_request_at_a_time_is_one_sequence_per_step(tiny):
    engine = _engine(tiny[0])
    prompts, lengths = _prompts(3), [4, 7, 1]
    for prompt, n in zip(prompts, lengths, strict=True):
        _run(engine, [prompt], [n])
    stats = engine.steps.snapshot()
    # A prefill step, then one step per further token; the last token is sampled, never run.
    assert stats.num_steps == sum(lengths)
    assert stats.seqs_per_step == {1: sum(lengths)}
    assert sum(t * n for t, n in stats.tokens_per_step.items()) == sum(
        len(p) + n - 1 for p, n in zip(prompts, lengths, strict=True))
    assert {len(p) for p in prompts} <= set(stats.tokens_per_step)
    assert stats.num_preemptions == 0


def test_batched_and_chunked_steps_run_the_same_tokens(tiny):
    engine = _engine(tiny[0], max_num_batched_tokens=16, max_num_seqs=4)
    prompts = _prompts(8)
    lengths = [3 + i for i in range(8)]
    _run(engine, prompts, lengths)
    stats = engine.steps.snapshot()
    assert sum(t * n for t, n in stats.tokens_per_step.items()) == sum(
        len(p) + n - 1 for p, n in zip(prompts, lengths, strict=True))
    assert max(stats.tokens_per_step) <= 16 and max(stats.seqs_per_step) <= 4
    assert sum(stats.tokens_per_step.values()) == sum(stats.seqs_per_step.values()) == stats.num_steps
    assert sum(s * n for s, n in stats.seqs_per_step.items()) > stats.num_steps  # steps did batch


def test_preemptions_count_what_requests_report(tiny):
    engine = _engine(tiny[0], num_blocks=24, max_num_batched_tokens=32)
    done = _run(engine, _prompts(8), [24] * 8)
    stats = engine.steps.snapshot()
    reported = sum(o.metrics.num_preemptions for o in done.values())
    assert reported > 0 and stats.num_preemptions == reported


def test_weight_bytes_are_every_weight_but_the_input_embedding(tiny):
    engine = _engine(tiny[0])
    hf = tiny[1]
    assert not hf.config.tie_word_embeddings
    expected = sum(p.numel() * 4 for name, p in hf.named_parameters() if "embed_tokens" not in name)
    assert engine.weight_bytes_per_step == expected
    info = engine.cache_config_info()
    assert info["block_size"] == "4" and info["num_gpu_blocks"] == "256"
    assert info["enable_prefix_caching"] == "False" and info["cache_dtype"] == "float32"


def test_recent_step_rate_looks_back_over_the_window():
    clock = FakeClock()
    recorder = StepRecorder(clock=clock, window=10.0)
    for _ in range(20):
        recorder.record(num_tokens=8, num_seqs=2, num_preempted=0)
        clock.now += 0.25
    assert recorder.snapshot().recent_steps_per_second == pytest.approx(20 / 10.0)
    clock.now += 8.0  # steps ran at 100.00-104.75; the window now starts at 103: 7 steps lie inside it
    assert recorder.snapshot().recent_steps_per_second == pytest.approx(7 / 10.0)
    clock.now += 60.0
    snap = recorder.snapshot()
    assert snap.recent_steps_per_second == 0.0
    assert snap.num_steps == 20 and snap.tokens_per_step == {8: 20} and snap.seqs_per_step == {2: 20}


def test_a_round_that_runs_nothing_is_no_step_but_keeps_its_preemptions():
    recorder = StepRecorder(clock=FakeClock())
    recorder.record(num_tokens=0, num_seqs=0, num_preempted=2)
    snap = recorder.snapshot()
    assert snap.num_steps == 0 and snap.tokens_per_step == {} and snap.num_preemptions == 2
