"""The agent's side of task sessions (ToDo.session): closing what executors keep for a session.

Executors that keep state per session (a browser context per (job_id, session)) define
`async close_session(job_id, session)` (see the Executor docstring). This module calls it on
every executor that defines it when a session is over for this agent:
- the scheduler says so (ConnectResponse.session_ended: the session's last task ended, the job
  ended, or the session moved to another agent after this one was lost);
- the agent learns that its attempt of the session is no longer current (stale in a
  HeartbeatAck, not adopted at reconnect) or was cancelled: the session may have moved, or the
  job been stopped, while this agent did not hear the SessionEnded.

Closing is idempotent from the executor's point of view (a session closed twice, or one it never
opened, is a no-op there), fire-and-forget for the connection (it never blocks the stream), and
never crashes the agent: an error is logged. An attempt of a session waits for a close of that
session still under way before it starts, so a fresh context never races the old one's close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cpa_agent.executors.registry import ExecutorRegistry

logger = logging.getLogger(__name__)

# How long the agent waits, when it stops, for closes under way.
CLOSE_GRACE_S = 10.0

SessionKey = tuple[str, str]
"""(job_id, session)"""


class SessionCloser:
    """Calls close_session on the executors that define it, once per request, in the background."""

    def __init__(self, registry: ExecutorRegistry) -> None:
        self._registry = registry
        self._closing: dict[SessionKey, asyncio.Task[None]] = {}
        self.closed: list[tuple[SessionKey, str]] = []
        """Every close carried out, with why (oldest first; for logs and tests)."""

    def _closers(self) -> list[Callable[[str, str], Awaitable[Any]]]:
        closers: list[Callable[[str, str], Awaitable[Any]]] = []
        seen: set[int] = set()
        for action in self._registry.actions():
            executor = self._registry.get(action)
            if executor is None or id(executor) in seen:
                continue
            seen.add(id(executor))
            close = getattr(executor, "close_session", None)
            if callable(close):
                closers.append(close)
        return closers

    def close(self, job_id: str, session: str, why: str) -> None:
        """Close `session` of `job_id` on every executor that keeps sessions (never blocks)."""
        if not session:
            return
        key = (job_id, session)
        previous = self._closing.get(key)
        task = asyncio.create_task(self._close(key, why, previous), name=f"close session {key}")
        self._closing[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: SessionKey, done: asyncio.Task[None]) -> None:
        if self._closing.get(key) is done:
            del self._closing[key]

    async def _close(self, key: SessionKey, why: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # one close at a time per session
        job_id, session = key
        logger.info("closing session %r of job %s: %s", session, job_id, why)
        for close in self._closers():
            try:
                await close(job_id, session)
            except Exception:  # an executor's failure must never end the agent
                logger.exception("close_session(%s, %r) failed", job_id, session)
        self.closed.append((key, why))

    async def wait_closed(self, job_id: str, session: str) -> None:
        """Returns once no close of `session` of `job_id` is under way."""
        while (task := self._closing.get((job_id, session))) is not None:
            await asyncio.wait([task])

    async def aclose(self) -> None:
        """Waits (bounded) for the closes under way; the agent stops."""
        if self._closing:
            await asyncio.wait(list(self._closing.values()), timeout=CLOSE_GRACE_S)
