"""Event bus: publishes committed job events to the watchers of that job.

The bus is only the live feed: events are stored first, so a watcher that misses one (an
overflowing buffer, a gap) re-reads the store. Subscriptions are per (tenant, job); their
buffering and the loop time their writes may take are in fanout.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cpa_scheduler.domain import JobEvent

from .fanout import Subscription, Watchers

# Events buffered per watcher by default; beyond, it re-reads the store.
SUBSCRIPTION_BUFFER = 256


class EventBus(Protocol):
    """Where the orchestrator publishes (after commit) and WatchJob subscribes."""

    @property
    def watchers(self) -> Watchers:
        """This replica's subscriptions (counts, buffers, the fan-out's turns)."""
        ...

    async def publish(self, events: Sequence[JobEvent]) -> None: ...

    def subscribe(self, tenant: str, job_id: str) -> Subscription: ...


class LocalEventBus:
    """The in-process bus of the embedded mode: nothing is lost between publish and watcher."""

    def __init__(self, *, max_buffered: int = SUBSCRIPTION_BUFFER) -> None:
        self._watchers = Watchers(max_buffered=max_buffered)

    @property
    def watchers(self) -> Watchers:
        return self._watchers

    async def publish(self, events: Sequence[JobEvent]) -> None:
        self._watchers.deliver(events)

    def deliver(self, events: Sequence[JobEvent]) -> None:
        """Hand events to this process's watchers."""
        self._watchers.deliver(events)

    def subscribe(self, tenant: str, job_id: str) -> Subscription:
        return self._watchers.subscribe(tenant, job_id)
