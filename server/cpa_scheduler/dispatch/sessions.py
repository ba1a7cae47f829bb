"""Agent sessions: one per connected agent stream, with its credits and outbound messages."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cpa_scheduler.domain import (
    AgentState,
    ArtifactRecord,
    AttemptRef,
    DomainError,
    Reason,
    ToDo,
)

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
    input_artifacts: Mapping[str, ArtifactRecord] = field(default_factory=dict)
    """The artifacts of its artifact_name inputs (Job.artifact_inputs_of), by input name."""
    trace_context: Mapping[str, str] = field(default_factory=dict)
    """The job's W3C context (JobOptions.trace_context), for the agent's spans."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelMessage:
    """Tell the agent to stop this attempt."""

    attempt: AttemptRef
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEndMessage:
    """Tell the agent that a session of a job it ran tasks of is over (SessionEnded)."""

    job_id: str
    session: str
    reason: str


# What other replicas may route to an agent held here (AgentDirectory.route_cancel).
ControlMessage = CancelMessage | SessionEndMessage
Outbound = AssignmentMessage | CancelMessage | SessionEndMessage


class AgentIdInUse(DomainError):  # noqa: N818 (named after its reason)
    """A hello names an agent id a live session of its tenant already uses, on this replica or
    another (ALREADY_EXISTS): two processes must not share an id. A reconnecting agent names its
    last session (`resume_session_id`) and takes that session over instead."""

    reason = Reason.AGENT_ID_IN_USE

    def __init__(self, tenant: str, agent_id: str, *, holder: str) -> None:
        super().__init__(
            f"agent id {agent_id[:200]!r} is in use by a live session of tenant {tenant[:200]!r} "
            f"({holder}); a reconnecting agent names its last session in "
            "hello.resume_session_id, another agent needs its own id",
            field="hello.agent_id",
        )


# How many earlier session ids a session remembers as its own: an agent whose welcome was lost
# on a cut still names the session before, and takes over the one it never heard of.
RESUMABLE_SESSIONS = 4


class AgentSession:
    """The server side of one agent stream. `credits` never goes below zero.

    `deliver` hands a message to the stream (the API layer converts it to the wire) and
    `close` ends the stream; both never block. Changes of `credits` and `state` keep the
    registry's index of sessions that take work up to date.
    """

    __slots__ = (
        "_credits",
        "_on_change",
        "_state",
        "close",
        "connect_time",
        "deliver",
        "last_seen_time",
        "on_busy",
        "profile",
        "resumable_ids",
        "running",
        "session_id",
    )

    def __init__(
        self,
        *,
        profile: AgentProfile,
        connect_time: datetime,
        last_seen_time: datetime,
        deliver: Callable[[Outbound], None],
        close: Callable[[], None],
        session_id: str = "",
        state: AgentState = AgentState.CONNECTED,
        credits: int = 0,
        running: set[AttemptRef] | None = None,
    ) -> None:
        self.profile = profile
        self.connect_time = connect_time
        self.last_seen_time = last_seen_time
        self.deliver = deliver
        self.close = close
        self.session_id = session_id or uuid.uuid4().hex
        # Ids a reconnecting agent may name to take this session over: its own and a few of the
        # sessions it took over.
        self.resumable_ids: tuple[str, ...] = (self.session_id,)
        self.running: set[AttemptRef] = running if running is not None else set()
        self._credits = max(0, credits)
        self._state = state
        self._on_change: Callable[[AgentSession], None] | None = None
        # Told when the session goes from no attempts to one (its silence watch).
        self.on_busy: Callable[[], None] | None = None

    @property
    def agent_id(self) -> str:
        return self.profile.agent_id

    @property
    def key(self) -> tuple[str, str]:
        """(tenant, agent_id): an agent id names an agent within its tenant only."""
        return (self.profile.tenant, self.profile.agent_id)

    @property
    def credits(self) -> int:
        return self._credits

    @credits.setter
    def credits(self, value: int) -> None:
        was_taking = self.takes_work
        self._credits = max(0, value)
        if self._on_change is not None and self.takes_work != was_taking:
            self._on_change(self)

    @property
    def state(self) -> AgentState:
        return self._state

    @state.setter
    def state(self, value: AgentState) -> None:
        was_taking = self.takes_work
        self._state = value
        if self._on_change is not None and self.takes_work != was_taking:
            self._on_change(self)

    def hold(self, attempt: AttemptRef) -> None:
        """Records an attempt given to this session (before it is delivered)."""
        was_idle = not self.running
        self.running.add(attempt)
        if was_idle and self.on_busy is not None:
            self.on_busy()

    def grant(self, slots: int) -> None:
        """Credits the agent gave (or a result returned), never more than its free slots as
        this server knows them: a credit and a result may both count a slot freed during a
        reconnect."""
        self.credits = max(0, min(self.credits + slots, self.profile.slots - len(self.running)))

    @property
    def takes_work(self) -> bool:
        return self._state is AgentState.CONNECTED and self._credits > 0

    def __repr__(self) -> str:
        return (
            f"AgentSession({self.profile.tenant!r}, {self.agent_id!r}, "
            f"session_id={self.session_id!r}, credits={self._credits}, state={self._state})"
        )


