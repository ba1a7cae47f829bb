"""Event bus: publishes committed job events to the watchers of that job.

The bus is only the live feed: events are stored first, so a watcher that misses one (a full
queue, a gap) re-reads the store. Subscriptions are per (tenant, job).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from cpa_scheduler.domain import JobEvent

# A watcher that falls this far behind is cut loose and told to re-read the store.
SUBSCRIPTION_BUFFER = 1024


class Subscription:
    """Live events of one job. `lagged` turns True if events were dropped for this watcher."""

    def __init__(self, bus: LocalEventBus, key: tuple[str, str]) -> None:
        self._bus = bus
        self._key = key
        self._queue: asyncio.Queue[JobEvent] = asyncio.Queue(SUBSCRIPTION_BUFFER)
        self.lagged = False

    def deliver(self, event: JobEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True

    async def next(self) -> JobEvent:
        return await self._queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self._key, self)


class EventBus(Protocol):
    """Where the orchestrator publishes (after commit) and WatchJob subscribes."""

    async def publish(self, events: Sequence[JobEvent]) -> None: ...

    def subscribe(self, tenant: str, job_id: str) -> Subscription: ...


class LocalEventBus:
    """The in-process bus of the embedded mode."""

    def __init__(self) -> None:
        self._subscribers: dict[tuple[str, str], list[Subscription]] = {}

    async def publish(self, events: Sequence[JobEvent]) -> None:
        self.deliver(events)

    def deliver(self, events: Sequence[JobEvent]) -> None:
        """Hand events to this process's watchers."""
        for event in events:
            for subscription in self._subscribers.get((event.tenant, event.job_id), ()):
                subscription.deliver(event)

    def subscribe(self, tenant: str, job_id: str) -> Subscription:
        key = (tenant, job_id)
        subscription = Subscription(self, key)
        self._subscribers.setdefault(key, []).append(subscription)
        return subscription

    def unsubscribe(self, key: tuple[str, str], subscription: Subscription) -> None:
        subscribers = self._subscribers.get(key, [])
        if subscription in subscribers:
            subscribers.remove(subscription)
        if not subscribers:
            self._subscribers.pop(key, None)
