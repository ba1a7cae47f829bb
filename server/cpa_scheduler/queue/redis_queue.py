"""The work queue of the distributed mode: one Redis Stream per requirement key, read by every
replica through one consumer group, plus a sorted set for tasks that may not start yet.

Publishes and acks are coalesced (cpa_scheduler.coalescing): those of one loop iteration, or made
while the previous one ran, share one script call or pipeline.

At least once: an entry taken by a replica that dies before acking is taken over by another
after `claim_idle_ms`. A duplicate or stale entry is harmless (assignment is fenced by the
store) but is acked like any other. Key names live in cpa_scheduler.redis_keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis

from cpa_scheduler import json_text
from cpa_scheduler.background import Backoff, stop_tasks, wait_event
from cpa_scheduler.coalescing import Coalescer
from cpa_scheduler.dispatch.matching import Requirement
from cpa_scheduler.redis_keys import DEFAULT_PREFIX, QUEUE_CONSUMER_GROUP, RedisKeys
from cpa_scheduler.redis_support import ChannelListener, log_background_error
from cpa_scheduler.storage import QueuedTask
from cpa_scheduler.storage.codec import (
    Data,
    queued_task_from_data,
    queued_task_to_data,
    time_to_us,
)

from .interface import WorkItem

log = logging.getLogger(__name__)

# Most delayed tasks one mover run moves (the rest follow immediately in the next run).
MOVE_BATCH_SIZE = 500
# Most tasks in one publish script: start-up recovery may publish very many, and one huge
# script would block Redis for every replica meanwhile.
PUBLISH_BATCH_SIZE = 1000

# Publishes tasks, each only if its marker (KEYS[4 + 2i]) does not exist yet: in a stream (KEYS[5
# + 2i]) when ARGV due is '', the marker then holding the entry's id, else in the delayed set
# KEYS[3] at that score, the marker holding 'delayed'; and registers its requirement (KEYS[1],
# KEYS[2]). One script, so a crash never leaves a marker without its entry (the reconciler would
# skip that task for ever). ARGV: now ms, ready channel, origin, then per task: requirement key,
# requirement JSON, task JSON, due ms or ''. Publishes origin on the channel when a task became
# ready. Returns {any ready, any delayed} as 0/1.
_PUBLISH_SCRIPT = """
local ready, delayed = 0, 0
for i = 0, (#ARGV - 3) / 4 - 1 do
  local key, requirement, task, due = ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i],
                                      ARGV[7 + 4 * i]
  local marker = KEYS[4 + 2 * i]
  if redis.call('EXISTS', marker) == 0 then
    redis.call('ZADD', KEYS[1], 'NX', ARGV[1], key)
    redis.call('HSET', KEYS[2], key, requirement)
    if due == '' then
      redis.call('SET', marker, redis.call('XADD', KEYS[5 + 2 * i], '*', 'task', task))
      ready = 1
    else
      redis.call('ZADD', KEYS[3], due, string.len(key) .. ':' .. key .. task)
      redis.call('SET', marker, 'delayed')
      delayed = 1
    end
  end
end
if ready == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return {ready, delayed}
"""

# Takes up to ARGV[4] entries for consumer ARGV[2]: first entries other consumers left pending
# for ARGV[3] ms or more (XAUTOCLAIM from cursor ARGV[5]), then new ones. Creates the group
# (from the stream's start, so entries added before it are read) when it is missing, which
# also covers a wiped Redis. Returns {next cursor, {{id, {field, value, ...}}, ...}}.
_TAKE_SCRIPT = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local created = redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
if type(created) == 'table' and created.err
    and not string.find(created.err, 'BUSYGROUP', 1, true) then
  return redis.error_reply(created.err)
end
local max_items = tonumber(ARGV[4])
local claimed = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[3], ARGV[5],
                           'COUNT', max_items)
local entries = claimed[2]
if #entries < max_items then
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max_items - #entries,
                          'STREAMS', stream, '>')
  if read then
    for _, entry in ipairs(read[1][2]) do table.insert(entries, entry) end
  end
end
return {claimed[1], entries}
"""

