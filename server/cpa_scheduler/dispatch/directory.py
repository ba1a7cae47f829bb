"""Agent directory: which agents are connected to which replica, shared by all replicas.

Each replica announces its own sessions; ListAgents reads everyone's; a cancel for an agent
held by another replica is routed to that replica. In-process for the embedded mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cpa_scheduler.domain import AgentState

from .matching import AgentProfile
from .sessions import AgentIdInUse, AgentSession, ControlMessage, SessionRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRecord:
    """An agent as every replica sees it: its hello (profile) and a snapshot of its session."""

    profile: AgentProfile
    replica_id: str
    state: AgentState = AgentState.CONNECTED
    running_tasks: int = 0
    free_credits: int = 0
    connect_time: datetime
    last_seen_time: datetime
    session_ids: tuple[str, ...] = ()
    """The session's id and those it took over: what a hello may name to take it over."""

    @property
    def agent_id(self) -> str:
        return self.profile.agent_id

    @property
    def tenant(self) -> str:
        return self.profile.tenant

    @classmethod
    def of(cls, session: AgentSession, *, replica_id: str) -> AgentRecord:
        return cls(
            profile=session.profile,
            replica_id=replica_id,
            state=session.state,
            running_tasks=len(session.running),
            free_credits=session.credits,
            connect_time=session.connect_time,
            last_seen_time=session.last_seen_time,
            session_ids=session.resumable_ids,
        )


class AgentDirectory(Protocol):
    """Shared presence and control routing."""

    on_cancel: Callable[[ControlMessage, str, str], None]
    """Called with (message, tenant, agent_id) for the cancels and session ends other replicas
    route to this one."""

    async def list_agents(self, tenant: str) -> list[AgentRecord]:
        """Agents of every replica for `tenant`, by agent id."""
        ...

    async def route_cancel(self, tenant: str, agent_id: str, cancel: ControlMessage) -> bool:
        """Send a cancel (or a session's end) to the replica holding (`tenant`, `agent_id`);
        False when no replica holds it."""
        ...

    async def is_connected(self, tenant: str, agent_id: str) -> bool:
        """Whether a replica (this one or another) holds a session of the agent."""
        ...

    async def held_elsewhere(self, tenant: str, agent_id: str) -> AgentRecord | None:
        """The record of (`tenant`, `agent_id`) when another replica announces a session of it."""
        ...

    async def close_elsewhere(self, record: AgentRecord) -> None:
        """Ask the replica of `record` to close that session (its agent reconnected here)."""
        ...

    def announce_now(self) -> None:
        """This replica's sessions changed (an agent came or went): tell the others soon."""
        ...

    async def close(self) -> None: ...


class LocalAgentDirectory:
    """The embedded mode: one replica, the directory is its session registry."""

    def __init__(self, sessions: SessionRegistry, *, replica_id: str) -> None:
        self._sessions = sessions
        self._replica_id = replica_id
        self.on_cancel: Callable[[ControlMessage, str, str], None] = lambda cancel, t, a: None

    async def list_agents(self, tenant: str) -> list[AgentRecord]:
        return sorted(
            (
                AgentRecord.of(s, replica_id=self._replica_id)
                for s in self._sessions.of_tenant(tenant)
            ),
            key=lambda record: record.agent_id,
        )

    async def route_cancel(self, tenant: str, agent_id: str, cancel: ControlMessage) -> bool:
        session = self._sessions.get(tenant, agent_id)
        if session is None:
            return False
        session.deliver(cancel)
        return True

    async def is_connected(self, tenant: str, agent_id: str) -> bool:
        return self._sessions.get(tenant, agent_id) is not None

    async def held_elsewhere(self, tenant: str, agent_id: str) -> AgentRecord | None:
        """There is no other replica."""
        return None

    async def close_elsewhere(self, record: AgentRecord) -> None:
        """There is no other replica."""

    def announce_now(self) -> None:
        """Nothing to announce: there are no other replicas."""

    async def close(self) -> None:
        """Nothing to release."""


def announce_records(sessions: Sequence[AgentSession], *, replica_id: str) -> list[AgentRecord]:
    """This replica's sessions as directory records."""
    return [AgentRecord.of(s, replica_id=replica_id) for s in sessions]


async def taken_over_elsewhere(
    directory: AgentDirectory, session: AgentSession, resume_session_id: str
) -> AgentRecord | None:
    """The live session of `session`'s agent on another replica that `session` takes over (its
    hello named it in `resume_session_id`), to be closed there; AgentIdInUse when another replica
    holds a session of the agent that the hello does not name. A directory that cannot answer
    lets the agent in: the store still fences its reports to the attempts of its agent id."""
    tenant, agent_id = session.key
    try:
        record = await directory.held_elsewhere(tenant, agent_id)
    except Exception as error:
        log.warning("could not check agent %s against other replicas: %s", agent_id, error)
        return None
    if record is None:
        return None
    if resume_session_id and resume_session_id in record.session_ids:
        return record
    raise AgentIdInUse(tenant, agent_id, holder=f"on replica {record.replica_id[:200]!r}")
