"""The scheduler on a fake model: class order, deadlines, shares, starvation freedom, preemption order."""

from __future__ import annotations

import itertools

import pytest

from llmserve.config import SchedulerConfig
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.policy import FCFSPolicy, ServiceClassPolicy
from llmserve.engine.prefix_cache import PrefixCache, root_hash
from llmserve.engine.request import Request, RequestStatus
from llmserve.engine.scheduler import Scheduler
from llmserve.sampling_params import SamplingParams
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES

P0, P1, P2, P3 = range(4)


class StrictPriority:
    """Class order without owed shares: what the shares guard against."""

    name = "strict"
    classes = None

    def key(self, request: Request) -> tuple:
        return (request.priority, request.sequence_number)


class FakeEngine:
    """Drives a Scheduler as the engine would, with a model that emits token 7 once a request catches up."""

    def __init__(self, policy: str = "classes", num_blocks: int = 1000, block_size: int = 4,
                 prefix_caching: bool = False, **config) -> None:
        self.blocks = BlockManager(num_blocks, block_size, PrefixCache(root_hash("fake")) if prefix_caching else None)
        self.scheduler = Scheduler(SchedulerConfig(policy=policy, **config), self.blocks)
        self.ids = itertools.count()
        self.finished: list[Request] = []
        self.now = 1000.0

    def add(self, priority: int, prompt_len: int = 8, max_tokens: int = 4, arrival: float | None = None,
            prompt: list[int] | None = None) -> Request:
        number = next(self.ids)
        prompt = [5] * prompt_len if prompt is None else prompt
        request = Request(f"r{number}", f"r{number}", 0, prompt, SamplingParams(), max_tokens, (),
                          priority=priority, sequence_number=number)
        request.times.arrival = self.now if arrival is None else arrival
        self.scheduler.add_request(request)
        return request

    def step(self) -> list[tuple[Request, int]]:
        plan = self.scheduler.schedule()
        for request, num_new in plan.scheduled:
            request.num_computed_tokens += num_new
            self.blocks.cache_full_blocks(request)
        for request, _ in plan.scheduled:
            if request.num_pending_tokens == 0:
                request.output_token_ids.append(7)
                if request.times.first_token is None:
                    request.times.first_token = self.now
                if len(request.output_token_ids) >= request.max_tokens:
                    self.scheduler.finish(request, RequestStatus.FINISHED_LENGTH)
                    self.finished.append(request)
        self.now += 0.1
        return plan.scheduled


def tokens_by_class(scheduled: list[tuple[Request, int]]) -> dict[int, int]:
    totals: dict[int, int] = {}
    for request, num_new in scheduled:
        totals[request.priority] = totals.get(request.priority, 0) + num_new
    return totals


@pytest.mark.parametrize("policy, expected", [("classes", [P0, P1, P2, P3]), ("fcfs", [P3, P2, P1, P0])])
def test_admission_order_by_class_or_arrival(policy, expected):
    engine = FakeEngine(policy, max_num_seqs=1)
    for priority in (P3, P2, P1, P0):
        engine.add(priority, max_tokens=1)
    while engine.scheduler.num_unfinished:
        engine.step()
    assert [r.priority for r in engine.finished] == expected


def test_within_a_class_the_earliest_deadline_goes_first():
    engine = FakeEngine(max_num_seqs=1)
    late = engine.add(P1, max_tokens=1, arrival=1000.0)
    early = engine.add(P1, max_tokens=1, arrival=999.0)  # sent first, reached the engine second
    engine.step()
    assert engine.finished == [early]
    engine.step()
    assert engine.finished == [early, late]


def test_a_preempted_request_is_ranked_by_its_e2e_deadline():
    policy = ServiceClassPolicy(DEFAULT_SERVICE_CLASSES)
    request = Request("a", "a", 0, [1], SamplingParams(), 4, (), priority=P1)
    request.times.arrival = 10.0
    assert policy.deadline(request) == pytest.approx(10.5)  # TTFT target
    request.times.first_token = 10.2
    assert policy.deadline(request) == pytest.approx(13.0)  # E2E target
    assert ServiceClassPolicy(DEFAULT_SERVICE_CLASSES).deadline(
        Request("b", "b", 0, [1], SamplingParams(), 4, (), priority=P3)) == float("inf")


def test_every_busy_class_gets_its_share_of_the_token_budget():
    engine = FakeEngine(max_num_batched_tokens=100)
    for priority in (P0, P1, P2, P3):
        engine.add(priority, prompt_len=1000)
    assert tokens_by_class(engine.step()) == {P0: 40, P1: 30, P2: 20, P3: 10}


def test_shares_are_renormalised_over_the_busy_classes():
    engine = FakeEngine(max_num_batched_tokens=100)
    engine.add(P0, prompt_len=1000)
    engine.add(P3, prompt_len=1000)
    assert tokens_by_class(engine.step()) == {P0: 80, P3: 20}  # 0.4 : 0.1


def test_a_share_a_class_cannot_use_goes_to_the_others():
    engine = FakeEngine(max_num_batched_tokens=100)
    engine.add(P0, prompt_len=1000)
    engine.add(P3, prompt_len=5)
    assert tokens_by_class(engine.step()) == {P0: 95, P3: 5}


def test_without_contention_fcfs_and_classes_schedule_alike():
    plans = []
    for policy in ("classes", "fcfs"):
        engine = FakeEngine(policy, max_num_batched_tokens=64, max_num_seqs=4)
        for length in (30, 50, 7, 90, 12):
            engine.add(P3, prompt_len=length)
        plans.append([[(r.request_id, n) for r, n in engine.step()] for _ in range(12)])
    assert plans[0] == plans[1]


