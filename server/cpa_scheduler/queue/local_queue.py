"""In-process work queue of the embedded mode: FIFO per requirement key, plus a timer heap for
tasks that may not start before a retry backoff ends.

The store is the truth: the queue holds references only and is rebuilt from the store at
start-up. An entry for an attempt that already started is harmless (assignment is fenced).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cpa_scheduler.dispatch.matching import Requirement
from cpa_scheduler.storage import QueuedTask

from .interface import WorkItem


class LocalWorkQueue:
    """Ready tasks by requirement; `on_ready` is called whenever something becomes ready."""

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._ready: dict[Requirement, deque[QueuedTask]] = {}
        self._delayed: list[tuple[datetime, int, QueuedTask]] = []
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

    def put(self, task: QueuedTask) -> None:
        if task.not_before is not None and task.not_before > self._clock():
            heapq.heappush(self._delayed, (task.not_before, next(self._order), task))
            self._arm_timer()
            return
        self._ready.setdefault(Requirement.of(task.tenant, task.todo), deque()).append(task)
        self.on_ready()

    def pop(self, requirement: Requirement) -> QueuedTask | None:
        tasks = self._ready.get(requirement)
        if not tasks:
            return None
        task = tasks.popleft()
        if not tasks:
            del self._ready[requirement]
        return task

    def __len__(self) -> int:
        return sum(len(tasks) for tasks in self._ready.values()) + len(self._delayed)

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
            _, _, task = heapq.heappop(self._delayed)
            self._ready.setdefault(Requirement.of(task.tenant, task.todo), deque()).append(task)
            released = True
        self._arm_timer()
        if released:
            self.on_ready()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
