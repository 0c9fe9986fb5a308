"""The thread governor: how many threads the engine runs on as neighbours come and go.

Readings are fed by hand (no real clock, no real load), so these assert decisions, not speed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmserve.engine.threads import ThreadGovernor, busy_cpu_seconds, cgroup_cpu_quota, own_cpu_seconds


class FakeMachine:
    """A clock and two CPU-time counters that a test advances: ours and everyone's."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0
        self.own = 0.0
        self.set_calls: list[int] = []

    def run(self, seconds: float, ours: float, neighbours: float) -> None:
        """`seconds` pass while we use `ours` cores and other processes `neighbours`."""
        self.now += seconds
        self.own += ours * seconds
        self.busy += (ours + neighbours) * seconds

    def governor(self, cores: int = 2, fixed: int | None = None) -> ThreadGovernor:
        return ThreadGovernor(fixed=fixed, cores=cores, set_threads=self.set_calls.append, clock=lambda: self.now,
                              read_busy=lambda: self.busy, read_own=lambda: self.own)


def settle(machine: FakeMachine, governor: ThreadGovernor, neighbours: float, windows: int = 3) -> int:
    for _ in range(windows):
        machine.run(0.6, governor.threads, neighbours)
        governor.adjust()
    return governor.threads


def test_starts_on_every_core_and_sets_torch_once():
    machine = FakeMachine()
    governor = machine.governor(cores=4)
    assert governor.threads == 4 and machine.set_calls == [4]
    assert settle(machine, governor, neighbours=0.05) == 4
    assert machine.set_calls == [4]  # nothing changed, nothing set again


def test_a_busy_neighbour_takes_a_core_and_gives_it_back():
    machine = FakeMachine()
    governor = machine.governor(cores=2)
    # While we run two threads, a spinning neighbour gets about two thirds of a core.
    assert settle(machine, governor, neighbours=0.67) == 1
    assert settle(machine, governor, neighbours=1.0) == 1
    assert settle(machine, governor, neighbours=0.0) == 2
    assert machine.set_calls == [2, 1, 2]


def test_hysteresis_keeps_the_count_between_the_marks():
    machine = FakeMachine()
    governor = machine.governor(cores=2)
    assert settle(machine, governor, neighbours=0.4) == 2  # under half a core: not a neighbour yet
    assert settle(machine, governor, neighbours=0.9) == 1
    assert settle(machine, governor, neighbours=0.4) == 1  # between the marks: stay
    assert settle(machine, governor, neighbours=0.2) == 2


def test_many_cores_leave_what_neighbours_use_and_never_go_below_one():
    machine = FakeMachine()
    governor = machine.governor(cores=16)
    assert settle(machine, governor, neighbours=3.0) == 13
    assert settle(machine, governor, neighbours=40.0) == 1


def test_readings_inside_one_window_change_nothing():
    machine = FakeMachine()
    governor = machine.governor(cores=2)
    governor.adjust()  # first reading
    machine.run(0.1, 2, 1.0)
    assert governor.adjust() == 2  # 0.1 s is too short a window to judge


def test_a_fixed_thread_count_is_never_changed():
    machine = FakeMachine()
    governor = machine.governor(cores=2, fixed=2)
    assert settle(machine, governor, neighbours=1.0) == 2
    assert machine.set_calls == [2]


def test_without_proc_stat_it_keeps_its_count():
    governor = ThreadGovernor(cores=2, set_threads=lambda n: None, read_busy=lambda: None)
    assert governor.adjust() == 2 and governor.adjust() == 2


def test_cgroup_quota(tmp_path: Path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert cgroup_cpu_quota(tmp_path / "missing") is None


def test_proc_stat_is_read_per_cpu(tmp_path: Path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    stat.write_text("cpu  30 0 6 100 4 0 0 2 0 0\ncpu0 10 0 2 50 2 0 0 1 0 0\ncpu1 20 0 4 50 2 0 0 1 0 0\nintr 5\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert busy_cpu_seconds(None, stat) == pytest.approx(38 / ticks)
    assert busy_cpu_seconds({1}, stat) == pytest.approx(25 / ticks)


def test_real_counters_move_forward():
    before_busy, before_own = busy_cpu_seconds(), own_cpu_seconds()
    sum(i * i for i in range(2_000_000))  # some CPU time of our own
    assert own_cpu_seconds() > before_own
    after = busy_cpu_seconds()
    if before_busy is not None:
        assert after is not None and after >= before_busy


def test_fp32_tokens_do_not_depend_on_the_thread_count(tmp_path: Path):
    """The governor may change the thread count between any two steps; in fp32 no kernel's result
    depends on it, so a request's tokens are the same on 1 thread, on 2, or switching every step."""
    import torch

    from llmserve import LLM, SamplingParams
    from tests.tiny_models import save_tiny_model

    save_tiny_model("llama", tmp_path, hidden_size=256, intermediate_size=512)
    prompts = [{"prompt_token_ids": [(7 * i + 3 * j) % 200 + 3 for j in range(10 + 37 * i)]} for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, None):
            llm = LLM(str(tmp_path), dtype="float32", num_threads=threads or 2, max_num_batched_tokens=64,
                      kv_cache_memory="64MiB", max_model_len=512)
            if threads is None:  # switch between 1 and 2 threads at every step
                counts = iter([1, 2] * 1000)
                llm.engine.threads.adjust = lambda counts=counts: torch.set_num_threads(next(counts))
            results.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1] == results[2]
