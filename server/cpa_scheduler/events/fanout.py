"""The fan-out of live events to this replica's watchers, on a bounded share of the event loop.

Agent streams (heartbeats, reports) share the loop with every WatchJob stream. Each delivery to a
watcher is a few loop steps (take the event, start the gRPC write, resume when it completed);
woken all at once, thousands of watchers filled each loop iteration with tens of thousands of
steps, and a heartbeat ack, which crosses several iterations (read, commit, write), waited
seconds. So every write of a watcher, live or replayed from the store, first takes a *turn*, and
the FanOut hands out at most `turns_per_iteration` turns per loop iteration (FIFO): whatever the
number of watchers, an iteration holds a bounded amount of watcher work, and the agents' steps
run between.

The live events of a job are kept once, in a bounded log shared by the job's watchers
(`JobLog`, at most `max_buffered` entries); a watcher (`Subscription`) is a position in it, so
publishing costs one append per event whatever the number of watchers. A new progress event
supersedes the task's older one, which watchers that have not reached it skip (the latest is
what matters); state changes and the terminal event are never skipped. A watcher that falls
behind the log's oldest entry, or meets a gap in the sequence numbers (events lost between
replicas), gets None from `next()`: it re-reads the store after the last event it delivered,
paced by its own reading, with progress coalesced by the same rule (`superseded_progress`). So
a watcher that does not read holds one position, never a queue, and one that reads slowly
catches up with the latest progress instead of the history it missed.

`LiveEvent` carries one event to all its watchers and keeps its wire encoding, made once by the
first watcher that needs it.

Heartbeats: a caught-up watcher that wrote nothing for a while can be told to write one
(`Subscription.heartbeat_if_quiet`, called by one timer per watch stream); its `next()` then
answers HEARTBEAT, after a turn like any write. Nothing is added per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from cpa_scheduler.domain import JobEvent, TaskProgress

log = logging.getLogger(__name__)

E = TypeVar("E")

# Watcher writes started per loop iteration, at most: ~2-3 ms of loop time on this hardware.
TURNS_PER_ITERATION = 32
# Watcher writes under way at once, at most, and how long one counts (see FanOut). Fewer under
# way makes each dearer (gRPC flushes and completes them in smaller batches: 32 cost twice the
# CPU per message of 256), more puts the agents' acks behind more completions
# (docs/PERFORMANCE.md, "Writes under way").
MAX_IN_FLIGHT = 256
PARK_AFTER_S = 0.05


class LiveEvent:
    """One published event, shared by every watcher of its job (and its encoding with it).
    `superseded`: a later progress event of the same task came; watchers not there yet skip
    this one."""

    __slots__ = ("_encoded", "event", "superseded")

    def __init__(self, event: JobEvent) -> None:
        self.event = event
        self._encoded: object = None
        self.superseded = False

    def encoded(self, encode: Callable[[JobEvent], E]) -> E:
        """`encode(event)`, computed once for all watchers (the caller always passes the same
        `encode`)."""
        if self._encoded is None:
            self._encoded = encode(self.event)
        return self._encoded  # type: ignore[return-value]


class Heartbeat:
    """What `Subscription.next()` answers when the watcher should write a heartbeat."""

    __slots__ = ()


HEARTBEAT = Heartbeat()


class FanOut:
    """Turns for watcher writes: at most `turns_per_iteration` granted per loop iteration and
    at most `max_in_flight` writes under way at once, in order of request.

    The second bound matters as much as the first: gRPC completes every write through one
    completion queue, which also carries the agents' reads; thousands of watcher writes under
    way put an agent's heartbeat behind thousands of completions. A write that takes longer
    than `park_after_s` (its reader is slow, flow control holds it) stops counting, so slow
    watchers cannot take every slot.
    """

    def __init__(
        self,
        *,
        turns_per_iteration: int = TURNS_PER_ITERATION,
        max_in_flight: int = MAX_IN_FLIGHT,
        park_after_s: float = PARK_AFTER_S,
    ) -> None:
        if turns_per_iteration <= 0 or max_in_flight <= 0:
            raise ValueError("turns_per_iteration and max_in_flight must be positive")
        self._per_iteration = turns_per_iteration
        self._max_in_flight = max_in_flight
        self._park_after_s = park_after_s
        self._waiting: deque[asyncio.Future[None]] = deque()
        # Writes under way (the turn that started each), oldest first, with their start time.
        self._in_flight: dict[asyncio.Future[None], float] = {}
        self._scheduled = False
        self._granted = 0  # turns taken since the last _grant (one loop iteration)
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        """Watchers waiting for a turn."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Writes under way that still count against max_in_flight."""
        return len(self._in_flight)

    def _queue(self, turn: asyncio.Future[None]) -> None:
        self._waiting.append(turn)
        self._schedule(turn.get_loop())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._grant)

    async def turn(self) -> asyncio.Future[None]:
        """Returns when the caller may write one message; pass the result to `done()` once the
        write has ended (however it ended)."""
        turn = asyncio.get_running_loop().create_future()
        self._queue(turn)
        await turn
        return turn

    def try_turn(self, turn: asyncio.Future[None]) -> bool:
        """Takes a turn at once if nobody waits and this iteration has one left (no loop step
        spent waiting); False: queue `turn` instead."""
        if (
            self._waiting
            or self._granted >= self._per_iteration
            or len(self._in_flight) >= self._max_in_flight
        ):
            return False
        loop = turn.get_loop()
        self._in_flight[turn] = loop.time()
        self._granted += 1
        self._schedule(loop)  # resets the count of this iteration's turns
        return True

    def done(self, turn: asyncio.Future[None]) -> None:
        if self._in_flight.pop(turn, None) is not None and self._waiting:
            self._schedule(turn.get_loop())

    def _grant(self) -> None:
        # Runs at most once per loop iteration while watchers wait: their steps run in the next.
        self._scheduled = False
        self._granted = 0
        loop = asyncio.get_running_loop()
        now = loop.time()
        in_flight = self._in_flight
        if len(in_flight) >= self._max_in_flight:
            self._park(now)
        waiting = self._waiting
        limit = self._max_in_flight
        while waiting and self._granted < self._per_iteration and len(in_flight) < limit:
            turn = waiting.popleft()
            if not turn.done():  # its watcher may have gone
                in_flight[turn] = now
                turn.set_result(None)
                self._granted += 1
        if not waiting:
            return
        if len(in_flight) < self._max_in_flight:
            self._schedule(loop)
        elif self._timer is None:
            # Every slot is taken: a completing write reschedules, and so does this timer in
            # case they are all held by slow readers.
            self._timer = loop.call_later(self._park_after_s, self._parked)

    def _parked(self) -> None:
        self._timer = None
        self._grant()

    def _park(self, now: float) -> None:
        """Writes older than park_after_s stop counting (oldest first)."""
        in_flight = self._in_flight
        while in_flight:
            turn, started = next(iter(in_flight.items()))
            if now - started < self._park_after_s:
                return
            del in_flight[turn]


