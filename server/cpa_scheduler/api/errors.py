"""Domain errors as gRPC errors: the status-code table, the rich `google.rpc.Status`, and aborting.

`translate_errors` wraps every servicer method, so servicers just raise DomainError.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, NoReturn, ParamSpec, TypeVar, cast, overload

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from cpa_scheduler.domain import (
    MAX_FIELD_BYTES,
    MAX_MESSAGE_BYTES,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    Reason,
    clip,
)
from cpa_scheduler.storage.interface import StoreUnavailableError

__all__ = [
    "ERROR_DOMAIN",
    "REASON_CODES",
    "REASON_CODE_OVERRIDES",
    "RETRY_AFTER_KEY",
    "STATUS_DETAILS_KEY",
    "abort",
    "end_stream_with",
    "internal_error_status",
    "retry_after_header",
    "status_code_for",
    "status_for",
    "translate_errors",
]

logger = logging.getLogger(__name__)

# gRPC's rich error model travels as a serialized google.rpc.Status in this binary trailer.
STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
# Whole seconds to wait, for HTTP callers: a refusal is trailers-only, so the gateway sees its
# trailers as response headers and passes this one on with the 429 (RetryInfo is the gRPC way).
RETRY_AFTER_KEY: Final = "retry-after"
ERROR_DOMAIN: Final = "cpa.scheduler"
# How long end_stream_with waits to write a stream's last message.
_LAST_MESSAGE_TIMEOUT_S: Final = 5.0

_Code = grpc.StatusCode

# Reasons whose status code is part of their meaning, so it wins over the exception class that
# carries them: a client re-authenticates on UNAUTHENTICATED, backs off on RESOURCE_EXHAUSTED and
# tries another replica on UNAVAILABLE, whoever raised the error.
REASON_CODE_OVERRIDES: Final[Mapping[Reason, grpc.StatusCode]] = MappingProxyType(
    {
        Reason.JOB_NOT_FOUND: _Code.NOT_FOUND,
        Reason.TASK_NOT_FOUND: _Code.NOT_FOUND,
        Reason.AGENT_NOT_FOUND: _Code.NOT_FOUND,
        Reason.ARTIFACT_NOT_FOUND: _Code.NOT_FOUND,
        Reason.API_KEY_NOT_FOUND: _Code.NOT_FOUND,
        Reason.CALLBACK_NOT_FOUND: _Code.NOT_FOUND,
        Reason.REQUEST_ID_REUSED: _Code.ALREADY_EXISTS,
        Reason.AGENT_ID_IN_USE: _Code.ALREADY_EXISTS,
        # Fencing: the report concerns an attempt that is over; retrying it cannot help.
        Reason.STALE_ATTEMPT: _Code.FAILED_PRECONDITION,
        Reason.UNAUTHENTICATED: _Code.UNAUTHENTICATED,
        Reason.PERMISSION_DENIED: _Code.PERMISSION_DENIED,
        Reason.CREDENTIAL_INVALID: _Code.UNAUTHENTICATED,
        Reason.CREDENTIAL_EXPIRED: _Code.UNAUTHENTICATED,
        Reason.CREDENTIAL_REVOKED: _Code.UNAUTHENTICATED,
        Reason.CAPABILITY_NOT_ALLOWED: _Code.PERMISSION_DENIED,
        # A tenant policy refuses the request: retrying it unchanged is refused again.
        Reason.POLICY_VIOLATION: _Code.PERMISSION_DENIED,
        Reason.RATE_LIMITED: _Code.RESOURCE_EXHAUSTED,
        Reason.QUOTA_EXCEEDED: _Code.RESOURCE_EXHAUSTED,
        Reason.PLANNING_BUSY: _Code.RESOURCE_EXHAUSTED,
        Reason.TOO_MANY_CALLS: _Code.RESOURCE_EXHAUSTED,
        Reason.TOO_MANY_WATCHERS: _Code.RESOURCE_EXHAUSTED,
        # The artifact stays too large: not retried by well-behaved clients, but RESOURCE_
        # EXHAUSTED is what a size limit of the server is (the field is in ErrorInfo.metadata).
        Reason.ARTIFACT_TOO_LARGE: _Code.RESOURCE_EXHAUSTED,
        Reason.TOO_MANY_ARTIFACTS: _Code.RESOURCE_EXHAUSTED,
        Reason.SERVER_SHUTTING_DOWN: _Code.UNAVAILABLE,
        Reason.STORE_UNAVAILABLE: _Code.UNAVAILABLE,
        # The language model is down, rate-limited or slow: the same call may succeed later.
        Reason.LLM_UNAVAILABLE: _Code.UNAVAILABLE,
        Reason.MEMORY_UNAVAILABLE: _Code.UNAVAILABLE,
        # The server ended an upload that stopped sending: the call, not a job, timed out.
        Reason.UPLOAD_STALLED: _Code.DEADLINE_EXCEEDED,
        Reason.INTERNAL: _Code.INTERNAL,
        # The gateway's: the HTTP status it answers with is its meaning (404, 405).
        Reason.UNKNOWN_METHOD: _Code.NOT_FOUND,
        Reason.METHOD_NOT_ALLOWED: _Code.UNIMPLEMENTED,
    }
)

# The exception class decides for every other reason: the raiser knows whether the input or the
# resource's state is at fault.
_CLASS_CODES: Final[Mapping[type[DomainError], grpc.StatusCode]] = MappingProxyType(
    {
        InvalidArgument: _Code.INVALID_ARGUMENT,
        NotFound: _Code.NOT_FOUND,
        FailedPrecondition: _Code.FAILED_PRECONDITION,
    }
)

# A plain DomainError has no class to go by: its reason decides. Covers every reason the override
# table does not (a unit test keeps the two complete and disjoint).
REASON_CODES: Final[Mapping[Reason, grpc.StatusCode]] = MappingProxyType(
    {
        Reason.INVALID_FIELD: _Code.INVALID_ARGUMENT,
        Reason.MISSING_FIELD: _Code.INVALID_ARGUMENT,
        # Not RESOURCE_EXHAUSTED: clients retry that with backoff, and a too-large request
        # stays too large.
        Reason.PAYLOAD_TOO_LARGE: _Code.INVALID_ARGUMENT,
        Reason.EMPTY_GRAPH: _Code.INVALID_ARGUMENT,
        Reason.DUPLICATE_TASK_ID: _Code.INVALID_ARGUMENT,
        Reason.UNKNOWN_DEPENDENCY: _Code.INVALID_ARGUMENT,
        Reason.GRAPH_CYCLE: _Code.INVALID_ARGUMENT,
        Reason.UNKNOWN_ACTION: _Code.INVALID_ARGUMENT,
        Reason.INVALID_RETRY_POLICY: _Code.INVALID_ARGUMENT,
        Reason.UNKNOWN_INTENT: _Code.INVALID_ARGUMENT,
        Reason.TEMPLATE_ERROR: _Code.INVALID_ARGUMENT,
        Reason.TEXT_TOO_LONG: _Code.INVALID_ARGUMENT,
        Reason.TEMPLATE_LIMIT_EXCEEDED: _Code.INVALID_ARGUMENT,
        Reason.INVALID_FILTER: _Code.INVALID_ARGUMENT,
        Reason.INVALID_PAGE_TOKEN: _Code.INVALID_ARGUMENT,
        Reason.MALFORMED_MESSAGE: _Code.INVALID_ARGUMENT,
        Reason.UNSUPPORTED_PERFORMATIVE: _Code.INVALID_ARGUMENT,
        Reason.APPROVAL_NOT_SUPPORTED: _Code.INVALID_ARGUMENT,
        # A race with the retention sweep, not the caller's fault: the same call may succeed.
        Reason.REQUEST_ID_CONTENDED: _Code.ABORTED,
        Reason.NESTING_TOO_DEEP: _Code.INVALID_ARGUMENT,
        Reason.ARTIFACT_DIGEST_MISMATCH: _Code.INVALID_ARGUMENT,
        Reason.ARTIFACT_INCOMPLETE: _Code.INVALID_ARGUMENT,
        Reason.ARTIFACT_SIZE_MISMATCH: _Code.INVALID_ARGUMENT,
        Reason.INVALID_QUERY_PARAMETER: _Code.INVALID_ARGUMENT,
        Reason.MALFORMED_BODY: _Code.INVALID_ARGUMENT,
        Reason.IDEMPOTENCY_KEY_MISMATCH: _Code.INVALID_ARGUMENT,
        Reason.ILLEGAL_TRANSITION: _Code.FAILED_PRECONDITION,
        Reason.NO_CAPABLE_AGENT: _Code.FAILED_PRECONDITION,
        Reason.AGENT_DRAINING: _Code.FAILED_PRECONDITION,
        # Job and task outcomes, normally carried inside a job, not by a failed call. Never
        # DEADLINE_EXCEEDED or CANCELLED: those say the *call* timed out or was cancelled, and
        # clients retry or swallow them as such.
        Reason.SCHEDULE_TO_START_TIMEOUT: _Code.FAILED_PRECONDITION,
        Reason.TASK_TIMEOUT: _Code.FAILED_PRECONDITION,
        Reason.JOB_DEADLINE_EXCEEDED: _Code.FAILED_PRECONDITION,
        Reason.RETRIES_EXHAUSTED: _Code.FAILED_PRECONDITION,
        Reason.REDELIVERY_EXHAUSTED: _Code.FAILED_PRECONDITION,
        Reason.UPSTREAM_FAILED: _Code.FAILED_PRECONDITION,
        Reason.UNRESOLVED_INPUT: _Code.FAILED_PRECONDITION,
        Reason.OUTPUT_TOO_LARGE: _Code.FAILED_PRECONDITION,
        Reason.ASSIGNMENT_TOO_LARGE: _Code.FAILED_PRECONDITION,
        Reason.ATTEMPT_NOT_HELD: _Code.FAILED_PRECONDITION,
        Reason.CANCELLED_BY_USER: _Code.FAILED_PRECONDITION,
        Reason.APPROVAL_REJECTED: _Code.FAILED_PRECONDITION,
        Reason.EXECUTOR_ERROR: _Code.FAILED_PRECONDITION,
        # An agent refused a task's params (a task outcome, like EXECUTOR_ERROR).
        Reason.INVALID_PARAMS: _Code.FAILED_PRECONDITION,
        Reason.SESSION_RESTARTED: _Code.FAILED_PRECONDITION,
        Reason.CALLBACK_NOT_DEAD: _Code.FAILED_PRECONDITION,
        Reason.INVALID_TIME_RANGE: _Code.INVALID_ARGUMENT,
        Reason.PLAN_INVALID: _Code.INVALID_ARGUMENT,
        # The model's answer or the server's model configuration, not the request, is at fault;
        # the same call gets the same answer.
        Reason.LLM_REFUSED: _Code.FAILED_PRECONDITION,
        Reason.LLM_OUTPUT_TRUNCATED: _Code.FAILED_PRECONDITION,
        Reason.LLM_BAD_ANSWER: _Code.FAILED_PRECONDITION,
        Reason.LLM_NOT_CONFIGURED: _Code.FAILED_PRECONDITION,
        Reason.MEMORY_DISABLED: _Code.FAILED_PRECONDITION,
    }
)

# Codes under which a field is "bad input" (google.rpc.BadRequest); under FAILED_PRECONDITION the
# field is well-formed, so it is named only in ErrorInfo.metadata.
_BAD_REQUEST_CODES: Final = frozenset({_Code.INVALID_ARGUMENT, _Code.OUT_OF_RANGE})
# Reasons whose field is at fault whatever the code: a policy refuses that field's value.
_BAD_REQUEST_REASONS: Final = frozenset({Reason.POLICY_VIOLATION})


def status_code_for(error: DomainError) -> grpc.StatusCode:
    """The gRPC code of a domain error: reason override, else exception class, else reason."""
    override = REASON_CODE_OVERRIDES.get(error.reason)
    if override is not None:
        return override
    for cls in type(error).__mro__:
        code = _CLASS_CODES.get(cls)
        if code is not None:
            return code
    return REASON_CODES.get(error.reason, _Code.INTERNAL)


def _status(
    code: grpc.StatusCode, message: str, info: error_details_pb2.ErrorInfo
) -> status_pb2.Status:
    # Every status passes here. Clients refuse trailers over 16 KiB (RESOURCE_EXHAUSTED instead
    # of the error): the message, echoed twice, and the metadata values stay bounded.
    # DomainError bounds its message and field already; this holds for whatever else is added.
    status = status_pb2.Status(code=code.value[0], message=clip(message, MAX_MESSAGE_BYTES))
    # A copy of the items: a protobuf map written while it is iterated may skip entries.
    for key, value in list(info.metadata.items()):
        info.metadata[key] = clip(value, MAX_FIELD_BYTES)
    status.details.add().Pack(info)
    return status


def status_for(error: DomainError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The code and rich status of a domain error: ErrorInfo always, BadRequest for bad input."""
    code = status_code_for(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason.value, domain=ERROR_DOMAIN)
    info.metadata.update(error.metadata)
    if error.field:
        info.metadata["field"] = error.field
    if isinstance(error, LimitExceeded):
        info.metadata.update(error.metadata)
    status = _status(code, error.message, info)
    if error.field and (code in _BAD_REQUEST_CODES or error.reason in _BAD_REQUEST_REASONS):
        bad_request = error_details_pb2.BadRequest()
        bad_request.field_violations.add(field=error.field, description=status.message)
        status.details.add().Pack(bad_request)
    if error.retry_delay_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(0, math.ceil(error.retry_delay_s * 1000)))
        status.details.add().Pack(retry)
    return code, status