def _endless_high_class_load(policy) -> tuple[Request, int]:
    """A new p0 request every step, each holding a slot for 20 steps; one p3 request among them."""
    engine = FakeEngine(max_num_seqs=4, max_num_batched_tokens=64)
    if policy is not None:
        engine.scheduler.policy = policy
    for _ in range(4):
        engine.add(P0, max_tokens=20)
    background = engine.add(P3, max_tokens=10)
    for step in range(1, 400):
        engine.add(P0, max_tokens=20)
        engine.step()
        if background.is_finished:
            return background, step
    return background, -1


def test_a_background_request_finishes_under_endless_p0_load():
    background, steps = _endless_high_class_load(None)
    assert background.status == RequestStatus.FINISHED_LENGTH
    assert steps < 60  # it waits for one p0 request to leave, then keeps its owed slot


def test_strict_priority_alone_would_starve_it():
    background, _ = _endless_high_class_load(StrictPriority())
    assert not background.is_finished


def test_a_higher_class_preempts_the_lowest_class_latest_arrival_first():
    engine = FakeEngine(max_num_seqs=10)
    p3s = [engine.add(P3, max_tokens=50) for _ in range(4)]
    p2s = [engine.add(P2, max_tokens=50) for _ in range(6)]
    engine.step()
    urgent = engine.add(P0, max_tokens=5)
    plan = engine.scheduler.schedule()
    assert plan.preempted == [p3s[-1]]
    assert urgent in [r for r, _ in plan.scheduled]
    assert p3s[-1].status == RequestStatus.PREEMPTED and p3s[-1].num_computed_tokens == 0
    assert not p3s[-1].block_ids
    assert all(r.status == RequestStatus.RUNNING for r in p2s + p3s[:3])


def test_preemption_stops_at_a_class_holding_only_its_owed_slots():
    engine = FakeEngine(max_num_seqs=10)
    p3s = [engine.add(P3, max_tokens=50) for _ in range(4)]
    p2s = [engine.add(P2, max_tokens=50) for _ in range(6)]
    engine.step()
    for _ in range(8):
        engine.add(P0, max_tokens=50)
    preempted = engine.scheduler.schedule().preempted
    # Busy classes p0, p2, p3 are owed 5, 2 and 1 slots of 10: p3 keeps one, p2 keeps two.
    assert preempted == [p3s[3], p3s[2], p3s[1], p2s[5], p2s[4], p2s[3], p2s[2]]
    assert [r.status for r in p3s].count(RequestStatus.RUNNING) == 1
    assert [r.status for r in p2s].count(RequestStatus.RUNNING) == 2


def test_a_higher_class_preempts_for_kv_blocks_too():
    engine = FakeEngine(max_num_seqs=8, num_blocks=40, block_size=4)  # admission keeps 1 block spare
    low = [engine.add(P3, prompt_len=64, max_tokens=50) for _ in range(2)]  # 16 blocks each
    engine.step()
    urgent = engine.add(P0, prompt_len=32)  # 8 blocks: only 7 are free
    plan = engine.scheduler.schedule()
    assert plan.preempted == [low[1]]
    assert urgent.status == RequestStatus.RUNNING


def test_fcfs_never_preempts_to_admit():
    engine = FakeEngine("fcfs", max_num_seqs=2)
    engine.add(P3, max_tokens=50)
    engine.add(P3, max_tokens=50)
    engine.step()
    urgent = engine.add(P0)
    plan = engine.scheduler.schedule()
    assert plan.preempted == [] and urgent.status == RequestStatus.WAITING


def test_out_of_blocks_preempts_the_lowest_class_not_the_latest_arrival():
    engine = FakeEngine(max_num_seqs=8, num_blocks=12, block_size=4, max_num_batched_tokens=64)
    high = engine.add(P0, prompt_len=16, max_tokens=40)
    low = engine.add(P3, prompt_len=16, max_tokens=40)
    engine.add(P3, prompt_len=3, max_tokens=40)
    engine.step()
    for _ in range(20):
        engine.step()
        if low.num_preemptions:
            break
    assert low.num_preemptions == 1 and high.num_preemptions == 0


def test_policy_is_fcfs_or_classes():
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        FakeEngine("lifo")
    assert isinstance(FakeEngine("fcfs").scheduler.policy, FCFSPolicy)


def test_preempting_a_sharer_of_the_cached_prefix_counts_its_shared_blocks_once():
    """A p0 request whose cached prefix is held by the p3 victim: those blocks come back to the pool
    only to be taken again, so they cannot pay for the new ones. Counting them would preempt the
    victim and then run out of blocks; instead the p0 request waits until room is real."""
    engine = FakeEngine(num_blocks=7, prefix_caching=True, max_num_seqs=4)  # p3 is owed 1 slot of 4
    shared = [11, 12, 13, 14, 15, 16, 17, 18]
    engine.add(P3, prompt=[1, 2, 3], max_tokens=3)  # 1 block; protected: p3's one owed slot
    engine.add(P0, prompt=[4] * 6, max_tokens=3)  # 2 blocks
    sharer = engine.add(P3, prompt=shared + [19], max_tokens=3)  # 3 blocks, the first 2 named
    engine.step()
    assert engine.blocks.num_free_blocks == 1
    newcomer = engine.add(P0, prompt=shared + [20] * 9)  # 5 blocks: 2 cached + 3 new
    engine.step()  # preempting the sharer frees 1 block it alone holds: not enough
    assert newcomer.status == RequestStatus.WAITING and sharer.num_preemptions == 0
    while engine.scheduler.num_unfinished:
        engine.step()
    assert newcomer.num_cached_tokens == 8
    assert engine.blocks.num_free_blocks == 7 and not any(engine.blocks.ref_counts)
