"""Token bucket math on an injected clock: burst, refill, retry-after, all-or-none over several
buckets, batch costs, and the bound on buckets kept in process."""

from __future__ import annotations

import pytest

from cpa_scheduler.security.buckets import Decision, LocalBuckets, Rate, decide, refill


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


PER_MINUTE = Rate(60)  # one token a second, 60 at once


def test_a_new_bucket_admits_a_full_minute_at_once_then_refuses(clock: Clock) -> None:
    buckets = LocalBuckets(clock=clock)
    decisions = [buckets.take_now([("k", PER_MINUTE)], 1) for _ in range(61)]
    assert all(d.allowed for d in decisions[:60])
    refused = decisions[60]
    assert (refused.allowed, refused.refused) == (False, 0)
    assert refused.retry_after_s == pytest.approx(1.0)


def test_refill_admits_at_the_steady_rate_and_retry_after_says_when(clock: Clock) -> None:
    buckets = LocalBuckets(clock=clock)
    for _ in range(60):
        assert buckets.take_now([("k", PER_MINUTE)], 1).allowed
    clock.now += 0.25
    refused = buckets.take_now([("k", PER_MINUTE)], 1)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.75)
    clock.now += refused.retry_after_s
    assert buckets.take_now([("k", PER_MINUTE)], 1).allowed
    assert not buckets.take_now([("k", PER_MINUTE)], 1).allowed


def test_a_quiet_bucket_refills_to_its_capacity_and_no_further(clock: Clock) -> None:
    buckets = LocalBuckets(clock=clock)
    for _ in range(60):
        buckets.take_now([("k", PER_MINUTE)], 1)
    clock.now += 3600  # an hour idle: still one minute's worth
    admitted = 0
    while buckets.take_now([("k", PER_MINUTE)], 1).allowed:
        admitted += 1
    assert admitted == 60


def test_a_refused_call_takes_nothing(clock: Clock) -> None:
    buckets = LocalBuckets(clock=clock)
    assert buckets.take_now([("k", PER_MINUTE)], 59).allowed
    assert not buckets.take_now([("k", PER_MINUTE)], 2).allowed
    assert buckets.take_now([("k", PER_MINUTE)], 1).allowed


def test_several_buckets_are_taken_from_all_or_none(clock: Clock) -> None:
    buckets = LocalBuckets(clock=clock)
    small, large = ("ip", Rate(6)), ("key", Rate(600))
    for _ in range(6):
        assert buckets.take_now([small, large], 1).allowed
    refused = buckets.take_now([large, small], 1)
    assert (refused.allowed, refused.refused) == (False, 1)  # the second ask refused
    assert refused.retry_after_s == pytest.approx(10.0)  # 6 a minute: one per 10 s
    # The large bucket lost only the 6 admitted calls: 594 remain.
    for _ in range(594):
        assert buckets.take_now([large], 1).allowed
    assert not buckets.take_now([large], 1).allowed


def test_a_batch_costs_its_size_and_one_larger_than_the_bucket_waits_for_a_full_one(
    clock: Clock,
) -> None:
    buckets = LocalBuckets(clock=clock)
    rate = Rate(10)
    assert buckets.take_now([("k", rate)], 4).allowed
    refused = buckets.take_now([("k", rate)], 25)  # charged 10, the whole bucket
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(4 * 6.0)  # 4 tokens missing, 6 s each
    clock.now += refused.retry_after_s
    assert buckets.take_now([("k", rate)], 25).allowed


def test_keys_are_independent_and_the_least_recently_used_are_dropped(clock: Clock) -> None:
    buckets = LocalBuckets(clock=clock, max_buckets=3)
    for key in ("a", "b", "c"):
        assert buckets.take_now([(key, Rate(1))], 1).allowed
    assert not buckets.take_now([("a", Rate(1))], 1).allowed  # a is now the most recent
    assert buckets.take_now([("d", Rate(1))], 1).allowed  # drops b, the least recent
    assert len(buckets) == 3
    assert not buckets.take_now([("a", Rate(1))], 1).allowed
    assert buckets.take_now([("b", Rate(1))], 1).allowed  # forgotten: full again


def test_clock_going_backwards_adds_nothing() -> None:
    assert refill(1.0, -5.0, PER_MINUTE) == 1.0
    assert decide([0.5], [("k", PER_MINUTE)], 1) == Decision(False, 0.5, 0)