def superseded_progress(events: Sequence[JobEvent]) -> set[int]:
    """Indexes of the progress events in `events` that a later progress of the same task in
    `events` supersedes: the rule of the live log, for a watcher served from the store again."""
    superseded: set[int] = set()
    latest: dict[str, int] = {}
    for index, event in enumerate(events):
        payload = event.payload
        if isinstance(payload, TaskProgress):
            older = latest.get(payload.task_id)
            if older is not None:
                superseded.add(older)
            latest[payload.task_id] = index
    return superseded


class _GapMarker:
    """Stands in the log where events were lost (a gap in the sequence numbers)."""


_GAP = _GapMarker()


class JobLog:
    """The recent live events of one job on this replica, shared by its watchers: at most
    `max_entries`; each watcher keeps only its position. Appending is O(1) per event (plus
    waking the watchers that were idle), whatever the number of watchers."""

    def __init__(self, fanout: FanOut, *, max_entries: int) -> None:
        self._fanout = fanout
        self._max = max_entries
        self.entries: deque[LiveEvent | _GapMarker] = deque()
        self.start = 0  # position of entries[0]
        self._last: int | None = None  # highest sequence appended
        self._progress_of: dict[str, LiveEvent] = {}  # task id -> its latest progress
        self.idle: dict[Subscription, None] = {}  # caught up, waiting for the next event
        self.subscriptions: dict[Subscription, None] = {}

    @property
    def end(self) -> int:
        return self.start + len(self.entries)

    def append(self, live: LiveEvent) -> None:
        sequence = live.event.sequence
        if self._last is not None:
            if sequence <= self._last:
                return  # a repeat, or late: the watchers that need it re-read the store
            if sequence > self._last + 1:
                self._push(_GAP)  # lost between replicas: whoever reaches this re-reads
                self._progress_of.clear()
        self._last = sequence
        payload = live.event.payload
        if isinstance(payload, TaskProgress):
            older = self._progress_of.get(payload.task_id)
            if older is not None:
                older.superseded = True
            self._progress_of[payload.task_id] = live
        self._push(live)
        if self.idle:
            idle, self.idle = self.idle, {}
            for subscription in idle:
                subscription._wake()

    def _push(self, entry: LiveEvent | _GapMarker) -> None:
        self.entries.append(entry)
        if len(self.entries) > self._max:
            dropped = self.entries.popleft()
            self.start += 1
            if isinstance(dropped, LiveEvent) and isinstance(dropped.event.payload, TaskProgress):
                task_id = dropped.event.payload.task_id
                if self._progress_of.get(task_id) is dropped:
                    del self._progress_of[task_id]


