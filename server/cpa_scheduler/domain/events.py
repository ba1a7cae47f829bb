"""Job events: what happened to a job, numbered per job from 1 without gaps, stored and streamed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .artifacts import ArtifactRecord
from .errors import Reason, clip, without_nul
from .states import JobState, TaskState

# A task error is stored with its attempt and sent back in every view of the job, and its text
# often comes from an agent (its error, a decline's reason): bounded, so that a few failed
# attempts cannot push a job's answer past a client's receive limit. UTF-8 bytes.
MAX_TASK_ERROR_MESSAGE_BYTES = 4096
MAX_TASK_ERROR_CODE_BYTES = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskError:
    """How an attempt or task failed: the executor's code and message, or the scheduler's reason.
    Message and code are clipped (head and tail kept) past MAX_TASK_ERROR_*_BYTES, and hold no
    U+0000 (replaced by U+FFFD: an agent's text is kept, and PostgreSQL cannot store NUL)."""

    code: str
    message: str
    retryable: bool = False
    reason: Reason | None = None
    # The agent's structured details (a JSON object), bounded by the API layer before they get
    # here (CPA_TASK_ERROR_DETAILS_MAX_BYTES); None for the scheduler's own errors.
    details: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        # Frozen: set through object.__setattr__, once, at construction.
        code = clip(without_nul(self.code), MAX_TASK_ERROR_CODE_BYTES)
        object.__setattr__(self, "code", code)
        message = clip(without_nul(self.message), MAX_TASK_ERROR_MESSAGE_BYTES)
        object.__setattr__(self, "message", message)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStateChanged:
    """The job moved between states; `from_state` is None for the job's creation."""

    from_state: JobState | None
    to_state: JobState
    error: TaskError | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStateChanged:
    """A task moved between states (for a given attempt, on a given agent when one runs it)."""

    task_id: str
    from_state: TaskState
    to_state: TaskState
    attempt: int = 0
    agent_id: str = ""
    error: TaskError | None = None
    outputs: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskProgress:
    """A running attempt reported progress; percent is None when the executor does not know.
    The message is clipped as a TaskError's: it is stored in every event and sent to watchers."""

    task_id: str
    attempt: int
    percent: float | None
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", clip(self.message, MAX_TASK_ERROR_MESSAGE_BYTES))


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRetryScheduled:
    """A failed or lost attempt will be followed by another, not before `next_attempt_time`."""

    task_id: str
    failed_attempt: int
    next_attempt_time: datetime
    error: TaskError | None
    lost: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCancelRequested:
    """A cancellation was accepted, with the reason its caller gave ("" when none)."""

    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRestarted:
    """A session starts again from its first task: the agent holding it (`from_agent`) was lost.
    `task_ids`: the tasks going back to PENDING, in the order they were added to the job."""

    session: str
    reason: str
    from_agent: str
    task_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskArtifactStored:
    """A running attempt stored an artifact: from now on it is listed and downloadable."""

    artifact: ArtifactRecord


EventPayload = (
    JobStateChanged
    | TaskStateChanged
    | TaskProgress
    | TaskRetryScheduled
    | JobCancelRequested
    | SessionRestarted
    | TaskArtifactStored
)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    """One event of a job. `terminal` marks the job's end (until a RetryJob re-drives it)."""

    job_id: str
    sequence: int
    create_time: datetime
    payload: EventPayload
    terminal: bool = False
    tenant: str = field(default="", compare=False)
