"""The work queue interface: where QUEUED tasks wait for an agent, keyed by requirement.

The store is the truth; a queue holds references only. Delivery is at least once: a taken item
that is never acked comes back (to this or another replica), and a duplicate is harmless
because assignment is fenced by the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cpa_scheduler.dispatch.matching import Requirement
from cpa_scheduler.storage import QueuedTask


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A taken task and the receipt that acks it (a stream entry id; empty for in-process)."""

    task: QueuedTask
    receipt: str = ""


class WorkQueue(Protocol):
    """Publish after commit; take no more than the agents have credits for; ack after commit."""

    on_ready: Callable[[], None]
    """Called (without arguments) whenever new work may be available; set by the dispatcher."""

    async def publish(self, tasks: Sequence[QueuedTask]) -> None:
        """Make tasks available (those with `not_before` in the future once it has passed)."""
        ...

    async def requirements(self) -> list[Requirement]:
        """Requirements that may have ready work."""
        ...

    async def take(self, requirement: Requirement, max_items: int) -> list[WorkItem]:
        """Up to `max_items` ready tasks with this requirement, now owned by this replica."""
        ...

    async def ack(self, items: Sequence[WorkItem]) -> None:
        """The items' assignments are durable (or stale): never deliver them again."""
        ...

    async def withdraw(self, tasks: Sequence[QueuedTask]) -> None:
        """The tasks left QUEUED without being taken (cancelled, never started in time): drop
        their entries (matched by job, task and attempt), taken or not, so that a requirement
        no agent serves does not keep them for ever. Unknown tasks are ignored."""
        ...

    async def close(self) -> None: ...
