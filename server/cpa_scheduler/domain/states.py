"""Job, task and attempt states and their legal transitions, kept as data (AIP-216 style).

FAILED and CANCELLED are terminal (nothing happens to them on their own) but not final: RetryJob
re-drives a dead-lettered or cancelled job, which moves the job and its unfinished tasks (FAILED,
CANCELLED, SKIPPED) back to PENDING. SUCCEEDED is final for the job (re-running finished work is a
new job), and for a task but in one case: a session restart (domain/sessions.py) moves the tasks
of a session that ran, and those QUEUED behind them, back to PENDING (SUCCEEDED, QUEUED or
RUNNING -> PENDING) so that the session runs again from its first task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Generic, TypeVar

from .errors import FailedPrecondition, Reason


class JobState(StrEnum):
    """Lifecycle of a job."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class TaskState(StrEnum):
    """Lifecycle of one task (a ToDo inside a job)."""

    PENDING = "PENDING"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"


ACTIVE_TASK_STATES = frozenset({TaskState.QUEUED, TaskState.RUNNING})
"""Tasks handed to the work queue or an agent: they hold a slot of the job's parallelism, and a
session has at most one of them at a time."""


class AttemptState(StrEnum):
    """Lifecycle of one assignment of a task to an agent (task, attempt number)."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    LOST = "LOST"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


S = TypeVar("S", JobState, TaskState, AttemptState)


@dataclass(frozen=True, slots=True, kw_only=True)
class StateMachine(Generic[S]):
    """The legal targets of every state of one kind of resource, and which states are terminal."""

    kind: str
    transitions: Mapping[S, frozenset[S]]
    terminal: frozenset[S]

    def can_transition(self, current: S, target: S) -> bool:
        return target in self.transitions[current]

    def transition(self, current: S, target: S) -> S:
        """Return `target` if the move is legal, else raise FailedPrecondition."""
        if target not in self.transitions[current]:
            raise FailedPrecondition(
                f"{self.kind} cannot go from {current.value} to {target.value}",
                reason=Reason.ILLEGAL_TRANSITION,
            )
        return target

    def is_terminal(self, state: S) -> bool:
        return state in self.terminal

    def allowed_targets(self, current: S) -> frozenset[S]:
        return self.transitions[current]


_J = JobState
JOB_STATE_MACHINE: StateMachine[JobState] = StateMachine(
    kind="job",
    transitions=MappingProxyType(
        {
            _J.PENDING: frozenset({_J.RUNNING, _J.FAILED, _J.CANCELLED}),
            _J.RUNNING: frozenset({_J.WAITING_APPROVAL, _J.SUCCEEDED, _J.FAILED, _J.CANCELLED}),
            _J.WAITING_APPROVAL: frozenset({_J.RUNNING, _J.FAILED, _J.CANCELLED}),
            _J.SUCCEEDED: frozenset(),
            _J.FAILED: frozenset({_J.PENDING}),
            _J.CANCELLED: frozenset({_J.PENDING}),
        }
    ),
    terminal=frozenset({_J.SUCCEEDED, _J.FAILED, _J.CANCELLED}),
)

_T = TaskState
TASK_STATE_MACHINE: StateMachine[TaskState] = StateMachine(
    kind="task",
    transitions=MappingProxyType(
        {
            _T.PENDING: frozenset(
                {_T.QUEUED, _T.WAITING_APPROVAL, _T.SKIPPED, _T.CANCELLED, _T.FAILED}
            ),
            _T.WAITING_APPROVAL: frozenset({_T.QUEUED, _T.FAILED, _T.CANCELLED}),
            # FAILED straight from QUEUED: schedule-to-start timeout or job deadline.
            # PENDING from QUEUED, RUNNING or SUCCEEDED: a session restart (only).
            _T.QUEUED: frozenset({_T.RUNNING, _T.FAILED, _T.CANCELLED, _T.PENDING}),
            # QUEUED again from RUNNING: a retry after backoff, or a lost attempt re-queued.
            _T.RUNNING: frozenset({_T.SUCCEEDED, _T.FAILED, _T.QUEUED, _T.CANCELLED, _T.PENDING}),
            _T.SUCCEEDED: frozenset({_T.PENDING}),
            _T.FAILED: frozenset({_T.PENDING}),
            _T.CANCELLED: frozenset({_T.PENDING}),
            _T.SKIPPED: frozenset({_T.PENDING}),
        }
    ),
    terminal=frozenset({_T.SUCCEEDED, _T.FAILED, _T.CANCELLED, _T.SKIPPED}),
)

_A = AttemptState
ATTEMPT_STATE_MACHINE: StateMachine[AttemptState] = StateMachine(
    kind="attempt",
    transitions=MappingProxyType(
        {
            _A.RUNNING: frozenset({_A.SUCCEEDED, _A.FAILED, _A.LOST, _A.CANCELLED, _A.TIMED_OUT}),
            _A.SUCCEEDED: frozenset(),
            _A.FAILED: frozenset(),
            _A.LOST: frozenset(),
            _A.CANCELLED: frozenset(),
            _A.TIMED_OUT: frozenset(),
        }
    ),
    terminal=frozenset({_A.SUCCEEDED, _A.FAILED, _A.LOST, _A.CANCELLED, _A.TIMED_OUT}),
)


def state_machine(state: S) -> StateMachine[S]:
    """The machine `state` belongs to (job, task or attempt)."""
    if isinstance(state, JobState):
        return JOB_STATE_MACHINE
    if isinstance(state, TaskState):
        return TASK_STATE_MACHINE
    if isinstance(state, AttemptState):
        return ATTEMPT_STATE_MACHINE
    raise TypeError(f"not a job, task or attempt state: {state!r}")


def _same_kind(current: S, target: S) -> StateMachine[S]:
    machine = state_machine(current)
    if type(target) is not type(current):
        raise TypeError(
            f"a {type(current).__name__} cannot move to a {type(target).__name__}: {target!r}"
        )
    return machine


def transition(current: S, target: S) -> S:
    """Return `target` if `current -> target` is legal; raise FailedPrecondition otherwise."""
    return _same_kind(current, target).transition(current, target)


def can_transition(current: S, target: S) -> bool:
    return _same_kind(current, target).can_transition(current, target)


def is_terminal(state: S) -> bool:
    """Whether nothing more happens to the resource by itself (RetryJob may still re-drive it)."""
    return state_machine(state).is_terminal(state)
