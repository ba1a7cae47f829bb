"""In-process work queue of the embedded mode: FIFO per requirement key, plus a timer heap for
tasks that may not start before a retry backoff ends.

The store is the truth: the queue holds references only and is rebuilt from the store at
start-up. An entry for an attempt that already started is harmless (assignment is fenced).
Entries are keyed by (job, task, attempt): a repeat publish keeps one entry, and a task that
leaves QUEUED untaken is withdrawn in O(1).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cpa_scheduler.dispatch.matching import Requirement
from cpa_scheduler.storage import QueuedTask

from .interface import WorkItem

_Key = tuple[str, str, int]


def _key(task: QueuedTask) -> _Key:
    return (task.job_id, task.todo.id, task.attempt)


class LocalWorkQueue:
    """Ready tasks by requirement; `on_ready` is called whenever something becomes ready."""

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._ready: dict[Requirement, OrderedDict[_Key, QueuedTask]] = {}
        # A timer heap of (due, order, key); `_waiting` holds what is still delayed (a withdrawn
        # task leaves its heap entry behind, skipped when it comes due).
        self._delayed: list[tuple[datetime, int, _Key]] = []
        self._waiting: dict[_Key, tuple[int, QueuedTask]] = {}
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.on_ready: Callable[[], None] = lambda: None

    async def publish(self, tasks: Sequence[QueuedTask]) -> None:
        for task in tasks:
            self.put(task)

    async def requirements(self) -> list[Requirement]:
        """Requirements with at least one ready task, oldest queue first."""
        return [requirement for requirement, tasks in self._ready.items() if tasks]

    async def take(self, requirement: Requirement, max_items: int) -> list[WorkItem]:
        items: list[WorkItem] = []
        while len(items) < max_items and (task := self.pop(requirement)) is not None:
            items.append(WorkItem(task))
        return items

    async def ack(self, items: Sequence[WorkItem]) -> None:
        """Nothing to do: in-process items are gone once taken."""

    async def withdraw(self, tasks: Sequence[QueuedTask]) -> None:
        for task in tasks:
            key = _key(task)
            self._waiting.pop(key, None)
            requirement = Requirement.of(task.tenant, task.todo, task.agent_id)
            ready = self._ready.get(requirement)
            if ready is not None and ready.pop(key, None) is not None and not ready:
                del self._ready[requirement]

    def put(self, task: QueuedTask) -> None:
        key = _key(task)
        if task.not_before is not None and task.not_before > self._clock():
            order = next(self._order)
            self._waiting[key] = (order, task)
            heapq.heappush(self._delayed, (task.not_before, order, key))
            self._arm_timer()
            return
        self._make_ready(key, task)
        self.on_ready()

    def _make_ready(self, key: _Key, task: QueuedTask) -> None:
        self._ready.setdefault(
            Requirement.of(task.tenant, task.todo, task.agent_id), OrderedDict()
        )[key] = task

    def pop(self, requirement: Requirement) -> QueuedTask | None:
        tasks = self._ready.get(requirement)
        if not tasks:
            return None
        _, task = tasks.popitem(last=False)
        if not tasks:
            del self._ready[requirement]
        return task

    def __len__(self) -> int:
        return sum(len(tasks) for tasks in self._ready.values()) + len(self._waiting)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._delayed:
            return
        delay_s = max(0.0, (self._delayed[0][0] - self._clock()).total_seconds())
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._release_due)

    def _release_due(self) -> None:
        self._timer = None
        now = self._clock()
        released = False
        while self._delayed and self._delayed[0][0] <= now:
            _, order, key = heapq.heappop(self._delayed)
            waiting = self._waiting.get(key)
            if waiting is None or waiting[0] != order:
                continue  # withdrawn (or published again later: that entry counts)
            del self._waiting[key]
            self._make_ready(key, waiting[1])
            released = True
        self._arm_timer()
        if released:
            self.on_ready()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
