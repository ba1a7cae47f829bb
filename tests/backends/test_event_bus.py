"""The Redis event bus: events of every replica reach the watchers of every replica."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from cpa_scheduler.domain import (
    EventPayload,
    JobEvent,
    JobState,
    JobStateChanged,
    TaskProgress,
    TaskState,
    TaskStateChanged,
)
from cpa_scheduler.events import LiveEvent, RedisEventBus, Subscription

from .conftest import DEADLINE_S

BusFactory = Callable[[], Awaitable[RedisEventBus]]
TENANT = "tenant-a"


def event(sequence: int, *, job_id: str = "job-1", terminal: bool = False) -> JobEvent:
    payloads: list[EventPayload] = [
        JobStateChanged(from_state=None, to_state=JobState.PENDING),
        TaskStateChanged(
            task_id="t1",
            from_state=TaskState.QUEUED,
            to_state=TaskState.RUNNING,
            attempt=1,
            agent_id="agent-1",
        ),
        TaskProgress(task_id="t1", attempt=1, percent=50, message="half way"),
    ]
    return JobEvent(
        tenant=TENANT,
        job_id=job_id,
        sequence=sequence,
        create_time=datetime.now(UTC),
        payload=payloads[sequence % len(payloads)],
        terminal=terminal,
    )


async def next_event(subscription: Subscription) -> JobEvent:
    try:
        live = await asyncio.wait_for(subscription.next(), DEADLINE_S)
    except TimeoutError:
        pytest.fail("the event did not arrive")
    assert isinstance(live, LiveEvent), f"the watcher was told to re-read the store: {live}"
    subscription.written()
    return live.event


def is_empty(subscription: Subscription) -> bool:
    # Delivery to the watchers of one replica is synchronous: once a sibling subscription has
    # an event, this one would have it too.
    return subscription.behind == 0


async def test_event_published_on_one_replica_reaches_watchers_of_another(
    buses: BusFactory,
) -> None:
    publisher, watcher_side = await buses(), await buses()
    subscription = watcher_side.subscribe(TENANT, "job-1")
    events = [event(1), event(2, terminal=True)]

    await publisher.publish(events)

    received = [await next_event(subscription), await next_event(subscription)]
    assert received == events
    assert [e.tenant for e in received] == [TENANT, TENANT]
    assert received[1].terminal


async def test_watchers_of_the_publishing_replica_get_each_event_once(buses: BusFactory) -> None:
    a, b = await buses(), await buses()
    subscription = a.subscribe(TENANT, "job-1")
    first, second = event(1), event(2)

    await a.publish([first])
    await b.publish([second])

    assert await next_event(subscription) == first
    # Not the first one again (a's own message comes back from Redis and is skipped).
    assert await next_event(subscription) == second


async def test_watchers_get_only_their_job(buses: BusFactory) -> None:
    publisher, watcher_side = await buses(), await buses()
    mine = watcher_side.subscribe(TENANT, "job-1")
    other_job = watcher_side.subscribe(TENANT, "job-2")
    other_tenant = watcher_side.subscribe("tenant-b", "job-1")

    await publisher.publish([event(1)])

    assert (await next_event(mine)).sequence == 1
    assert is_empty(other_job)
    assert is_empty(other_tenant)


async def test_closed_subscription_gets_nothing(buses: BusFactory) -> None:
    publisher, watcher_side = await buses(), await buses()
    closed = watcher_side.subscribe(TENANT, "job-1")
    still_open = watcher_side.subscribe(TENANT, "job-1")
    closed.close()

    await publisher.publish([event(1)])

    assert (await next_event(still_open)).sequence == 1
    assert is_empty(closed)


async def test_publish_survives_redis_being_unreachable(
    unreachable_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cpa_scheduler.events.redis_bus")
    client = Redis.from_url(unreachable_redis_url)
    bus = RedisEventBus(client, prefix="unused")  # not started: nothing to listen to
    try:
        subscription = bus.subscribe(TENANT, "job-1")

        await bus.publish([event(1)])  # events are stored first: the live feed may fail

        assert (await next_event(subscription)).sequence == 1
        await bus.close()  # sends what publish queued: the failure is logged, not raised
        assert "publishing 1 job events to Redis failed" in caplog.text
    finally:
        await bus.close()
        await client.aclose()