def retry_after_header(error: DomainError) -> str | None:
    """The `retry-after` value (whole seconds, at least 1) of an error that knows its delay."""
    if error.retry_delay_s is not None:
        return str(max(1, math.ceil(error.retry_delay_s)))
    return None


def internal_error_status(
    error: BaseException, *, where: str = ""
) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """INTERNAL with a short reference; the traceback is logged under the same reference.

    The caller sees only the reference, which support can find in the log: exception text may
    hold SQL, paths or secrets.
    """
    ref = secrets.token_hex(4)
    logger.error("internal error (ref %s) in %s", ref, where or "?", exc_info=error)
    info = error_details_pb2.ErrorInfo(
        reason=Reason.INTERNAL.value, domain=ERROR_DOMAIN, metadata={"ref": ref}
    )
    return _Code.INTERNAL, _status(_Code.INTERNAL, f"internal error (ref {ref})", info)


async def _abort_with(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    status: status_pb2.Status,
    *,
    retry_after: str | None = None,
) -> NoReturn:
    # abort() replaces the trailers set so far; keep them (request id, trace id) and add ours.
    existing = cast("Iterable[tuple[str, str | bytes]]", context.trailing_metadata() or ())
    ours = {STATUS_DETAILS_KEY, RETRY_AFTER_KEY}
    trailers = [(key, value) for key, value in existing if key not in ours]
    trailers.append((STATUS_DETAILS_KEY, status.SerializeToString()))
    if retry_after is not None:
        trailers.append((RETRY_AFTER_KEY, retry_after))
    await context.abort(code, status.message, trailing_metadata=tuple(trailers))


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> NoReturn:
    """End the call with the error's code, message and `grpc-status-details-bin` trailer (and
    `retry-after` when the error knows its delay)."""
    code, status = status_for(error)
    await _abort_with(context, code, status, retry_after=retry_after_header(error))


