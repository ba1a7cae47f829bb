"""The scheduler's domain model: tasks, task graphs, states, retry policy and domain errors.

Pure Python (no gRPC, SQL, Redis or network); import from here rather than from the submodules.
"""

from __future__ import annotations

from .agent_query import AgentFilter, AgentState
from .artifacts import (
    MAX_ARTIFACTS_PER_TASK,
    ArtifactRecord,
    check_artifact_name,
    check_media_type,
    check_sha256,
)
from .audit import (
    RESULT_OK,
    AuditAction,
    AuditActor,
    AuditCall,
    AuditEntry,
    AuditPosition,
    AuditQuery,
)
from .errors import (
    MAX_ECHO_BYTES,
    MAX_FIELD_BYTES,
    MAX_MESSAGE_BYTES,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    Reason,
    RequestIdReused,
    clip,
    echo,
    without_nul,
)
from .events import (
    EventPayload,
    JobCancelRequested,
    JobEvent,
    JobStateChanged,
    SessionRestarted,
    TaskArtifactStored,
    TaskError,
    TaskProgress,
    TaskRetryScheduled,
    TaskStateChanged,
)
from .job import Job
from .job_query import JobFilter, PagePosition
from .job_types import (
    Attempt,
    AttemptNotHeld,
    AttemptRef,
    JobChanges,
    JobOptions,
    JobSource,
    OutboundCallback,
    SourceKind,
    StaleAttempt,
    Task,
    UnresolvedInput,
)
from .labels import CONTROL_CHARACTERS, MAX_NAME_CHARS, check_labels, check_names
from .retry import DEFAULT_RETRY_POLICY, MAX_ATTEMPTS_LIMIT, MAX_BACKOFF_LIMIT_S, RetryPolicy
from .sessions import DEFAULT_SESSION, SessionEnd, with_default_sessions
from .states import (
    ATTEMPT_STATE_MACHINE,
    JOB_STATE_MACHINE,
    TASK_STATE_MACHINE,
    AttemptState,
    JobState,
    StateMachine,
    TaskState,
    can_transition,
    is_terminal,
    state_machine,
    transition,
)
from .task_graph import GraphCycleError, TaskGraph
from .todo import (
    BUILTIN_ACTIONS,
    IDENTIFIER_PATTERN,
    INPUT_NAME_PATTERN,
    MAX_CREDENTIAL_REF_BYTES,
    MAX_CREDENTIAL_REFS,
    TASK_ID_PATTERN,
    ActionType,
    OutputRef,
    Selector,
    SelectorStrategy,
    ToDo,
    check_credential_refs,
)

__all__ = [
    "CONTROL_CHARACTERS",
    "MAX_NAME_CHARS",
    # audit
    "RESULT_OK",
    "AuditAction",
    "AuditActor",
    "AuditCall",
    "AuditEntry",
    "AuditPosition",
    "AuditQuery",
    "MAX_ECHO_BYTES",
    "MAX_FIELD_BYTES",
    "MAX_MESSAGE_BYTES",
    "clip",
    "without_nul",
    "echo",
    # errors
    "DomainError",
    "FailedPrecondition",
    "InvalidArgument",
    "LimitExceeded",
    "RequestIdReused",
    "NotFound",
    "Reason",
    # todo
    "BUILTIN_ACTIONS",
    "IDENTIFIER_PATTERN",
    "INPUT_NAME_PATTERN",
    "MAX_CREDENTIAL_REFS",
    "MAX_CREDENTIAL_REF_BYTES",
    "check_credential_refs",
    "check_labels",
    "check_names",
    "TASK_ID_PATTERN",
    "ActionType",
    "OutputRef",
    "Selector",
    "SelectorStrategy",
    "ToDo",
    # retry
    "DEFAULT_RETRY_POLICY",
    "MAX_ATTEMPTS_LIMIT",
    "MAX_BACKOFF_LIMIT_S",
    "RetryPolicy",
    # job aggregate
    "Attempt",
    "AttemptRef",
    "Job",
    "JobChanges",
    "JobOptions",
    "OutboundCallback",
    "JobSource",
    "SourceKind",
    "StaleAttempt",
    "AttemptNotHeld",
    "Task",
    "UnresolvedInput",
    # events
    "EventPayload",
    "JobCancelRequested",
    "JobEvent",
    "JobStateChanged",
    "TaskArtifactStored",
    "TaskError",
    "TaskProgress",
    "TaskRetryScheduled",
    "TaskStateChanged",
    "SessionRestarted",
    # sessions
    "DEFAULT_SESSION",
    "SessionEnd",
    "with_default_sessions",
    # artifacts
    "MAX_ARTIFACTS_PER_TASK",
    "ArtifactRecord",
    "check_artifact_name",
    "check_media_type",
    "check_sha256",
    # agent queries
    "AgentFilter",
    "AgentState",
    # job queries
    "JobFilter",
    "PagePosition",
    # task graph
    "GraphCycleError",
    "TaskGraph",
    # states
    "ATTEMPT_STATE_MACHINE",
    "JOB_STATE_MACHINE",
    "TASK_STATE_MACHINE",
    "AttemptState",
    "JobState",
    "StateMachine",
    "TaskState",
    "can_transition",
    "is_terminal",
    "state_machine",
    "transition",
]
