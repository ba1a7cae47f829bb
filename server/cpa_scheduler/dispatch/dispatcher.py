"""Dispatcher: matches ready tasks to agent sessions with free credits and starts attempts.

Event-driven: it wakes when a task becomes ready or an agent grants credits, never polls.
Credits are taken before the (asynchronous) assignment commits, so an agent never has more
attempts in flight than it asked for; a stale assignment gives the credit back.
"""

from __future__ import annotations

import asyncio
import logging

from cpa_scheduler.domain import AttemptRef
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.queue import LocalWorkQueue
from cpa_scheduler.storage import QueuedTask

from .sessions import AgentSession, SessionRegistry

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs until cancelled: `run()` as a task; call `wake()` whenever work or capacity appears."""

    def __init__(
        self, *, queue: LocalWorkQueue, sessions: SessionRegistry, orchestrator: Orchestrator
    ) -> None:
        self._queue = queue
        self._sessions = sessions
        self._orchestrator = orchestrator
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        queue.on_ready = self.wake

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                self._dispatch_ready()
        finally:
            for task in self._in_flight:
                task.cancel()

    def _dispatch_ready(self) -> None:
        for requirement in self._queue.requirements():
            sessions = self._sessions.eligible(requirement)
            while sessions:
                item = self._queue.pop(requirement)
                if item is None:
                    break
                session = sessions[0]
                session.credits -= 1
                if not session.takes_work:
                    sessions.pop(0)
                else:
                    # Keep the session with the most free credits first (spread the load).
                    sessions.sort(key=lambda s: -s.credits)
                task = asyncio.create_task(self._assign(item, session))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _assign(self, item: QueuedTask, session: AgentSession) -> None:
        try:
            message = await self._orchestrator.assign(item, session.agent_id)
        except Exception:
            log.exception("assigning %s/%s failed", item.job_id, item.todo.id)
            message = None
            self._queue.put(item)  # the store still says QUEUED: try again
        if message is None:
            session.credits += 1
            self.wake()
            return
        session.running.add(AttemptRef(message.job_id, message.todo.id, message.attempt))
        session.deliver(message)