class SessionRegistry:
    """The sessions of this process, by (tenant, agent id), one live session per key.

    Indexed so that dispatching never looks at every session: by tenant (ListAgents), by
    (tenant, action) (what a requirement may match) and, within that, the sessions that take
    work now (free credits, not draining). The cost of finding an agent for a task grows with
    the free agents offering its action, not with the agents connected.
    """

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], AgentSession] = {}
        self._by_tenant: dict[str, dict[str, AgentSession]] = {}
        self._by_action: dict[tuple[str, str], dict[str, AgentSession]] = {}
        self._free: dict[tuple[str, str], dict[str, AgentSession]] = {}

    def add(self, session: AgentSession, *, resume_session_id: str = "") -> AgentSession | None:
        """Register `session`; returns the live session of its key it took over (named by
        `resume_session_id`), which the caller closes. AgentIdInUse when a live session of the
        key exists and `resume_session_id` does not name it: a second process using the id."""
        tenant, agent_id = key = session.key
        previous = self.check_free(session, resume_session_id=resume_session_id)
        if previous is not None:
            self.remove(previous)
            session.resumable_ids = (session.session_id, *previous.resumable_ids)[
                :RESUMABLE_SESSIONS
            ]
        self._sessions[key] = session
        self._by_tenant.setdefault(tenant, {})[agent_id] = session
        for action in session.profile.actions:
            self._by_action.setdefault((tenant, action), {})[session.session_id] = session
        session._on_change = self._changed
        self._changed(session)
        return previous

    def check_free(
        self, session: AgentSession, *, resume_session_id: str = ""
    ) -> AgentSession | None:
        """The live session `session` would take over (None: its key is free); AgentIdInUse
        when there is one and `resume_session_id` does not name it."""
        previous = self._sessions.get(session.key)
        if previous is None or previous is session:
            return None
        if not resume_session_id or resume_session_id not in previous.resumable_ids:
            silent_s = (session.connect_time - previous.last_seen_time).total_seconds()
            raise AgentIdInUse(
                *session.key, holder=f"on this replica, last heard {max(0.0, silent_s):.1f} s ago"
            )
        return previous

    def remove(self, session: AgentSession) -> None:
        key = session.key
        if self._sessions.get(key) is not session:
            return
        del self._sessions[key]
        tenant, agent_id = key
        _discard(self._by_tenant, tenant, agent_id)
        for action in session.profile.actions:
            _discard(self._by_action, (tenant, action), session.session_id)
            _discard(self._free, (tenant, action), session.session_id)
        session._on_change = None

    def _changed(self, session: AgentSession) -> None:
        """`session` started or stopped taking work: keep the free index in step."""
        tenant = session.profile.tenant
        if session.takes_work:
            for action in session.profile.actions:
                self._free.setdefault((tenant, action), {})[session.session_id] = session
        else:
            for action in session.profile.actions:
                _discard(self._free, (tenant, action), session.session_id)

    def get(self, tenant: str, agent_id: str) -> AgentSession | None:
        return self._sessions.get((tenant, agent_id))

    def holds(self, session: AgentSession) -> bool:
        """Whether `session` is the live session of its agent (not one taken over or ended)."""
        return self._sessions.get(session.key) is session

    def of_tenant(self, tenant: str) -> list[AgentSession]:
        return list(self._by_tenant.get(tenant, {}).values())

    def __iter__(self) -> Iterator[AgentSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def eligible(self, requirement: Requirement) -> list[AgentSession]:
        """Sessions that can run `requirement` and have a free credit, most free credits first."""
        if requirement.agent_id:  # pinned to the agent holding the task's session
            session = self._sessions.get((requirement.tenant, requirement.agent_id))
            if (
                session is None
                or not session.takes_work
                or not session.profile.can_run(requirement)
            ):
                return []
            return [session]
        free = self._free.get((requirement.tenant, requirement.action))
        if not free:
            return []
        sessions = [s for s in free.values() if s.profile.can_run(requirement)]
        sessions.sort(key=lambda s: -s.credits)
        return sessions

    def waiting_reason(self, requirement: Requirement) -> str:
        """Why a queued task with this requirement is not running (derived, never stored).
        Looks only at the sessions offering its action."""
        offering = self._by_action.get((requirement.tenant, requirement.action), {})
        unmet = unmet_requirement(requirement, (s.profile for s in offering.values()))
        if unmet is not None:
            return unmet
        capable = [s for s in offering.values() if s.profile.can_run(requirement)]
        if all(s.state is AgentState.DRAINING for s in capable):
            return f"all {len(capable)} capable agents are draining"
        if any(s.takes_work for s in capable):
            return "being dispatched to a capable agent"
        return f"all {len(capable)} capable agents are busy"


def _discard(index: dict[Any, dict[str, AgentSession]], key: Any, member: str) -> None:
    """Remove `member` from the index entry `key`, and the entry once it is empty."""
    entry = index.get(key)
    if entry is not None:
        entry.pop(member, None)
        if not entry:
            del index[key]
