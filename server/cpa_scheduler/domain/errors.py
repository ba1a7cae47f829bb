"""Domain errors: each carries a stable reason (an ErrorReason name) and, for bad input, the field.

The API layer maps these onto google.rpc.Status; nothing here knows about gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

# Error messages and field paths echo caller input (ids, names, cycles). gRPC clients refuse
# response metadata over 16 KiB, and the error travels there twice (grpc-message, where each
# non-ASCII byte takes three, and the status details): an unbounded echo turns the answer into
# RESOURCE_EXHAUSTED on the client. Bounds are in UTF-8 bytes.
MAX_MESSAGE_BYTES: Final = 1024
MAX_FIELD_BYTES: Final = 256
# One echoed value (an id, a name) inside a message.
MAX_ECHO_BYTES: Final = 80


def clip(text: str, limit: int) -> str:
    """`text` if its UTF-8 form has at most `limit` bytes, else its head and tail around a
    note of how much was cut, at most `limit` bytes in all (for limit >= 64)."""
    if len(text) <= limit // 4 or len(encoded := text.encode()) <= limit:
        return text
    note = f"...({len(text)} chars)..."
    keep = max(limit - len(note), 2)
    head = encoded[: (keep + 1) // 2].decode(errors="ignore")
    tail = encoded[len(encoded) - keep // 2 :].decode(errors="ignore")
    return head + note + tail


def without_nul(text: str) -> str:
    """`text` with every U+0000 (NUL) replaced by U+FFFD: for an agent's free text (an error's
    code and message, a progress message), which the server keeps rather than refuse the report
    carrying it, and which PostgreSQL's text cannot hold with NUL in it."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def echo(value: object) -> str:
    """A caller's value quoted for a message (as repr), bounded to MAX_ECHO_BYTES bytes."""
    return clip(repr(value), MAX_ECHO_BYTES)


class Reason(StrEnum):
    """Machine-readable error reasons; mirrors `cpa.common.v1.ErrorReason` without its prefix.

    A unit test keeps the two in step, so a reason added on one side only fails CI.
    """

    INVALID_FIELD = "INVALID_FIELD"
    MISSING_FIELD = "MISSING_FIELD"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    EMPTY_GRAPH = "EMPTY_GRAPH"
    DUPLICATE_TASK_ID = "DUPLICATE_TASK_ID"
    UNKNOWN_DEPENDENCY = "UNKNOWN_DEPENDENCY"
    GRAPH_CYCLE = "GRAPH_CYCLE"
    UNKNOWN_ACTION = "UNKNOWN_ACTION"
    INVALID_RETRY_POLICY = "INVALID_RETRY_POLICY"
    UNKNOWN_INTENT = "UNKNOWN_INTENT"
    TEMPLATE_ERROR = "TEMPLATE_ERROR"
    INVALID_FILTER = "INVALID_FILTER"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    UNSUPPORTED_PERFORMATIVE = "UNSUPPORTED_PERFORMATIVE"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    AGENT_NOT_FOUND = "AGENT_NOT_FOUND"
    ARTIFACT_NOT_FOUND = "ARTIFACT_NOT_FOUND"
    ILLEGAL_TRANSITION = "ILLEGAL_TRANSITION"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    STALE_ATTEMPT = "STALE_ATTEMPT"
    NO_CAPABLE_AGENT = "NO_CAPABLE_AGENT"
    SCHEDULE_TO_START_TIMEOUT = "SCHEDULE_TO_START_TIMEOUT"
    TASK_TIMEOUT = "TASK_TIMEOUT"
    JOB_DEADLINE_EXCEEDED = "JOB_DEADLINE_EXCEEDED"
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"
    REDELIVERY_EXHAUSTED = "REDELIVERY_EXHAUSTED"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"
    CANCELLED_BY_USER = "CANCELLED_BY_USER"
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    POLICY_VIOLATION = "POLICY_VIOLATION"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    AGENT_DRAINING = "AGENT_DRAINING"
    SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    INTERNAL = "INTERNAL"
    UNRESOLVED_INPUT = "UNRESOLVED_INPUT"
    TEXT_TOO_LONG = "TEXT_TOO_LONG"
    TEMPLATE_LIMIT_EXCEEDED = "TEMPLATE_LIMIT_EXCEEDED"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    ASSIGNMENT_TOO_LARGE = "ASSIGNMENT_TOO_LARGE"
    APPROVAL_NOT_SUPPORTED = "APPROVAL_NOT_SUPPORTED"
    REQUEST_ID_CONTENDED = "REQUEST_ID_CONTENDED"
    NESTING_TOO_DEEP = "NESTING_TOO_DEEP"
    ATTEMPT_NOT_HELD = "ATTEMPT_NOT_HELD"
    AGENT_ID_IN_USE = "AGENT_ID_IN_USE"
    TOO_MANY_CALLS = "TOO_MANY_CALLS"
    TOO_MANY_WATCHERS = "TOO_MANY_WATCHERS"
    INVALID_PARAMS = "INVALID_PARAMS"
    SESSION_RESTARTED = "SESSION_RESTARTED"
    ARTIFACT_TOO_LARGE = "ARTIFACT_TOO_LARGE"
    ARTIFACT_DIGEST_MISMATCH = "ARTIFACT_DIGEST_MISMATCH"
    ARTIFACT_INCOMPLETE = "ARTIFACT_INCOMPLETE"
    ARTIFACT_SIZE_MISMATCH = "ARTIFACT_SIZE_MISMATCH"
    TOO_MANY_ARTIFACTS = "TOO_MANY_ARTIFACTS"
    CALLBACK_NOT_FOUND = "CALLBACK_NOT_FOUND"
    CALLBACK_NOT_DEAD = "CALLBACK_NOT_DEAD"
    # Sent by the REST gateway (Envoy) only, from its own refusals (docs/GATEWAY.md).
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    INVALID_QUERY_PARAMETER = "INVALID_QUERY_PARAMETER"
    MALFORMED_BODY = "MALFORMED_BODY"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    IDEMPOTENCY_KEY_MISMATCH = "IDEMPOTENCY_KEY_MISMATCH"
    CREDENTIAL_INVALID = "CREDENTIAL_INVALID"
    CREDENTIAL_EXPIRED = "CREDENTIAL_EXPIRED"
    CREDENTIAL_REVOKED = "CREDENTIAL_REVOKED"
    CAPABILITY_NOT_ALLOWED = "CAPABILITY_NOT_ALLOWED"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    INVALID_TIME_RANGE = "INVALID_TIME_RANGE"
    PLAN_INVALID = "PLAN_INVALID"
    PLANNING_BUSY = "PLANNING_BUSY"
    # Planning with a language model got no usable answer (cpa_scheduler.llm.errors).
    LLM_REFUSED = "LLM_REFUSED"
    LLM_OUTPUT_TRUNCATED = "LLM_OUTPUT_TRUNCATED"
    LLM_UNAVAILABLE = "LLM_UNAVAILABLE"
    LLM_BAD_ANSWER = "LLM_BAD_ANSWER"
    LLM_NOT_CONFIGURED = "LLM_NOT_CONFIGURED"
    MEMORY_DISABLED = "MEMORY_DISABLED"
    MEMORY_UNAVAILABLE = "MEMORY_UNAVAILABLE"
    UPLOAD_STALLED = "UPLOAD_STALLED"