class Subscription:
    """A watcher's live feed of one job: a position in the job's shared log.

    `next()` waits for the next event and a turn of the fan-out. It skips progress events that
    a later progress of the same task superseded, and answers None — "re-read the store after
    the last event you delivered" — when the watcher fell behind the log's oldest entry, or
    events were lost on the way. After reading the store the watcher calls `resume_after(last)`.
    """

    def __init__(
        self,
        log: JobLog,
        fanout: FanOut,
        key: tuple[str, str],
        *,
        on_close: Callable[[Subscription], None],
    ) -> None:
        self._log = log
        self._on_close = on_close
        self._fanout = fanout
        self.key = key
        self._position = log.end
        self._after: int | None = None  # the watcher has every event up to this sequence
        self._checking = True  # the first event after the store read is still to be checked
        self._reread = False
        self._turn: asyncio.Future[None] | None = None
        self._queued = False  # _turn waits in the fan-out's queue
        self._writing: asyncio.Future[None] | None = None  # the turn of the write under way
        self._closed = False
        self._heartbeat = False  # the next turn writes a heartbeat (see heartbeat_if_quiet)
        # When a turn was last granted: for an event (last_activity_s, which reread_quiet goes
        # by: heartbeats must not put off a re-read) or for anything (last_sent_s).
        self.last_activity_s = self.last_sent_s = time.monotonic()
        self.rereads = 0  # times it had to re-read the store (for tests and logs)

    @property
    def behind(self) -> int:
        """Log entries this watcher has not read (bounded by the log's size; 0 once closed)."""
        if self._closed:
            return 0
        return max(0, self._log.end - max(self._position, self._log.start))

    def _wake(self) -> None:
        if self._turn is not None and not self._queued:
            self._queued = True
            self._fanout._queue(self._turn)

    def _mark_reread(self) -> None:
        """From any watcher state: the next next() answers None (see reread_quiet)."""
        self._reread = True
        self._log.idle.pop(self, None)
        self._wake()

    def heartbeat_if_quiet(self, quiet_s: float) -> float:
        """If the watcher waits for an event (caught up) and has sent nothing for `quiet_s`,
        its `next()` answers HEARTBEAT once it gets a turn. Returns the monotonic time at which
        calling again may find it quiet (for the caller's timer)."""
        now = time.monotonic()
        due = self.last_sent_s + quiet_s
        if self._closed or self not in self._log.idle:
            return max(due, now + quiet_s)  # busy (replaying, writing, waiting for a turn)
        if now < due:
            return due
        self._heartbeat = True
        self._log.idle.pop(self, None)
        self._wake()
        return now + quiet_s

    def resume_after(self, sequence: int) -> None:
        """The watcher has delivered everything up to `sequence` (from the store)."""
        self._after = sequence

    def _peek(self) -> LiveEvent | None:
        """The next event to deliver, past those already delivered and the superseded ones;
        None when caught up. Sets _reread when the watcher must read the store instead."""
        log = self._log
        if self._position < log.start:
            self._reread = True  # fell behind the log: the store has everything
            return None
        entries, start = log.entries, log.start
        after = self._after
        while self._position < start + len(entries):
            entry = entries[self._position - start]
            if isinstance(entry, _GapMarker):
                self._reread = True
                return None
            sequence = entry.event.sequence
            if after is None or sequence > after:
                if after is not None and self._checking:
                    self._checking = False
                    if sequence > after + 1:
                        # The first event after the store read does not follow it: lost ones.
                        self._reread = True
                        return None
                if not entry.superseded:
                    return entry
            self._position += 1
        return None

    def written(self) -> None:
        """The write of what `next()` returned has ended (however it ended)."""
        if self._writing is not None:
            self._fanout.done(self._writing)
            self._writing = None

    async def next(self) -> LiveEvent | Heartbeat | None:
        """The next event for this watcher, once it has a turn; None: re-read the store (no
        turn is held then); HEARTBEAT: write a heartbeat (see heartbeat_if_quiet). Call
        `written()` after writing what it answered."""
        fanout = self._fanout
        loop = asyncio.get_running_loop()
        while True:
            live: LiveEvent | None = None
            ready = self._peek() is not None
            if not self._reread:
                turn = loop.create_future()
                if not (ready and fanout.try_turn(turn)):
                    # Wait: for a turn (queued now), or for an event (queued on arrival).
                    self._turn, self._queued = turn, False
                    if ready:
                        self._wake()
                    else:
                        self._log.idle[self] = None
                    try:
                        await turn
                    except BaseException:
                        fanout.done(turn)  # granted, perhaps, just before the cancel
                        raise
                    finally:
                        self._turn = None
                        self._log.idle.pop(self, None)
                self._writing = turn
                now = self.last_sent_s = time.monotonic()
                heartbeat, self._heartbeat = self._heartbeat, False
                live = None if self._reread else self._peek()
                if heartbeat and live is None and not self._reread:
                    return HEARTBEAT  # an event that came meanwhile is written instead
                self.last_activity_s = now
            if self._reread:
                self.written()
                self._reread = False
                self.rereads += 1
                self._after = None
                self._checking = True
                self._position = self._log.end  # events from now on are kept for it
                return None
            if live is None:  # only superseded entries since it was woken
                self.written()
                continue
            self._position += 1
            self._after = live.event.sequence
            return live

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.written()
            if self._turn is not None and not self._turn.done():
                self._turn.cancel()
            self._log.idle.pop(self, None)
            self._on_close(self)


