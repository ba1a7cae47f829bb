"""What a job is made of (its source, options, tasks and attempts), what one change of it
produced (JobChanges), and the errors its fences raise. Plain values: the rules that move them
are the Job aggregate's (job.py, job_core.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .artifacts import ArtifactRecord
from .audit import AuditEntry
from .errors import FailedPrecondition, Reason
from .events import JobEvent, TaskError
from .retry import RetryPolicy
from .sessions import SessionEnd
from .states import AttemptState, TaskState
from .todo import ToDo


class SourceKind(StrEnum):
    """The form in which the work was asked for."""

    TEXT = "text"
    INTENT = "intent"
    TODOS = "todos"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSource:
    """What the caller asked for; for TODOS the steps themselves are the job's tasks."""

    kind: SourceKind
    text: str = ""
    intent: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """How to run the job. `max_parallelism` is resolved (> 0) before the job is created."""

    max_parallelism: int
    context: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    deadline: datetime | None = None
    default_retry_policy: RetryPolicy | None = None
    callback_url: str = ""
    # For a job a LAM request created: who its callbacks are addressed to (the request's
    # sender) and what they answer (the request's reply_with, or its id). docs/CALLBACKS.md.
    callback_receiver: str = ""
    callback_in_reply_to: str = ""
    # W3C context (traceparent, tracestate) of the submission when tracing is on: the spans of
    # the job's work, on any replica and agent, continue its trace. Empty when off.
    trace_context: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Attempt:
    """One dispatch of a task to an agent."""

    number: int
    agent_id: str
    state: AttemptState
    start_time: datetime
    end_time: datetime | None = None
    error: TaskError | None = None
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    """What the attempt stored (Job.store_artifact), in the order first stored."""


@dataclass(slots=True, kw_only=True)
class Task:
    """A ToDo inside a job. `failures` counts against max_attempts, `losses` against redelivery."""

    todo: ToDo
    state: TaskState = TaskState.PENDING
    attempt: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    outputs: dict[str, Any] | None = None
    error: TaskError | None = None
    failures: int = 0
    losses: int = 0
    agent_id: str = ""
    lease_until: datetime | None = None
    next_attempt_time: datetime | None = None
    start_by: datetime | None = None
    """While QUEUED with a schedule-to-start timeout: when it fails unless an agent took it."""
    timeout_at: datetime | None = None
    """While RUNNING with a timeout: when the server stops waiting for the attempt's result."""
    queue_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def id(self) -> str:
        return self.todo.id

    @property
    def artifacts(self) -> list[ArtifactRecord]:
        """Every attempt's artifacts, oldest attempt first (failed attempts' included)."""
        return [artifact for attempt in self.attempts for artifact in attempt.artifacts]


@dataclass(frozen=True, slots=True)
class AttemptRef:
    """Names one attempt of one task of one job: the unit of dispatch and fencing."""

    job_id: str
    task_id: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundCallback:
    """A message for the job's callback URL, written to the outbox in the transaction of the
    change that caused it (only jobs with a callback_url have any). Its ids derive from the job
    and the event's sequence, so a change applied twice makes the same ones."""

    delivery_id: str
    message_id: str
    event_type: str
    """"inform", "done" or "failure": the LAM performative the body carries."""
    sequence: int
    url: str
    body_json: str
    create_time: datetime


@dataclass(slots=True, kw_only=True)
class JobChanges:
    """What one mutation produced, for storage to write and the orchestrator to carry out."""

    events: list[JobEvent] = field(default_factory=list)
    dirty_tasks: set[str] = field(default_factory=set)
    queued: list[str] = field(default_factory=list)
    # QUEUED tasks that left the queue without being taken (cancelled, never started in time):
    # their entries are withdrawn from the work queue after commit.
    withdrawn: list[str] = field(default_factory=list)
    # The agents withdrawn tasks of sessions were pinned to (their queue entries are there).
    withdrawn_pins: dict[str, str] = field(default_factory=dict)
    cancels: list[tuple[AttemptRef, str]] = field(default_factory=list)
    # Sessions whose tasks changed state (their end is checked in take_changes), and the
    # agents to tell that a session of theirs ended.
    sessions_touched: set[str] = field(default_factory=set)
    sessions_ended: list[SessionEnd] = field(default_factory=list)
    # Messages for the callback URL (jobs that have one): the store writes them with the change.
    callbacks: list[OutboundCallback] = field(default_factory=list)
    # Audit entries of the change (who asked for it, or the agent's outcome): written with it.
    audit: list[AuditEntry] = field(default_factory=list)


class StaleAttempt(FailedPrecondition):
    """A report or assignment for an attempt that is not the task's current one (fencing)."""

    reason = Reason.STALE_ATTEMPT


class AttemptNotHeld(FailedPrecondition):
    """A report about the task's current attempt from an agent that does not hold it (another
    agent's stream): refused, and it changes nothing."""

    reason = Reason.ATTEMPT_NOT_HELD


class UnresolvedInput(FailedPrecondition):
    """A task's input names an output its upstream task did not produce (see Job.inputs_of).

    `error` is how the task fails for it: not retryable, since the upstream's outputs are final.
    """

    reason = Reason.UNRESOLVED_INPUT

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message, reason=Reason.UNRESOLVED_INPUT, field=field)
        self.error = TaskError(
            code=Reason.UNRESOLVED_INPUT.value,
            message=message,
            retryable=False,
            reason=Reason.UNRESOLVED_INPUT,
        )
