"""Agent sessions: one per connected agent stream, with its credits and outbound messages."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cpa_scheduler.domain import AgentState, AttemptRef, ToDo

from .matching import AgentProfile, Requirement, unmet_requirement


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentMessage:
    """Send this attempt to the agent."""

    tenant: str
    job_id: str
    todo: ToDo
    attempt: int
    deadline: datetime | None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    """The values of the ToDo's inputs (Job.inputs_of), keyed by input name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelMessage:
    """Tell the agent to stop this attempt."""

    attempt: AttemptRef
    reason: str


Outbound = AssignmentMessage | CancelMessage


@dataclass(slots=True, kw_only=True)
class AgentSession:
    """The server side of one agent stream. `credits` never goes below zero.

    `deliver` hands a message to the stream (the API layer converts it to the wire) and
    `close` ends the stream; both never block.
    """

    profile: AgentProfile
    connect_time: datetime
    last_seen_time: datetime
    deliver: Callable[[Outbound], None]
    close: Callable[[], None]
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: AgentState = AgentState.CONNECTED
    credits: int = 0
    running: set[AttemptRef] = field(default_factory=set)

    @property
    def agent_id(self) -> str:
        return self.profile.agent_id

    def grant(self, slots: int) -> None:
        """Credits the agent gave (or a result returned), never more than its free slots as
        this server knows them: a credit and a result may both count a slot freed during a
        reconnect."""
        self.credits = max(0, min(self.credits + slots, self.profile.slots - len(self.running)))

    @property
    def takes_work(self) -> bool:
        return self.state is AgentState.CONNECTED and self.credits > 0


class SessionRegistry:
    """The sessions of this process, by agent id; a newer session of an agent replaces the older."""

    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}

    def add(self, session: AgentSession) -> AgentSession | None:
        """Register `session`; returns the session it replaced, which the caller closes."""
        previous = self._sessions.get(session.agent_id)
        self._sessions[session.agent_id] = session
        return previous

    def remove(self, session: AgentSession) -> None:
        if self._sessions.get(session.agent_id) is session:
            del self._sessions[session.agent_id]

    def get(self, agent_id: str) -> AgentSession | None:
        return self._sessions.get(agent_id)

    def __iter__(self) -> Iterator[AgentSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def eligible(self, requirement: Requirement) -> list[AgentSession]:
        """Sessions that can run `requirement` and have a free credit, most free credits first."""
        sessions = [
            s for s in self._sessions.values() if s.takes_work and s.profile.can_run(requirement)
        ]
        sessions.sort(key=lambda s: -s.credits)
        return sessions

    def waiting_reason(self, requirement: Requirement) -> str:
        """Why a queued task with this requirement is not running (derived, never stored)."""
        unmet = unmet_requirement(requirement, (s.profile for s in self._sessions.values()))
        if unmet is not None:
            return unmet
        capable = [s for s in self._sessions.values() if s.profile.can_run(requirement)]
        if all(s.state is AgentState.DRAINING for s in capable):
            return f"all {len(capable)} capable agents are draining"
        if any(s.takes_work for s in capable):
            return "being dispatched to a capable agent"
        return f"all {len(capable)} capable agents are busy"
