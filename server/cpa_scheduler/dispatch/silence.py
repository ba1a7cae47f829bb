"""Ends the stream of an agent that has gone silent (frozen, or cut off without a FIN or RST)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from .sessions import AgentSession

log = logging.getLogger(__name__)


class SilenceWatch:
    """Closes `session` once it has been silent for a lease while it holds attempts (its
    leases are running out, and it must get no new work meanwhile), or for `idle_limit_s`
    while it holds none.

    One timer per session, re-armed from the last message seen, instead of a task that wakes
    at least once a lease: thousands of idle sessions with a long idle heartbeat cost one
    wake-up each per idle limit. The first attempt an idle session is given pulls its timer in
    to a lease (`busy`, called by the session).
    """

    __slots__ = ("_clock", "_handle", "_idle_limit_s", "_lease_s", "_loop", "_session")

    def __init__(
        self,
        session: AgentSession,
        *,
        lease_s: float,
        idle_limit_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._session = session
        self._lease_s = lease_s
        self._idle_limit_s = max(lease_s, idle_limit_s)
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        session.on_busy = self.busy
        self._arm()

    def _limit_s(self) -> float:
        return self._lease_s if self._session.running else self._idle_limit_s

    def _silent_s(self) -> float:
        return (self._clock() - self._session.last_seen_time).total_seconds()

    def _arm(self) -> None:
        self._handle = self._loop.call_later(
            max(0.0, self._limit_s() - self._silent_s()), self._check
        )

    def _check(self) -> None:
        silent_s = self._silent_s()
        if silent_s < self._limit_s():
            self._arm()  # a message came meanwhile: wait from it
            return
        self._handle = None
        session = self._session
        log.warning("agent %s silent for %.1fs: closing its stream", session.agent_id, silent_s)
        session.close()

    def busy(self) -> None:
        """The session went from no attempts to one: a lease's limit from now on. A timer due
        within a lease already checks in time (a busy agent's, mostly): left as it is, so an
        assignment costs nothing here."""
        handle = self._handle
        if handle is not None and handle.when() > self._loop.time() + self._lease_s:
            handle.cancel()
            self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._session.on_busy = None