class DomainError(Exception):
    """An error a caller can act on: a reason, a human message and optionally the offending field.

    `field` is a path in the request (`todos[2].depends_on[0]`), so the API can build a
    BadRequest field violation from it without guessing.
    """

    reason: Reason = Reason.INTERNAL
    # More of what the caller can act on, for ErrorInfo.metadata (a policy violation's rule and
    # ToDo); bounded there like every metadata value.
    metadata: Mapping[str, str] = MappingProxyType({})
    # When the same call may succeed after a known delay (a rate limit, a model's retry-after):
    # a google.rpc.RetryInfo detail and, for HTTP callers, a `retry-after` header.
    retry_delay_s: float | None = None

    def __init__(self, message: str, *, reason: Reason | None = None, field: str = "") -> None:
        # Every error passes here, so no message or field can echo unbounded input.
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.field = field

    @property
    def field(self) -> str:
        return self._field

    @field.setter
    def field(self, value: str) -> None:
        # Callers re-root fields (`requests[3].` + field): bounded on every assignment.
        self._field = clip(value, MAX_FIELD_BYTES)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, "
            f"reason={self.reason.value}, field={self.field!r})"
        )


class InvalidArgument(DomainError):  # noqa: N818 (named after gRPC status codes)
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    reason = Reason.INVALID_FIELD


class NotFound(DomainError):  # noqa: N818 (named after gRPC status codes)
    """The named resource does not exist (or belongs to another tenant)."""

    reason = Reason.JOB_NOT_FOUND


class FailedPrecondition(DomainError):  # noqa: N818 (named after gRPC status codes)
    """The request is well-formed but the resource's current state forbids it."""

    reason = Reason.ILLEGAL_TRANSITION


class LimitExceeded(DomainError):  # noqa: N818 (a refusal, like the gRPC-named classes)
    """A limit on the caller (rate limit, tenant quota): RESOURCE_EXHAUSTED. `metadata` goes to
    ErrorInfo.metadata as it is; `retry_delay_s`, when known, to a google.rpc.RetryInfo detail
    (and a `retry-after` header for HTTP callers)."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        metadata: dict[str, str],
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.metadata = metadata
        self.retry_delay_s = retry_delay_s


class RequestIdReused(InvalidArgument):
    """A request_id the tenant already gave to a job made from a different request. `index`:
    the position of the refused job among those created together (0 for a single one)."""

    reason = Reason.REQUEST_ID_REUSED

    def __init__(self, request_id: str, owner_job_id: str, *, index: int = 0) -> None:
        super().__init__(
            f"request_id {echo(request_id)} was already used for a different request "
            f"(job {owner_job_id})",
            field="request_id",
        )
        self.index = index