# Moves due delayed tasks (score <= ARGV[1]) to their streams, atomically, so replicas running
# it at the same time never move a task twice. Members are `<n>:<requirement key of n
# bytes><task JSON>`. A task's marker (ARGV[6] .. job:task:attempt, read from its JSON) then
# holds its entry's id; a task without a marker was withdrawn and is dropped. Publishes ARGV[4]
# on channel ARGV[3] when it moved something. Returns {number moved, score of the next delayed
# task or -1}.
_MOVE_DUE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[5]))
local moved = 0
for _, member in ipairs(due) do
  local colon = string.find(member, ':', 1, true)
  local length = tonumber(string.sub(member, 1, colon - 1))
  local requirement_key = string.sub(member, colon + 1, colon + length)
  local task = string.sub(member, colon + length + 1)
  local ok, decoded = pcall(cjson.decode, task)
  local marker = nil
  if ok and type(decoded) == 'table' and type(decoded.todo) == 'table' then
    marker = ARGV[6] .. tostring(decoded.job_id) .. ':' .. tostring(decoded.todo.id) .. ':'
             .. string.format('%d', decoded.attempt)
  end
  if marker == nil or redis.call('EXISTS', marker) == 1 then
    local id = redis.call('XADD', ARGV[2] .. requirement_key, '*', 'task', task)
    if marker ~= nil then redis.call('SET', marker, id) end
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], member)
end
if moved > 0 then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved, next_due[2] or '-1'}
"""

# Withdraws tasks that left QUEUED untaken: per task, its marker KEYS[2i + 1] says where its
# entry is: an entry id of stream KEYS[2i + 2] (acked, in case a replica took it, and deleted),
# or 'delayed' (the mover drops the member when it comes due, as it has no marker then; '1' is
# a marker of an older version, whose entry cannot be found: it stays until taken). The marker
# is deleted. ARGV[1]: the consumer group. Returns the number of tasks found.
_WITHDRAW_SCRIPT = """
local found = 0
for i = 0, #KEYS / 2 - 1 do
  local marker, stream = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local where = redis.call('GET', marker)
  if where then
    found = found + 1
    if where ~= 'delayed' and where ~= '1' then
      redis.pcall('XACK', stream, ARGV[1], where)
      redis.call('XDEL', stream, where)
    end
    redis.call('DEL', marker)
  end