P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")


def _context_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    # Servicer methods are (self, request, context), handler functions (request, context), and
    # stream-request methods (self, request_iterator, context): the context is always last.
    return kwargs["context"] if "context" in kwargs else args[-1]


@overload
def translate_errors(
    method: Callable[P, AsyncIterator[Y]],
) -> Callable[P, AsyncIterator[Y]]: ...


@overload
def translate_errors(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]: ...


def translate_errors(method: Callable[P, Any]) -> Callable[P, Any]:
    """Wrap an async servicer method (unary or async-generator) so errors become statuses.

    DomainError aborts with its status; any other Exception is logged and aborts as INTERNAL.
    grpc's own exceptions (the AbortError of a `context.abort` the method made itself) and
    cancellation (a BaseException) pass through untouched.
    """
    where = f"{method.__module__}.{method.__qualname__}"
    if inspect.isasyncgenfunction(method):
        return _translate_stream(method, where)
    if inspect.iscoroutinefunction(method):
        return _translate_unary(method, where)
    raise TypeError(f"translate_errors needs an async def or async generator, got {method!r}")


def _error_status(
    error: Exception, where: str
) -> tuple[grpc.StatusCode, status_pb2.Status, str | None]:
    """What an exception ends a call with: code, rich status, `retry-after` (or None)."""
    if isinstance(error, StoreUnavailableError):
        # Infrastructure, not a bug: say so (retryable), without the driver's text.
        logger.warning("store unavailable in %s: %s", where, error)
        error = DomainError(
            "the scheduler's database is unavailable; retry shortly",
            reason=Reason.STORE_UNAVAILABLE,
        )
    if isinstance(error, DomainError):
        return *status_for(error), retry_after_header(error)
    return *internal_error_status(error, where=where), None


