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
        return cls(
            code=code,
            message=status.message or message,
            reason=reason,
            metadata=metadata,
            field_violations=tuple(violations),
            retry_delay_s=retry_delay_s,
        )
