"""Dispatcher: matches ready tasks to agent sessions with free credits and starts attempts.

Event-driven: it wakes when work may be ready or an agent grants credits (plus a slow safety
poll for queues shared with other replicas). It takes from the queue no more than the capable
sessions have credits for, takes a credit before the (asynchronous) assignment commits, and
acks the queue item only after the assignment is durable (or found stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cpa_scheduler.domain import AttemptRef
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.queue import WorkItem, WorkQueue

from .sessions import AgentSession, SessionRegistry

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs until cancelled: `run()` as a task; call `wake()` whenever work or capacity appears."""

    def __init__(
        self,
        *,
        queue: WorkQueue,
        sessions: SessionRegistry,
        orchestrator: Orchestrator,
        poll_interval_s: float | None = None,
    ) -> None:
        self._queue = queue
        self._sessions = sessions
        self._orchestrator = orchestrator
        self._poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        queue.on_ready = self.wake

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        try:
            while True:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancel on Python 3.11.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval_s):
                        await self._wakeup.wait()
                self._wakeup.clear()
                try:
                    await self._dispatch_ready()
                except Exception:  # a failing queue must not stop dispatching for good
                    log.exception("dispatch round failed")
        finally:
            for task in self._in_flight:
                task.cancel()

    async def _dispatch_ready(self) -> None:
        for requirement in await self._queue.requirements():
            sessions = self._sessions.eligible(requirement)
            capacity = sum(s.credits for s in sessions)
            if capacity == 0:
                continue
            for item in await self._queue.take(requirement, capacity):
                # Most free credits first spreads the load; eligible() re-checks credits.
                sessions = [s for s in sessions if s.takes_work]
                if not sessions:
                    break  # credits were taken meanwhile; the item comes back unacked
                session = max(sessions, key=lambda s: s.credits)
                session.credits -= 1
                task = asyncio.create_task(self._assign(item, session))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _assign(self, item: WorkItem, session: AgentSession) -> None:
        try:
            message = await self._orchestrator.assign(item.task, session.agent_id)
        except Exception:
            # Not acked: the queue delivers it again (the store still says QUEUED).
            log.exception("assigning %s/%s failed", item.task.job_id, item.task.todo.id)
            session.credits += 1
            return
        await self._queue.ack([item])
        if message is None:
            session.credits += 1
            self.wake()
            return
        session.running.add(AttemptRef(message.job_id, message.todo.id, message.attempt))
        session.deliver(message)
