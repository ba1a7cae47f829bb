"""CpaError: a gRPC failure of the scheduler, with the reason and field violations it carried."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

# gRPC carries the rich google.rpc.Status in this binary trailer.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "cpa.scheduler"
# CpaError.reason when the client could not decode the server's answer (not a server reason).
UNDECODABLE_RESPONSE = "UNDECODABLE_RESPONSE"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path and what is wrong with it."""

    field: str
    description: str


class CpaError(Exception):
    """An RPC failed: `reason` is the ErrorInfo reason ("GRAPH_CYCLE"), plus the bad fields."""

    def __init__(
        self,
        *,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {reason or '-'}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations
        # The server's google.rpc.RetryInfo (RATE_LIMITED): wait this long before retrying.
        self.retry_delay_s = retry_delay_s

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed later unchanged: the server said when (RetryInfo),
        or the scheduler could not be reached."""
        return self.retry_delay_s is not None or self.code == grpc.StatusCode.UNAVAILABLE

    @staticmethod
    def of(
        *,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay_s: float | None = None,
    ) -> CpaError:
        """The error of the subclass for `code` (InvalidArgumentError...; CpaError for others)."""
        kind = _BY_CODE.get(code, CpaError)
        return kind(
            code=code,
            message=message,
            reason=reason,
            metadata=metadata,
            field_violations=field_violations,
            retry_delay_s=retry_delay_s,
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> CpaError:
        """Decode the status details of a failed call (grpc.aio.AioRpcError or a sync grpc.Call)."""
        code: grpc.StatusCode = error.code()
        message: str = error.details() or ""
        # Sync calls give a tuple of pairs, aio calls a Metadata object: both iterate as pairs.
        trailers: Any = error.trailing_metadata() or ()
        status = status_pb2.Status()
        for key, value in trailers:
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                status.ParseFromString(value)
        reason = ""
        metadata: dict[str, str] = {}
        violations: list[FieldViolation] = []
        retry_delay_s: float | None = None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad_request = error_details_pb2.BadRequest()
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad_request):
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
            elif detail.Unpack(retry):
                retry_delay_s = retry.retry_delay.ToMilliseconds() / 1000.0
        return cls.of(
            code=code,
            message=status.message or message,
            reason=reason,
            metadata=metadata,
            field_violations=tuple(violations),
            retry_delay_s=retry_delay_s,
        )


# One subclass per status code a caller acts on differently; each is still a CpaError, so
# `except CpaError` catches them all.
class InvalidArgumentError(CpaError):
    """The request is wrong (see `field_violations`); sending it again unchanged cannot help."""


class NotFoundError(CpaError):
    """The job (or other resource) does not exist, or is another tenant's."""


class AlreadyExistsError(CpaError):
    """Something of that name exists already."""


class PermissionDeniedError(CpaError):
    """The credential lacks the permission, or a policy refused the request (POLICY_VIOLATION)."""


class UnauthenticatedError(CpaError):
    """No credential, or one that is invalid, expired or revoked."""


class FailedPreconditionError(CpaError):
    """Well-formed, but the resource's state forbids it now (ILLEGAL_TRANSITION...)."""


class ResourceExhaustedError(CpaError):
    """A rate limit (RATE_LIMITED, with `retry_delay_s`), a quota or a size limit."""


class UnavailableError(CpaError):
    """The scheduler could not be reached or is stopping; the call may be repeated."""


class DeadlineExceededError(CpaError):
    """The call's deadline passed before the answer came."""


_BY_CODE: dict[grpc.StatusCode, type[CpaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}
