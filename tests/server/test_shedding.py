"""Load shedding on a fake clock: drain rate, predicted waits, which class is refused first, Retry-After."""

from __future__ import annotations

import pytest

from llmserve.server.shedding import LATE, QUEUE_FULL, LoadShedder, Shed
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES

P0, P1, P2, P3 = range(4)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


_HELD: list = []  # tickets a test keeps queued: a dropped ticket leaves the queue


def hold(ticket) -> None:
    _HELD.append(ticket)


def shedder(max_queued: int | None = None, class_aware: bool = True) -> tuple[LoadShedder, Clock]:
    clock = Clock()
    return LoadShedder(DEFAULT_SERVICE_CLASSES, max_queued, class_aware, clock), clock


def serve(shed: LoadShedder, clock: Clock, tokens: int, seconds: float, rank: int = P3) -> None:
    """One request queued alone for `seconds`, then served: the drain rate becomes tokens/seconds."""
    ticket = shed.enter(rank, tokens)
    clock.now += seconds
    shed.leave(ticket, served=True)


def refusal(shed: LoadShedder, rank: int) -> Shed | None:
    try:
        shed.check(rank)
    except Shed as exc:
        return exc
    return None


def test_drain_rate_counts_only_busy_time():
    shed, clock = shedder()
    assert shed.drain_rate() is None
    serve(shed, clock, 100, 0.5)
    clock.now += 60  # idle: nobody queued, so this is not slowness
    serve(shed, clock, 100, 0.5)
    assert shed.drain_rate() == pytest.approx(200.0)


def test_drain_rate_forgets_old_departures():
    shed, clock = shedder()
    serve(shed, clock, 1000, 1.0)
    for _ in range(12):
        serve(shed, clock, 100, 1.0)
    assert shed.drain_rate() == pytest.approx(100.0)


def test_an_abandoned_request_leaves_the_queue_without_counting_as_served():
    shed, clock = shedder()
    ticket = shed.enter(P1, 50)
    clock.now += 1
    shed.leave(ticket, served=False)
    shed.leave(ticket, served=True)  # a second leave is a no-op
    assert shed.total_queued == 0 and shed.queued_tokens == [0, 0, 0, 0]
    assert shed.drain_rate() is None


def test_a_dropped_ticket_leaves_the_queue():
    shed, _ = shedder()
    shed.enter(P2, 40)  # a stream that never started: nobody holds its ticket
    assert shed.total_queued == 0 and shed.queued_tokens == [0, 0, 0, 0]


def test_predicted_wait_counts_the_tokens_at_or_above_the_class():
    shed, clock = shedder()
    serve(shed, clock, 100, 1.0)  # 100 tokens/s
    hold(shed.enter(P0, 30))
    hold(shed.enter(P1, 20))
    hold(shed.enter(P3, 500))
    # p0 sees its own 30 tokens, at the rate less what busy p1 and p3 are owed: (0.3 + 0.1) / 0.8.
    assert shed.predicted_wait(P0) == pytest.approx(30 / (100 * 0.5), rel=0.05)
    assert shed.predicted_wait(P3) == pytest.approx(550 / 100, rel=0.05)


def test_without_classes_the_wait_is_the_whole_queue():
    shed, clock = shedder(class_aware=False)
    serve(shed, clock, 100, 1.0)
    hold(shed.enter(P0, 30))
    hold(shed.enter(P3, 70))
    assert shed.predicted_wait(P0) == pytest.approx(1.0, rel=0.05)


def test_a_full_queue_refuses_the_lowest_class_first():
    shed, _ = shedder(max_queued=8)
    assert [shed.queue_limit(r) for r in range(4)] == [8, 6, 5, 4]
    for _ in range(4):
        hold(shed.enter(P3, 10))
    assert refusal(shed, P3).reason == QUEUE_FULL
    assert refusal(shed, P2) is None
    for _ in range(3):
        hold(shed.enter(P2, 10))
    assert [refusal(shed, r) is None for r in range(4)] == [True, False, False, False]
    hold(shed.enter(P0, 10))
    assert refusal(shed, P0).reason == QUEUE_FULL


def test_without_classes_a_full_queue_refuses_everyone_alike():
    shed, _ = shedder(max_queued=2, class_aware=False)
    hold(shed.enter(P3, 10))
    assert refusal(shed, P3) is None
    hold(shed.enter(P3, 10))
    assert all(refusal(shed, r) is not None for r in range(4))


def test_a_late_class_is_refused_and_so_is_everything_below_it():
    shed, clock = shedder()
    serve(shed, clock, 100, 1.0)  # 100 tokens/s
    hold(shed.enter(P1, 70))  # p1's wait: 0.7s against a 0.5s target
    assert refusal(shed, P0) is None
    for rank in (P1, P2, P3):
        shed_error = refusal(shed, rank)
        assert shed_error.reason == LATE and shed_error.status == 429
        assert "p1" in shed_error.message


def test_a_class_with_no_target_is_only_refused_for_others():
    shed, clock = shedder()
    serve(shed, clock, 100, 1.0)
    hold(shed.enter(P3, 100_000))  # p3 may wait as long as it takes
    assert refusal(shed, P3) is None and refusal(shed, P0) is None


def test_an_idle_class_does_not_refuse_the_ones_below_it():
    shed, clock = shedder()
    serve(shed, clock, 10, 1.0)  # 10 tokens/s: a p0 request alone would already be "late"
    hold(shed.enter(P2, 5))  # p2: 0.5s of 1s
    assert refusal(shed, P2) is None and refusal(shed, P3) is None


def test_retry_after_is_the_predicted_excess_rounded_up():
    shed, clock = shedder()
    serve(shed, clock, 100, 1.0)
    hold(shed.enter(P2, 340))  # wait 3.4s against 1s: 2.4s too long
    assert refusal(shed, P2).headers["Retry-After"] == "3"


def test_retry_after_on_a_full_queue_is_the_time_to_drain_below_the_limit():
    shed, clock = shedder(max_queued=4)
    serve(shed, clock, 100, 1.0)
    for _ in range(3):
        hold(shed.enter(P3, 150))  # p3 may fill 2 of 4; three queued: two over, 150 tokens each at 100/s
    assert refusal(shed, P3).headers["Retry-After"] == "3"


def test_before_any_measurement_only_a_full_queue_refuses():
    shed, _ = shedder(max_queued=1)
    hold(shed.enter(P1, 10_000))
    error = refusal(shed, P0)
    assert error.reason == QUEUE_FULL and error.headers["Retry-After"] == "1"
    shed.max_queued = None
    assert refusal(shed, P1) is None