class Watchers:
    """The subscriptions of this replica, by (tenant, job), and the fan-out they share."""

    def __init__(self, *, max_buffered: int = 256, fanout: FanOut | None = None) -> None:
        self.fanout = fanout or FanOut()
        self._max_buffered = max_buffered
        self._logs: dict[tuple[str, str], JobLog] = {}
        self._count = 0
        self._by_tenant: dict[str, int] = {}

    @property
    def count(self) -> int:
        """Open subscriptions on this replica."""
        return self._count

    def count_of(self, tenant: str) -> int:
        return self._by_tenant.get(tenant, 0)

    def buffered(self) -> int:
        """Live events held for watchers, all jobs together (at most max_buffered per job)."""
        return sum(len(log.entries) for log in self._logs.values())

    def subscriptions(self) -> list[Subscription]:
        return [s for log in self._logs.values() for s in log.subscriptions]

    def deliver(self, events: Sequence[JobEvent]) -> None:
        """Hand events to this process's watchers: one append per event and job."""
        logs = self._logs
        for event in events:
            log = logs.get((event.tenant, event.job_id))
            if log is not None:
                log.append(LiveEvent(event))

    def subscribe(self, tenant: str, job_id: str) -> Subscription:
        key = (tenant, job_id)
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = JobLog(self.fanout, max_entries=self._max_buffered)
        subscription = Subscription(log, self.fanout, key, on_close=self._remove)
        log.subscriptions[subscription] = None
        self._count += 1
        self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        key = subscription.key
        log = subscription._log
        log.subscriptions.pop(subscription, None)
        self._count -= 1
        tenant = key[0]
        self._by_tenant[tenant] -= 1
        if not self._by_tenant[tenant]:
            del self._by_tenant[tenant]
        if not log.subscriptions and self._logs.get(key) is log:
            del self._logs[key]

    def reread_quiet(self, quiet_s: float) -> int:
        """Makes every caught-up watcher that heard nothing for `quiet_s` re-read the store: a
        live feed that may lose events (pub/sub between replicas) must not leave a watcher
        waiting for ever for an event that was lost. One waiting for a turn has something to
        write and is left alone. Returns how many."""
        now = time.monotonic()
        quiet = [
            s for log in self._logs.values() for s in log.idle if now - s.last_activity_s >= quiet_s
        ]
        for subscription in quiet:
            subscription._mark_reread()
        return len(quiet)

    async def reread_quiet_forever(self, quiet_s: float) -> None:
        while True:
            await asyncio.sleep(quiet_s / 2)
            try:
                self.reread_quiet(quiet_s)
            except Exception:  # the next round tries again
                log.exception("re-reading quiet watchers failed")
