"""The work queue contract, run against the in-process and the Redis queue; then what only the
shared Redis queue promises: several replicas, redelivery of a dead replica's work, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from cpa_scheduler.dispatch import Requirement
from cpa_scheduler.domain import ToDo
from cpa_scheduler.queue import RedisWorkQueue, WorkItem
from cpa_scheduler.redis_keys import QUEUE_CONSUMER_GROUP, RedisKeys
from cpa_scheduler.storage import QueuedTask
from tests.fixtures.tcp_proxy import TcpProxy

from .conftest import DEADLINE_S, Backend, QueueFactory, wait_until

TENANT = "tenant-a"


def queued(
    job_id: str,
    task_id: str = "t1",
    *,
    action: str = "click",
    capabilities: frozenset[str] = frozenset(),
    labels: dict[str, str] | None = None,
    attempt: int = 0,
    not_before: datetime | None = None,
) -> QueuedTask:
    return QueuedTask(
        tenant=TENANT,
        job_id=job_id,
        todo=ToDo(
            id=task_id,
            action=action,
            description="press the button",
            params={"nested": {"values": [1, 2.5, "x"]}},
            timeout_s=30.0,
            depends_on=("t0",) if task_id != "t0" else (),
            required_capabilities=capabilities,
            required_labels=labels or {},
        ),
        attempt=attempt,
        not_before=not_before,
    )


def requirement_of(task: QueuedTask) -> Requirement:
    return Requirement.of(task.tenant, task.todo)


def tasks_of(items: list[WorkItem]) -> list[QueuedTask]:
    return [item.task for item in items]


# -- the contract: both implementations ----------------------------------------------------------


async def test_published_task_is_taken_once_and_gone_after_ack(queues: QueueFactory) -> None:
    replica = await queues()
    task = queued("job-1", attempt=2)
    await replica.queue.publish([task])

    items = await replica.queue.take(requirement_of(task), 10)

    assert tasks_of(items) == [task]
    assert await replica.queue.take(requirement_of(task), 10) == []
    await replica.queue.ack(items)
    assert await replica.queue.requirements() == []


async def test_requirements_whose_old_text_keys_collided_get_separate_queues(
    queues: QueueFactory,
) -> None:
    # ('A', 'echo', {'c|d'}) and ('A|echo', 'c', {'d'}) were both `A|echo|c|d|` before.
    first = queued("job-1", action="echo", capabilities=frozenset({"c|d"}))
    second = QueuedTask(
        tenant="A|echo",
        job_id="job-2",
        todo=ToDo(id="t1", action="c", required_capabilities=frozenset({"d"})),
        attempt=0,
    )
    first = QueuedTask(tenant="A", job_id=first.job_id, todo=first.todo, attempt=0)
    replica = await queues()
    await replica.queue.publish([first, second])

    assert tasks_of(await replica.queue.take(requirement_of(first), 10)) == [first]
    assert tasks_of(await replica.queue.take(requirement_of(second), 10)) == [second]


async def test_publish_calls_on_ready(queues: QueueFactory) -> None:
    replica = await queues()

    await replica.queue.publish([queued("job-1")])

    await replica.ready.wait()


async def test_tasks_of_one_requirement_come_first_in_first_out(queues: QueueFactory) -> None:
    replica = await queues()
    first = [queued(f"job-{n}") for n in range(3)]
    second = [queued(f"job-{n}") for n in range(3, 6)]
    await replica.queue.publish(first)
    await replica.queue.publish(second)

    items = await replica.queue.take(requirement_of(first[0]), 10)

    assert tasks_of(items) == first + second


async def test_take_returns_at_most_max_items(queues: QueueFactory) -> None:
    replica = await queues()
    tasks = [queued(f"job-{n}") for n in range(5)]
    await replica.queue.publish(tasks)
    requirement = requirement_of(tasks[0])

    assert await replica.queue.take(requirement, 0) == []
    assert tasks_of(await replica.queue.take(requirement, 2)) == tasks[:2]
    assert tasks_of(await replica.queue.take(requirement, 10)) == tasks[2:]


async def test_requirements_lists_queues_with_work_oldest_first(queues: QueueFactory) -> None:
    replica = await queues()
    click = queued("job-1")
    mail = queued("job-2", action="send_mail", capabilities=frozenset({"graph", "outlook"}))
    labelled = queued("job-3", labels={"site": "berlin", "os": "windows"})
    await replica.queue.publish([click, mail])
    await replica.queue.publish([labelled])

    assert await replica.queue.requirements() == [
        requirement_of(click),
        requirement_of(mail),
        requirement_of(labelled),
    ]
    # Each requirement has a queue of its own.
    items = await replica.queue.take(requirement_of(mail), 10)
    assert tasks_of(items) == [mail]
    await replica.queue.ack(items)
    assert await replica.queue.requirements() == [requirement_of(click), requirement_of(labelled)]


async def test_take_of_a_requirement_without_work_is_empty(queues: QueueFactory) -> None:
    replica = await queues()

    assert await replica.queue.take(Requirement(tenant=TENANT, action="click"), 5) == []


async def test_delayed_task_becomes_ready_after_not_before(queues: QueueFactory) -> None:
    replica = await queues()
    not_before = datetime.now(UTC) + timedelta(milliseconds=300)
    task = queued("job-1", attempt=1, not_before=not_before)
    await replica.queue.publish([task])

    assert await replica.queue.take(requirement_of(task), 10) == []
    assert await replica.queue.requirements() == []

    items: list[WorkItem] = []
    while not items:
        await replica.ready.wait()
        items = await replica.queue.take(requirement_of(task), 10)
    assert datetime.now(UTC) >= not_before
    assert tasks_of(items) == [task]


async def test_task_whose_not_before_has_passed_is_ready_at_once(queues: QueueFactory) -> None:
    replica = await queues()
    task = queued("job-1", not_before=datetime.now(UTC) - timedelta(seconds=1))

    await replica.queue.publish([task])

    assert tasks_of(await replica.queue.take(requirement_of(task), 10)) == [task]


async def test_a_withdrawn_task_is_gone_and_its_requirement_empty(queues: QueueFactory) -> None:
    # A task cancelled (or never started in time) while QUEUED: with no agent for its
    # requirement, nobody would ever take the entry, so withdraw must remove it.
    replica = await queues()
    task, other = queued("job-1", action="uia"), queued("job-2", action="uia")
    await replica.queue.publish([task, other])

    await replica.queue.withdraw([task])

    assert tasks_of(await replica.queue.take(requirement_of(task), 10)) == [other]
    await replica.queue.withdraw([other])
    assert await replica.queue.requirements() == []
    assert await replica.queue.take(requirement_of(task), 10) == []


async def test_withdrawing_an_unknown_task_changes_nothing(queues: QueueFactory) -> None:
    replica = await queues()
    task = queued("job-1")
    await replica.queue.publish([task])

    await replica.queue.withdraw([queued("job-9"), queued("job-1", attempt=4)])

    assert tasks_of(await replica.queue.take(requirement_of(task), 10)) == [task]


async def test_a_withdrawn_delayed_task_never_becomes_ready(queues: QueueFactory) -> None:
    replica = await queues()
    soon = datetime.now(UTC) + timedelta(milliseconds=100)
    withdrawn = queued("job-1", attempt=1, not_before=soon)
    kept = queued("job-2", attempt=1, not_before=soon + timedelta(milliseconds=100))
    await replica.queue.publish([withdrawn, kept])

    await replica.queue.withdraw([withdrawn])

    items: list[WorkItem] = []
    while not items:
        await replica.ready.wait()
        items = await replica.queue.take(requirement_of(kept), 10)
    assert tasks_of(items) == [kept]
    assert await replica.queue.take(requirement_of(kept), 10) == []


async def test_a_withdrawn_task_can_be_queued_again(queues: QueueFactory) -> None:
    # RetryJob queues a cancelled task again at the same attempt number.
    replica = await queues()
    task = queued("job-1", attempt=2)
    await replica.queue.publish([task])
    await replica.queue.withdraw([task])

    await replica.queue.publish([task])

    assert tasks_of(await replica.queue.take(requirement_of(task), 10)) == [task]


# -- several replicas sharing the Redis queue ----------------------------------------------------


async def test_publish_on_one_replica_wakes_the_others(redis_queues: QueueFactory) -> None:
    publisher = await redis_queues(replica_id="replica-a")
    dispatcher = await redis_queues(replica_id="replica-b")
    task = queued("job-1")

    await publisher.queue.publish([task])

    await dispatcher.ready.wait()
    assert tasks_of(await dispatcher.queue.take(requirement_of(task), 10)) == [task]


async def test_a_task_still_queued_is_not_published_twice(redis_queues: QueueFactory) -> None:
    # The reconciler re-publishes what the store holds as QUEUED; work already in the queue
    # must not pile up, while work whose entry was acked (or wiped) may come back.
    replica = await redis_queues()
    task = queued("job-1", attempt=1)
    await replica.queue.publish([task])
    await replica.queue.publish([task, queued("job-2")])

    items = await replica.queue.take(requirement_of(task), 10)
    assert [t.job_id for t in tasks_of(items)] == ["job-1", "job-2"]
    await replica.queue.ack(items)
    await replica.queue.publish([task])
    assert tasks_of(await replica.queue.take(requirement_of(task), 10)) == [task]


async def test_a_publish_cut_short_never_leaves_a_marker_without_its_entry(
    redis_queues: QueueFactory, redis_backend: Backend
) -> None:
    # A marker tells the reconciler "already queued": one without its stream entry would strand
    # the task for ever. Cut publishes short at every point of their progress (as a crash or a
    # cancelled caller would) and check that each task is either fully queued or not at all.
    replica = await redis_queues()
    keys = RedisKeys(redis_backend.prefix)
    assert redis_backend.redis is not None
    tasks = [queued(f"job-{n}") for n in range(40)]
    for n, task in enumerate(tasks):
        publishing = asyncio.create_task(replica.queue.publish([task]))
        for _ in range(n % 8):
            await asyncio.sleep(0)  # let it progress that many steps
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
    redis = redis_backend.redis
    stream = keys.queue_stream(requirement_of(tasks[0]).key)

    async def marked_and_queued() -> tuple[set[str], set[str]]:
        marked = {
            task.job_id
            for task in tasks
            if await redis.exists(keys.queue_marker(task.job_id, "t1", 0))
        }
        entries = await redis.xrange(stream) or []
        queued_ids = {json.loads(fields[b"task"])["job_id"] for _, fields in entries if fields}
        return marked, queued_ids

    async def consistent() -> bool:
        marked, queued_ids = await marked_and_queued()
        return marked == queued_ids

    # A script whose answer was abandoned may still be running in Redis: wait for it.
    await wait_until(consistent, what="every marked task to have its stream entry")
    _, taken = await marked_and_queued()
    assert 0 < len(taken) < len(tasks)  # the cuts landed both before and after the publish


async def test_replicas_never_take_the_same_entry(redis_queues: QueueFactory) -> None:
    a = await redis_queues(replica_id="replica-a")
    b = await redis_queues(replica_id="replica-b")
    tasks = [queued(f"job-{n}") for n in range(10)]
    await a.queue.publish(tasks)

    taken_by_a = await a.queue.take(requirement_of(tasks[0]), 4)
    taken_by_b = await b.queue.take(requirement_of(tasks[0]), 10)

    assert tasks_of(taken_by_a) + tasks_of(taken_by_b) == tasks


async def test_work_of_a_dead_replica_is_taken_by_another_after_claim_idle(
    redis_queues: QueueFactory, redis_backend: Backend, redis_client: Redis
) -> None:
    dying = await redis_queues(replica_id="replica-a", claim_idle_ms=200)
    survivor = await redis_queues(replica_id="replica-b", claim_idle_ms=200)
    task = queued("job-1", attempt=3)
    requirement = requirement_of(task)
    await dying.queue.publish([task])
    assert tasks_of(await dying.queue.take(requirement, 10)) == [task]
    # Taken and not idle yet: nobody else gets it.
    assert await survivor.queue.take(requirement, 10) == []

    await dying.queue.close()  # and never acks

    items: list[WorkItem] = []
    while not items:
        await survivor.ready.wait()  # the survivor notices work idle for claim_idle_ms
        items = await survivor.queue.take(requirement, 10)
    assert tasks_of(items) == [task]

    await survivor.queue.ack(items)
    stream = RedisKeys(redis_backend.prefix).queue_stream(requirement.key)
    assert await redis_client.xlen(stream) == 0
    assert (await redis_client.xpending(stream, QUEUE_CONSUMER_GROUP))["pending"] == 0
    assert await survivor.queue.requirements() == []


async def test_work_a_replica_took_and_never_acked_comes_back_to_it(
    redis_queues: QueueFactory,
) -> None:
    # An assignment that failed before commit leaves the entry unacked: it is delivered again.
    replica = await redis_queues(claim_idle_ms=200)
    task = queued("job-1")
    await replica.queue.publish([task])
    assert tasks_of(await replica.queue.take(requirement_of(task), 10)) == [task]

    items: list[WorkItem] = []
    while not items:
        await replica.ready.wait()
        items = await replica.queue.take(requirement_of(task), 10)
    assert tasks_of(items) == [task]


async def test_delayed_task_is_moved_once_with_several_movers(
    redis_queues: QueueFactory, redis_backend: Backend, redis_client: Redis
) -> None:
    replicas = [await redis_queues(replica_id=f"replica-{n}") for n in range(3)]
    task = queued("job-1", not_before=datetime.now(UTC) + timedelta(milliseconds=200))
    await replicas[0].queue.publish([task])

    items: list[WorkItem] = []
    while not items:
        await replicas[1].ready.wait()
        items = await replicas[1].queue.take(requirement_of(task), 10)

    assert tasks_of(items) == [task]
    assert await redis_client.zcard(RedisKeys(redis_backend.prefix).queue_delayed) == 0
    assert await replicas[2].queue.take(requirement_of(task), 10) == []


async def test_unreadable_entry_is_dropped(
    redis_queues: QueueFactory, redis_backend: Backend, redis_client: Redis
) -> None:
    replica = await redis_queues()
    task = queued("job-1")
    stream = RedisKeys(redis_backend.prefix).queue_stream(requirement_of(task).key)
    await redis_client.xadd(stream, {"task": "{not json"})
    await replica.queue.publish([task])

    assert tasks_of(await replica.queue.take(requirement_of(task), 10)) == [task]
    assert await redis_client.xlen(stream) == 1  # only the readable one, until acked


async def test_queue_recovers_when_redis_lost_its_streams(
    redis_queues: QueueFactory, redis_backend: Backend, redis_client: Redis
) -> None:
    replica = await redis_queues()
    first, second = queued("job-1"), queued("job-2")
    requirement = requirement_of(first)
    await replica.queue.publish([first])
    assert tasks_of(await replica.queue.take(requirement, 10)) == [first]

    # Wiped: the stream and its consumer group are gone; the reconciler publishes again.
    await redis_client.delete(RedisKeys(redis_backend.prefix).queue_stream(requirement.key))
    await replica.queue.publish([second])

    assert tasks_of(await replica.queue.take(requirement, 10)) == [second]


async def test_listener_resubscribes_after_the_connection_is_cut(
    redis_queues: QueueFactory, redis_proxy: tuple[TcpProxy, str]
) -> None:
    proxy, proxied_url = redis_proxy
    proxied = Redis.from_url(proxied_url)
    try:
        listener = await redis_queues(replica_id="replica-a", redis=proxied)
        publisher = await redis_queues(replica_id="replica-b")

        proxy.cut()
        await listener.ready.wait()  # subscribed again (notifications meanwhile may be lost)

        task = queued("job-1")
        await publisher.queue.publish([task])
        await listener.ready.wait()
        taken: list[QueuedTask] = []

        async def took() -> bool:
            # A pooled connection the cut reset fails its next command once (the dispatcher's
            # next round takes again); the one after gets a new connection.
            try:
                taken.extend(tasks_of(await listener.queue.take(requirement_of(task), 10)))
            except RedisConnectionError:
                return False
            return True

        await wait_until(took, what="the listener's replica takes the task")
        assert taken == [task]
        await listener.queue.close()
    finally:
        await proxied.aclose()


async def test_background_tasks_survive_a_redis_outage(
    redis_queues: QueueFactory,
    redis_backend: Backend,
    redis_client: Redis,
    redis_proxy: tuple[TcpProxy, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cpa_scheduler.queue.redis_queue")
    proxy, proxied_url = redis_proxy
    proxied = Redis.from_url(proxied_url)
    # Not started: the replica behind the proxy is the only one moving delayed tasks.
    publisher = RedisWorkQueue(redis_client, replica_id="publisher", prefix=redis_backend.prefix)
    try:
        replica = await redis_queues(replica_id="replica-a", redis=proxied)
        proxy.refusing = True
        proxy.cut()

        async def both_failed() -> bool:
            messages = [record.getMessage() for record in caplog.records]
            return all(
                any(message.startswith(what) for message in messages)
                for what in ("queue listener: Redis failed", "delayed-task mover: Redis failed")
            )

        await wait_until(both_failed, what="the listener and the mover saw Redis fail")
        ready = queued("job-1")
        delayed = queued("job-2", not_before=datetime.now(UTC) + timedelta(milliseconds=100))
        await publisher.publish([ready, delayed])  # the replica misses the notification
        proxy.refusing = False

        items: list[WorkItem] = []
        while len(items) < 2:
            await replica.ready.wait()
            items += await replica.queue.take(requirement_of(ready), 10)
        assert tasks_of(items) == [ready, delayed]
        await replica.queue.close()
    finally:
        await publisher.close()
        await proxied.aclose()


async def test_claim_idle_must_be_positive() -> None:
    client = Redis()  # never connects
    try:
        with pytest.raises(ValueError, match="claim_idle_ms"):
            RedisWorkQueue(client, replica_id="replica-a", claim_idle_ms=0)
    finally:
        await client.aclose()


async def test_start_fails_when_redis_is_unreachable(unreachable_redis_url: str) -> None:
    client = Redis.from_url(unreachable_redis_url)
    queue = RedisWorkQueue(client, replica_id="replica-a")
    try:
        with pytest.raises(RedisConnectionError):
            await queue.start()
    finally:
        await queue.close()
        await client.aclose()


async def test_close_stops_a_queue_that_is_busy_with_redis(redis_backend: Backend) -> None:
    # redis-py can lose a cancel that lands mid-command; close() must still end the loops.
    assert redis_backend.redis is not None
    for _ in range(20):
        queue = RedisWorkQueue(
            redis_backend.redis,
            replica_id="replica-a",
            claim_idle_ms=1,
            prefix=redis_backend.prefix,
            delayed_poll_interval_s=0.0,
        )
        await queue.start()
        await queue.publish([queued("job-1", not_before=datetime.now(UTC) + timedelta(hours=1))])
        await asyncio.wait_for(queue.close(), DEADLINE_S)


async def test_publish_of_many_tasks_keeps_their_order(
    redis_queues: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cpa_scheduler.queue.redis_queue.PUBLISH_BATCH_SIZE", 3)
    replica = await redis_queues()
    tasks = [queued(f"job-{n}") for n in range(8)]

    await replica.queue.publish(tasks)

    assert tasks_of(await replica.queue.take(requirement_of(tasks[0]), 100)) == tasks


async def _stream_state(redis: Redis, keys: RedisKeys, task: QueuedTask) -> tuple[int, int, int]:
    """(entries in the task's stream, entries pending in its group, markers of the task)."""
    stream = keys.queue_stream(requirement_of(task).key)
    length = await redis.xlen(stream)
    try:
        pending = (await redis.xpending(stream, QUEUE_CONSUMER_GROUP))["pending"]
    except Exception:  # no group yet: nothing was ever taken
        pending = 0
    markers = await redis.exists(keys.queue_marker(task.job_id, task.todo.id, task.attempt))
    return length, pending, markers


async def test_withdraw_deletes_the_entry_pending_or_not_and_its_marker(
    redis_queues: QueueFactory, redis_backend: Backend
) -> None:
    assert redis_backend.redis is not None
    redis, keys = redis_backend.redis, RedisKeys(redis_backend.prefix)
    replica = await redis_queues(claim_idle_ms=1)
    waiting, taken = queued("job-1", action="uia"), queued("job-2", action="uia")
    await replica.queue.publish([waiting, taken])
    [item] = await replica.queue.take(requirement_of(taken), 1)
    assert item.task == waiting
    await replica.queue.publish([taken])
    assert await _stream_state(redis, keys, waiting) == (2, 1, 1)

    # One taken by a replica but not yet acked (its assignment will be stale), one never taken.
    await replica.queue.withdraw([waiting, taken])

    assert await _stream_state(redis, keys, waiting) == (0, 0, 0)
    assert await _stream_state(redis, keys, taken) == (0, 0, 0)
    # Nothing comes back, not even to a replica claiming idle entries.
    other = await redis_queues(replica_id="replica-b", claim_idle_ms=1)
    assert await other.queue.take(requirement_of(taken), 10) == []
    await replica.queue.ack([item])  # the stale assignment's ack still works


async def test_a_delayed_task_moved_to_its_stream_can_be_withdrawn_there(
    redis_queues: QueueFactory, redis_backend: Backend
) -> None:
    assert redis_backend.redis is not None
    redis, keys = redis_backend.redis, RedisKeys(redis_backend.prefix)
    replica = await redis_queues()
    task = queued("job-1", attempt=3, not_before=datetime.now(UTC) + timedelta(milliseconds=50))
    await replica.queue.publish([task])
    await replica.ready.wait()  # moved to its stream
    assert await _stream_state(redis, keys, task) == (1, 0, 1)

    await replica.queue.withdraw([task])

    assert await _stream_state(redis, keys, task) == (0, 0, 0)


async def test_a_withdrawn_delayed_task_leaves_nothing_once_due(
    redis_queues: QueueFactory, redis_backend: Backend
) -> None:
    assert redis_backend.redis is not None
    redis, keys = redis_backend.redis, RedisKeys(redis_backend.prefix)
    replica = await redis_queues()
    due = datetime.now(UTC) + timedelta(milliseconds=50)
    withdrawn, kept = queued("job-1", not_before=due), queued("job-2", not_before=due)
    await replica.queue.publish([withdrawn, kept])
    await replica.queue.withdraw([withdrawn])

    await replica.ready.wait()  # the mover ran: `kept` was moved, `withdrawn` dropped

    assert await redis.zcard(keys.queue_delayed) == 0
    items = await replica.queue.take(requirement_of(kept), 10)
    assert tasks_of(items) == [kept]
    await replica.queue.ack(items)
    assert await _stream_state(redis, keys, withdrawn) == (0, 0, 0)