end
return found
"""

# The JSON of every requirement whose stream holds entries (new or pending), oldest queue
# first: one round trip per dispatch round. A requirement pinned to an agent (a session's: its
# key ends with PINNED_KEY_SUFFIX) whose stream is empty is forgotten (registration, stream and
# group): agent ids come and go, and the registry must not grow with every agent that ever held
# a session. Atomic, so a publish after it registers the requirement again.
_REQUIREMENTS_SCRIPT = """
local result = {}
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('XLEN', ARGV[1] .. key) > 0 then
    local requirement = redis.call('HGET', KEYS[2], key)
    if requirement then table.insert(result, requirement) end
  elseif string.sub(key, -7) == '~pinned' then
    redis.call('ZREM', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
    redis.call('DEL', ARGV[1] .. key)
  end
end
return result
"""

# 1 when some stream has an entry pending for ARGV[3] ms or more (its consumer may be dead),
# else 0. Streams without the group yet are skipped.
_IDLE_PENDING_SCRIPT = """
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local pending = redis.pcall('XPENDING', ARGV[1] .. key, ARGV[2], 'IDLE', ARGV[3], '-', '+', 1)
  if type(pending) == 'table' and not pending.err and #pending > 0 then
    return 1
  end
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _epoch_ms(value: datetime) -> int:
    us = time_to_us(value)
    assert us is not None
    return us // 1000


def requirement_to_data(requirement: Requirement) -> Data:
    return {
        "tenant": requirement.tenant,
        "action": requirement.action,
        "capabilities": sorted(requirement.capabilities),
        "labels": [list(label) for label in requirement.labels],
        **({"agent_id": requirement.agent_id} if requirement.agent_id else {}),
    }


def requirement_from_data(data: Data) -> Requirement:
    return Requirement(
        tenant=data["tenant"],
        action=data["action"],
        capabilities=frozenset(data["capabilities"]),
        labels=tuple((key, value) for key, value in data["labels"]),
        agent_id=data.get("agent_id", ""),
    )


class RedisWorkQueue:
    """WorkQueue on Redis Streams. `start()` runs the listener and the delayed-task mover;
    `close()` stops them (the Redis client belongs to the caller)."""

    def __init__(
        self,
        redis: Redis,
        *,
        replica_id: str,
        claim_idle_ms: int = 10_000,
        prefix: str = DEFAULT_PREFIX,
        delayed_poll_interval_s: float = 0.5,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if claim_idle_ms <= 0:
            raise ValueError(f"claim_idle_ms must be positive, got {claim_idle_ms}")
        self._redis = redis
        self._keys = RedisKeys(prefix)
        self._consumer = replica_id
        self._claim_idle_ms = claim_idle_ms
        self._delayed_poll_interval_s = delayed_poll_interval_s
        self._clock = clock
        # Tells this instance's own notifications apart: it already called on_ready for them.
        self._origin = uuid.uuid4().hex
        # Where the next XAUTOCLAIM of a stream goes on scanning its pending entries.
        self._claim_cursors: dict[str, str] = {}
        self._publish_script = redis.register_script(_PUBLISH_SCRIPT)
        self._take_script = redis.register_script(_TAKE_SCRIPT)
        self._move_due_script = redis.register_script(_MOVE_DUE_SCRIPT)
        self._requirements_script = redis.register_script(_REQUIREMENTS_SCRIPT)
        self._idle_pending_script = redis.register_script(_IDLE_PENDING_SCRIPT)
        self._withdraw_script = redis.register_script(_WITHDRAW_SCRIPT)
        self._mover_wakeup = asyncio.Event()
        # Calls on_ready for notifications of other instances and after every (re)subscribe,
        # since notifications published meanwhile are lost (pub/sub is at most once).
        self._listener = ChannelListener(
            redis,
            [self._keys.queue_ready_channel],
            on_message=self._notified,
            on_subscribed=self._subscribed,
            name="queue listener",
            task_name="redis-queue-listener",
            logger=log,
        )
        self._mover: asyncio.Task[None] | None = None
        self.on_ready: Callable[[], None] = lambda: None
        self._publishing: Coalescer[QueuedTask] = Coalescer(
            self._publish_now, max_calls=PUBLISH_BATCH_SIZE, name="redis-queue-publish"
        )
        self._acking: Coalescer[WorkItem] = Coalescer(
            self._ack_now, max_calls=PUBLISH_BATCH_SIZE, name="redis-queue-ack"
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to work notifications (done when this returns), then start the listener
        and the maintenance loop (delayed-task mover, watch for reclaimable work)."""
        if self._mover is not None:
            return
        await self._listener.start()
        self._mover = asyncio.create_task(self._maintain_forever(), name="redis-queue-mover")

    async def close(self) -> None:
        await self._publishing.close()
        await self._acking.close()
        if self._mover is not None:
            await stop_tasks([self._mover])
            self._mover = None
        await self._listener.close()

    # -- WorkQueue ------------------------------------------------------------------------------

    async def publish(self, tasks: Sequence[QueuedTask]) -> None:
        if tasks:
            await self._publishing.submit(tasks)

    async def _publish_now(self, tasks: list[QueuedTask]) -> None:
        ready = delayed = False
        for start in range(0, len(tasks), PUBLISH_BATCH_SIZE):
            batch_ready, batch_delayed = await self._publish_batch(
                tasks[start : start + PUBLISH_BATCH_SIZE]
            )
            ready, delayed = ready or batch_ready, delayed or batch_delayed
        if delayed:
            self._mover_wakeup.set()
        if ready:
            self.on_ready()

    async def _publish_batch(self, tasks: Sequence[QueuedTask]) -> tuple[bool, bool]:
        """One script for the batch; returns whether it had (ready, delayed) tasks. A task whose
        marker exists is queued already (a repeat from the reconciler, say) and is left out."""
        now = self._clock()
        keys = [
            self._keys.queue_requirements,
            self._keys.queue_requirement_json,
            self._keys.queue_delayed,
        ]
        args: list[str | int] = [_epoch_ms(now), self._keys.queue_ready_channel, self._origin]
        for task in tasks:
            requirement = Requirement.of(task.tenant, task.todo, task.agent_id)
            keys += [self._marker(task), self._keys.queue_stream(requirement.key)]
            not_before = task.not_before
            args += [
                requirement.key,
                json_text.dumps(requirement_to_data(requirement)),
                json_text.dumps(queued_task_to_data(task)),
                _epoch_ms(not_before) if not_before is not None and not_before > now else "",
            ]
        ready, delayed = await self._publish_script(keys=keys, args=args)
        return bool(ready), bool(delayed)

    def _marker(self, task: QueuedTask) -> str:
        return self._keys.queue_marker(task.job_id, task.todo.id, task.attempt)

    async def requirements(self) -> list[Requirement]:
        """Requirements whose stream holds entries (ready, or taken but not yet acked),
        oldest queue first."""
        found = await self._requirements_script(
            keys=[self._keys.queue_requirements, self._keys.queue_requirement_json],
            args=[self._keys.queue_stream_prefix],
        )
        return [requirement_from_data(json.loads(data)) for data in found]

    async def take(self, requirement: Requirement, max_items: int) -> list[WorkItem]:
        if max_items <= 0:
            return []
        stream = self._keys.queue_stream(requirement.key)
        cursor, entries = await self._take_script(
            keys=[stream],
            args=[
                QUEUE_CONSUMER_GROUP,
                self._consumer,
                self._claim_idle_ms,
                max_items,
                self._claim_cursors.get(stream, "0-0"),
            ],
        )
        self._claim_cursors[stream] = _text(cursor)
        items: list[WorkItem] = []
        unreadable: list[str] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            try:
                names, values = fields[::2], fields[1::2]
                task_json = dict(zip(map(_text, names), values, strict=True))["task"]
                items.append(WorkItem(queued_task_from_data(json.loads(task_json)), entry_id))
            except (TypeError, ValueError, KeyError):
                # Redelivering it would fail the same way forever; the reconciler re-publishes
                # the task from the store if it is still QUEUED.
                log.exception("dropping unreadable queue entry %s of %s", entry_id, stream)
                unreadable.append(entry_id)
        if unreadable:
            await self._ack_entries({stream: unreadable})
        return items

    async def ack(self, items: Sequence[WorkItem]) -> None:
        if items:
            await self._acking.submit(items)

    async def withdraw(self, tasks: Sequence[QueuedTask]) -> None:
        for start in range(0, len(tasks), PUBLISH_BATCH_SIZE):
            keys: list[str] = []
            for task in tasks[start : start + PUBLISH_BATCH_SIZE]:
                requirement = Requirement.of(task.tenant, task.todo, task.agent_id)
                keys += [self._marker(task), self._keys.queue_stream(requirement.key)]
            await self._withdraw_script(keys=keys, args=[QUEUE_CONSUMER_GROUP])

    async def _ack_now(self, items: list[WorkItem]) -> None:
        by_stream: dict[str, list[str]] = {}
        for item in items:
            requirement = Requirement.of(item.task.tenant, item.task.todo, item.task.agent_id)
            by_stream.setdefault(self._keys.queue_stream(requirement.key), []).append(item.receipt)
        await self._ack_entries(by_stream, markers=[self._marker(item.task) for item in items])

    async def _ack_entries(
        self, by_stream: dict[str, list[str]], *, markers: Sequence[str] = ()
    ) -> None:
        """Ack and delete the entries, and release their tasks' markers: one round trip, all
        or nothing."""
        if not by_stream:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for stream, entry_ids in by_stream.items():
                pipe.xack(stream, QUEUE_CONSUMER_GROUP, *entry_ids)
                # Deleting keeps the stream as short as the work in flight.
                pipe.xdel(stream, *entry_ids)
            if markers:
                pipe.delete(*markers)
            await pipe.execute()

    # -- background -----------------------------------------------------------------------------

    def _notified(self, origin: bytes) -> None:
        """A "work may be ready" notification; this instance's own ones were handled already."""
        if origin.decode() != self._origin:
            self.on_ready()

    def _subscribed(self) -> None:
        self.on_ready()

    async def _maintain_forever(self) -> None:
        """Moves due delayed tasks and wakes the dispatcher when pending entries have been idle
        long enough to be claimed (their replica may be dead)."""
        retry = Backoff()
        idle_check_interval_s = self._claim_idle_ms / 2000
        next_idle_check_s = time.monotonic() + idle_check_interval_s
        while True:
            try:
                wait_s = await self._move_due()
                if time.monotonic() >= next_idle_check_s:
                    next_idle_check_s = time.monotonic() + idle_check_interval_s
                    if await self._has_idle_pending():
                        self.on_ready()
                wait_s = min(wait_s, max(0.0, next_idle_check_s - time.monotonic()))
                retry.reset()
            except Exception as error:
                log_background_error(log, "delayed-task mover", error, retry.delay_s)
                wait_s = retry.take()
            await wait_event(self._mover_wakeup, wait_s)
            self._mover_wakeup.clear()

    async def _move_due(self) -> float:
        """Moves due tasks; returns how long to wait before the next run (in seconds)."""
        now_ms = _epoch_ms(self._clock())
        moved, next_due_ms = await self._move_due_script(
            keys=[self._keys.queue_delayed],
            args=[
                now_ms,
                self._keys.queue_stream_prefix,
                self._keys.queue_ready_channel,
                self._origin,
                MOVE_BATCH_SIZE,
                self._keys.queue_marker_prefix,
            ],
        )
        if moved:
            self.on_ready()
        next_due = float(next_due_ms)
        if next_due < 0:
            return self._delayed_poll_interval_s
        # Other replicas may add earlier tasks meanwhile: never wait longer than the poll.
        return min(max(0.0, (next_due - now_ms) / 1000), self._delayed_poll_interval_s)

    async def _has_idle_pending(self) -> bool:
        found = await self._idle_pending_script(
            keys=[self._keys.queue_requirements],
            args=[self._keys.queue_stream_prefix, QUEUE_CONSUMER_GROUP, self._claim_idle_ms],
        )
        return bool(found)