async def _abort_for(context: Any, error: Exception, where: str) -> NoReturn:
    code, status, retry_after = _error_status(error, where)
    await _abort_with(context, code, status, retry_after=retry_after)


async def end_stream_with(
    context: grpc.aio.ServicerContext[Any, Any],
    error: Exception,
    *,
    where: str,
    last: Callable[[status_pb2.Status], Message],
) -> NoReturn:
    """Ends a server stream that has begun (a message was written) with `error`'s status, sent
    first as the stream's last message too, `last(status)`: a REST caller (Server-Sent Events
    through the gateway) sees no trailers, so only a message can tell it why the stream ended.
    gRPC callers get the same status as the call's. When the message cannot be written (the
    client is gone or not reading), the status is still the call's."""
    code, status, retry_after = _error_status(error, where)
    try:
        # Bounded: a client that stopped reading (its flow-control window full) would hold it.
        async with asyncio.timeout(_LAST_MESSAGE_TIMEOUT_S):
            await context.write(last(status))
    except Exception as write_error:  # the call's status below still tells gRPC callers
        logger.info("%s: no last message before %s: %r", where, code.name, write_error)
    await _abort_with(context, code, status, retry_after=retry_after)


def _translate_unary(
    method: Callable[P, Coroutine[Any, Any, R]], where: str
) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except grpc.aio.BaseError:
            raise
        except Exception as error:
            await _abort_for(_context_of(args, kwargs), error, where)

    return wrapper


def _translate_stream(
    method: Callable[P, AsyncIterator[Y]], where: str
) -> Callable[P, AsyncIterator[Y]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Y]:
        stream = method(*args, **kwargs)
        try:
            async for item in stream:
                yield item
        except grpc.aio.BaseError:
            raise
        except Exception as error:
            await _abort_for(_context_of(args, kwargs), error, where)
        finally:
            # When the call ends early (client gone), close the inner generator now so its own
            # cleanup (unsubscribing from the event feed) runs at once, not at garbage collection.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    return wrapper
