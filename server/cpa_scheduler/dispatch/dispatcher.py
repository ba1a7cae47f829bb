"""Dispatcher: matches ready tasks to agent sessions with free credits and starts attempts.

Event-driven: it wakes when work may be ready or an agent grants credits (plus a slow safety
poll against a lost notification or wake-up). It takes from the queue no more than the capable
sessions have credits for, takes a credit before the (asynchronous) assignment commits, and
acks the queue item only after the assignment is durable (or found stale).

It knows when the queue holds no work for a requirement (its last round took less than the
credits allowed, and no work was announced since): then credits coming back need no round (no
queue round trip), and a new job's task may take a credit at creation (`claim`) without
passing queued work.

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
from cpa_scheduler.telemetry import tracing
from cpa_scheduler.telemetry.logs import job_context

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
        # Work may be queued for any requirement (announced by the queue, or not looked at
        # since the start or the last poll) until a round looks; `_announced` counts the
        # announcements, so that one made during a round is not forgotten at its end.
        self._unknown_work = True
        self._announced = 0
        # Requirements whose queue still held work at the end of the last round.
        self._waiting: set[str] = set()
        queue.on_ready = self.work_ready
        self._wakeup.set()  # a first round learns what the queue holds

    def wake(self) -> None:
        """Capacity appeared (credits, a new agent): a round runs if work may be queued."""
        self._wakeup.set()

    def work_ready(self) -> None:
        """Work may be ready in the queue (set as the queue's on_ready)."""
        self._unknown_work = True
        self._announced += 1
        self._wakeup.set()

    def claim(self, tenant: str, todo: ToDo) -> AgentSession | None:
        """A session that takes `todo` now, its credit taken, for a task assigned as it is
        created (Orchestrator.claim_agent); None while queued work of its requirement may be
        waiting for credits, or a round runs: the queue goes first."""
        if self._stopping or self._unknown_work or self._round.locked():
            return None
        requirement = Requirement.of(tenant, todo)
        if requirement.key in self._waiting:
            return None
        sessions = self._sessions.eligible(requirement)
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
                try:
                    async with asyncio.timeout(self._poll_interval_s):
                        await self._wakeup.wait()
                except TimeoutError:
                    self._unknown_work = True  # the safety poll: look whatever we know
                self._wakeup.clear()
                if not (self._unknown_work or self._waiting):
                    continue  # credits came back, and the queue holds nothing for them
                try:
                    await self.dispatch_round()
                except Exception:  # a failing queue must not stop dispatching for good
                    log.exception("dispatch round failed")
        finally:
            for task in self._in_flight:
                task.cancel()

    async def dispatch_round(self) -> None:
        """Take what the queue holds for the sessions' free credits and start assigning it
        (run() calls it on every wake-up that may find work)."""
        async with self._round:
            await self._dispatch_ready()

    async def _dispatch_ready(self) -> None:
        if self._stopping:
            return
        announced = self._announced
        waiting: set[str] = set()
        for requirement in await self._queue.requirements():
            if self._stopping:
                return  # items taken below are assigned to the end; none are taken after this
            sessions = self._sessions.eligible(requirement)
            capacity = sum(s.credits for s in sessions)
            if capacity == 0:
                waiting.add(requirement.key)
                continue
            items = await self._queue.take(requirement, capacity)
            if len(items) >= capacity:
                waiting.add(requirement.key)  # there may be more
            for item in items:
                # Most free credits first spreads the load; eligible() re-checks credits.
                sessions = [s for s in sessions if s.takes_work]
                if not sessions:
                    waiting.add(requirement.key)
                    break  # credits were taken meanwhile; the item comes back unacked
                session = max(sessions, key=lambda s: s.credits)
                session.credits -= 1
                task = asyncio.create_task(self._assign(item, session))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        self._waiting = waiting
        if announced == self._announced:
            self._unknown_work = False

    async def _assign(self, item: WorkItem, session: AgentSession) -> None:
        task = item.task
        # Under the job's trace (kept by the submitting replica), naming it on every log line.
        with (
            job_context(
                task.tenant,
                task.job_id,
                task_id=task.todo.id,
                attempt=task.attempt + 1,
                trace_context=task.trace_context,
            ),
            tracing.span_under(
                task.trace_context,
                "cpa.assign",
                **{"cpa.task_id": task.todo.id, "cpa.agent_id": session.agent_id},
            ),
        ):
            await self._assign_traced(item, session)

    async def _assign_traced(self, item: WorkItem, session: AgentSession) -> None:
        try:
            message = await self._orchestrator.assign(
                item.task, session.agent_id, agent_tenant=session.profile.tenant
            )
        except Exception:
            # Not acked: the queue delivers it again (the store still says QUEUED).
            log.exception("assigning %s/%s failed", item.task.job_id, item.task.todo.id)
            session.grant(1)
            return
        if message is None:
            session.grant(1)
            self.wake()
        else:
            session.hold(AttemptRef(message.job_id, message.todo.id, message.attempt))
            session.deliver(message)
            log.debug(
                "assigned %s/%s to agent %s", message.job_id, message.todo.id, session.agent_id
            )
        try:
            await self._queue.ack([item])
        except Exception:
            # The assignment is durable and on its way: the entry comes back and is found stale.
            log.warning("acking %s/%s failed", item.task.job_id, item.task.todo.id, exc_info=True)
