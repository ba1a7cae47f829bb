"""The watchers' fan-out: bounded logs, progress coalesced to the latest, gaps and overflows sent
back to the store, and turns bounded per loop iteration and in flight."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from cpa_scheduler.domain import (
    EventPayload,
    JobEvent,
    JobState,
    JobStateChanged,
    TaskProgress,
    TaskState,
    TaskStateChanged,
)
from cpa_scheduler.events import (
    HEARTBEAT,
    FanOut,
    LiveEvent,
    Subscription,
    Watchers,
    superseded_progress,
)

TENANT, JOB = "tenant-a", "job-1"


def state(sequence: int, *, terminal: bool = False) -> JobEvent:
    payload: EventPayload = TaskStateChanged(
        task_id="t", from_state=TaskState.QUEUED, to_state=TaskState.RUNNING, attempt=sequence
    )
    if terminal:
        payload = JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.SUCCEEDED)
    return _event(sequence, payload, terminal=terminal)


def progress(sequence: int, percent: float, *, task_id: str = "t") -> JobEvent:
    payload = TaskProgress(task_id=task_id, attempt=1, percent=percent, message=f"{percent}%")
    return _event(sequence, payload)


def _event(sequence: int, payload: EventPayload, *, terminal: bool = False) -> JobEvent:
    return JobEvent(
        tenant=TENANT,
        job_id=JOB,
        sequence=sequence,
        create_time=datetime.now(UTC),
        payload=payload,
        terminal=terminal,
    )


async def read_available(subscription: Subscription) -> list[JobEvent | None]:
    """What the watcher reads until it has nothing left (None: told to re-read the store)."""
    read: list[JobEvent | None] = []
    while subscription.behind or not read:
        live = await asyncio.wait_for(subscription.next(), 5)
        if live is None:
            read.append(None)
            return read
        assert isinstance(live, LiveEvent)  # no heartbeats asked for here
        subscription.written()
        read.append(live.event)
    return read


async def test_progress_is_coalesced_to_the_latest_and_state_changes_are_kept_in_order() -> None:
    watchers = Watchers(max_buffered=64)
    slow = watchers.subscribe(TENANT, JOB)
    slow.resume_after(0)
    watchers.deliver(
        [
            state(1),
            progress(2, 10),
            progress(3, 50),
            progress(4, 5, task_id="other"),
            state(5),
            progress(6, 90),
            state(7, terminal=True),
        ]
    )

    read = await read_available(slow)

    # 2 and 3 were superseded by 6 (same task); the other task's progress stays.
    assert [e.sequence for e in read if e is not None] == [1, 4, 5, 6, 7]
    latest = read[3]
    assert latest is not None
    assert isinstance(latest.payload, TaskProgress)
    assert latest.payload.percent == 90
    assert read[-1] is not None
    assert read[-1].terminal


async def test_a_watcher_that_reads_as_events_come_gets_every_progress_event() -> None:
    watchers = Watchers(max_buffered=64)
    keeping_up = watchers.subscribe(TENANT, JOB)
    keeping_up.resume_after(0)
    received = []
    for sequence in range(1, 6):
        watchers.deliver([progress(sequence, sequence * 10)])
        received += await read_available(keeping_up)

    assert [e.sequence for e in received if e is not None] == [1, 2, 3, 4, 5]


async def test_a_watcher_that_does_not_read_holds_a_bounded_log_then_rereads_the_store() -> None:
    watchers = Watchers(max_buffered=8)
    stalled = watchers.subscribe(TENANT, JOB)
    stalled.resume_after(0)

    watchers.deliver([state(n) for n in range(1, 1001)])

    assert watchers.buffered() == 8  # the job's log, whatever was published
    assert stalled.behind <= 8
    # It fell behind the log's oldest entry: the store has what it missed.
    assert await read_available(stalled) == [None]
    assert stalled.rereads == 1
    # After the store read it follows the live feed again.
    stalled.resume_after(1000)
    watchers.deliver([state(1001, terminal=True)])
    [event] = await read_available(stalled)
    assert event is not None
    assert event.sequence == 1001
    assert event.terminal


async def test_a_gap_in_the_live_feed_sends_the_watcher_to_the_store() -> None:
    watchers = Watchers(max_buffered=64)
    subscription = watchers.subscribe(TENANT, JOB)
    subscription.resume_after(0)
    watchers.deliver([state(1), state(3)])  # 2 was lost between replicas

    read = await read_available(subscription)
    assert [e if e is None else e.sequence for e in read] == [1, None]


async def test_a_first_live_event_that_does_not_follow_the_store_read_sends_it_back() -> None:
    watchers = Watchers(max_buffered=64)
    subscription = watchers.subscribe(TENANT, JOB)
    watchers.deliver([state(5)])  # published while the store said "up to 3"
    subscription.resume_after(3)

    assert await read_available(subscription) == [None]


async def test_closing_releases_the_counts_and_the_log() -> None:
    watchers = Watchers(max_buffered=8)
    a = watchers.subscribe(TENANT, JOB)
    b = watchers.subscribe("tenant-b", JOB)
    assert (watchers.count, watchers.count_of(TENANT), watchers.count_of("tenant-b")) == (2, 1, 1)
    watchers.deliver([state(1)])
    a.close()
    b.close()
    assert (watchers.count, watchers.count_of(TENANT)) == (0, 0)
    assert watchers.buffered() == 0


async def test_a_quiet_caught_up_watcher_rereads_the_store() -> None:
    watchers = Watchers(max_buffered=8)
    quiet = watchers.subscribe(TENANT, JOB)
    quiet.resume_after(0)
    waiting = asyncio.create_task(quiet.next())
    await settle()  # it waits for an event (the last one may have been lost between replicas)

    assert watchers.reread_quiet(0.0) == 1
    assert await asyncio.wait_for(waiting, 5) is None
    assert watchers.reread_quiet(0.0) == 0  # not waiting any more


async def test_a_quiet_caught_up_watcher_is_told_to_write_a_heartbeat() -> None:
    watchers = Watchers(max_buffered=8)
    quiet = watchers.subscribe(TENANT, JOB)
    quiet.resume_after(0)
    before = quiet.last_activity_s
    waiting = asyncio.create_task(quiet.next())
    await settle()
    # Not quiet for long enough: nothing happens, and the timer is told when to look again.
    again_at = quiet.heartbeat_if_quiet(60.0)
    assert again_at >= quiet.last_sent_s + 60.0
    await settle()
    assert not waiting.done()

    quiet.heartbeat_if_quiet(0.0)
    assert await asyncio.wait_for(waiting, 5) is HEARTBEAT
    quiet.written()
    # A heartbeat is not news from the live feed: the quiet re-read still comes on time.
    assert quiet.last_activity_s == before
    assert quiet.last_sent_s > before
    waiting = asyncio.create_task(quiet.next())
    await settle()
    assert watchers.reread_quiet(0.0) == 1
    assert await asyncio.wait_for(waiting, 5) is None
    quiet.close()


async def test_a_watcher_with_something_to_write_writes_it_instead_of_a_heartbeat() -> None:
    watchers = Watchers(max_buffered=8)
    busy = watchers.subscribe(TENANT, JOB)
    busy.resume_after(0)
    assert busy.heartbeat_if_quiet(0.0) > 0  # not waiting in next(): nothing asked
    waiting = asyncio.create_task(busy.next())
    await settle()
    busy.heartbeat_if_quiet(0.0)
    watchers.deliver([state(1)])  # comes before the watcher's turn
    live = await asyncio.wait_for(waiting, 5)
    assert isinstance(live, LiveEvent)
    assert live.event.sequence == 1
    busy.written()
    waiting = asyncio.create_task(busy.next())
    await settle()
    assert not waiting.done()  # the heartbeat was dropped, not kept for later
    busy.close()
    waiting.cancel()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_turns_are_bounded_in_flight_and_handed_out_in_order() -> None:
    fanout = FanOut(turns_per_iteration=100, max_in_flight=4, park_after_s=3600)
    order: list[int] = []

    async def writer(n: int) -> asyncio.Future[None]:
        turn = await fanout.turn()
        order.append(n)
        return turn

    tasks = [asyncio.create_task(writer(n)) for n in range(10)]
    await settle()
    assert order == [0, 1, 2, 3]
    assert fanout.in_flight == 4
    assert fanout.waiting == 6

    fanout.done(await tasks[0])  # one write ended: one more may start
    await settle()
    assert order == [0, 1, 2, 3, 4]
    assert fanout.in_flight == 4

    for task in tasks[1:]:  # each ended write lets the next waiting one start
        fanout.done(await task)
    assert order == list(range(10))
    assert fanout.in_flight == 0


async def test_at_most_so_many_turns_start_per_loop_iteration() -> None:
    fanout = FanOut(turns_per_iteration=3, max_in_flight=100)
    granted: list[int] = []

    async def writer(n: int) -> None:
        fanout.done(await fanout.turn())
        granted.append(n)

    tasks = [asyncio.create_task(writer(n)) for n in range(9)]
    await asyncio.sleep(0)  # the writers queue their turns; the grant is scheduled
    waiting = [fanout.waiting]
    for _ in range(3):
        await asyncio.sleep(0)  # one loop iteration: one grant
        waiting.append(fanout.waiting)
    await asyncio.gather(*tasks)

    assert waiting == [9, 6, 3, 0]
    assert granted == list(range(9))


def test_superseded_progress_keeps_the_latest_of_each_task_and_every_state_change() -> None:
    events = [
        progress(1, 10),
        progress(2, 5, task_id="u"),
        state(3),
        progress(4, 20),
        progress(5, 30),
        progress(6, 6, task_id="u"),
        state(7, terminal=True),
    ]
    assert superseded_progress(events) == {0, 1, 3}
    assert superseded_progress([progress(1, 10)]) == set()
    assert superseded_progress([]) == set()
