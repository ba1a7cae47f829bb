"""Dispatcher: matches ready tasks to agent sessions with free credits and starts attempts.

Event-driven: it wakes when work may be ready or an agent grants credits (plus a slow safety
poll for queues shared with other replicas). It takes from the queue no more than the capable
sessions have credits for, takes a credit before the (asynchronous) assignment commits, and
acks the queue item only after the assignment is durable (or found stale).

When the replica stops, `stop_assigning()` ends dispatching before the agents are told to drain,
and `assignments_done()` waits until the work already taken has been assigned and delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cpa_scheduler.domain import AttemptRef, ToDo
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.queue import WorkItem, WorkQueue

from .matching import Requirement
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
        self._stopping = False
        # Held for a whole dispatch round, so assignments_done() can wait for the one running.
        self._round = asyncio.Lock()
        queue.on_ready = self.wake

    def wake(self) -> None:
        self._wakeup.set()

    def claim(self, tenant: str, todo: ToDo) -> AgentSession | None:
        """A session that takes `todo` now, its credit taken, for a task assigned as it is
        created (Orchestrator.claim_agent); None while queued work may be waiting for
        credits (a wake-up or a round pending): the queue goes first."""
        if self._stopping or self._wakeup.is_set() or self._round.locked():
            return None
        sessions = self._sessions.eligible(Requirement.of(tenant, todo))
        if not sessions:
            return None
        session = sessions[0]  # the most free credits
        session.credits -= 1
        return session

    def stop_assigning(self) -> None:
        """Takes no more work from the queue (a round running finishes what it took).

        Work in the queue is left there: QUEUED in the store, read by the other replicas from
        the shared queue, rebuilt from the store at the next start of an embedded server.
        """
        self._stopping = True

    async def assignments_done(self, *, timeout_s: float) -> None:
        """Waits (at most `timeout_s`) for the round running and the assignments in flight, so
        their messages are on the agents' streams on return.

        Work taken but not assigned within the bound is not lost: its assignment commits (and
        the message goes out late, then an agent that drains declines it, which queues it
        again) or it does not, and the store still holds the task QUEUED (the shared queue
        hands the unacked entry to another replica).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline), self._round:
                pass
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=max(0.0, deadline - loop.time()))

    async def run(self) -> None:
        try:
            while True:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancel on Python 3.11.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval_s):
                        await self._wakeup.wait()
                self._wakeup.clear()
                try:
                    async with self._round:
                        await self._dispatch_ready()
                except Exception:  # a failing queue must not stop dispatching for good
                    log.exception("dispatch round failed")
        finally:
            for task in self._in_flight:
                task.cancel()

    async def _dispatch_ready(self) -> None:
        if self._stopping:
            return
        for requirement in await self._queue.requirements():
            if self._stopping:
                return  # items taken below are assigned to the end; none are taken after this
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
            session.grant(1)
            return
        if message is None:
            session.grant(1)
            self.wake()
        else:
            session.running.add(AttemptRef(message.job_id, message.todo.id, message.attempt))
            session.deliver(message)
        try:
            await self._queue.ack([item])
        except Exception:
            # The assignment is durable and on its way: the entry comes back and is found stale.
            log.warning("acking %s/%s failed", item.task.job_id, item.task.todo.id, exc_info=True)
