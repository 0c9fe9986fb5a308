"""Which verified tokens are kept, and when a request drafts less or pauses."""

from __future__ import annotations

from llmserve.spec_decode.acceptance import RETRY_AFTER, AcceptanceTracker, accepted_length


def test_tokens_are_kept_up_to_the_first_rejected_draft():
    assert accepted_length([4, 5, 6], [4, 5]) == 2  # both held: the third token is the bonus
    assert accepted_length([4, 9, 6], [4, 5]) == 1
    assert accepted_length([7, 5, 6], [4, 5]) == 0
    assert accepted_length([3], []) == 0


def test_draft_length_follows_what_is_accepted():
    tracker = AcceptanceTracker()
    assert tracker.draft_length(4) == 4
    for _ in range(10):
        tracker.record(4, 4)
    assert tracker.draft_length(4) == 4
    for _ in range(10):
        tracker.record(4, 1)
    assert tracker.draft_length(4) == 2
    assert tracker.draft_length(1) == 1


def test_low_acceptance_pauses_then_retries():
    tracker = AcceptanceTracker()
    while tracker.paused_steps == 0:
        assert tracker.should_draft()
        tracker.record(3, 0)
    assert [tracker.should_draft() for _ in range(RETRY_AFTER)] == [False] * RETRY_AFTER
    assert tracker.should_draft()
    tracker.record(2, 2)  # a good try lifts the average above the bar: drafting goes on
    assert tracker.paused_steps == 0 and tracker.should_draft()
