"""Typed asyncio SDK for the CPA Scheduler; the generated contract lives in the `cpa` package."""

from .admin_client import AdminClient
from .artifact_chunks import ArtifactCheckError
from .channels import ClientTls, TlsFileError, credential_metadata, open_channel
from .errors import (
    UNDECODABLE_RESPONSE,
    AlreadyExistsError,
    CpaError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .rate_limits import NO_RATE_LIMIT_RETRY, RateLimitRetry
from .scheduler_client import SchedulerClient
from .sync_client import SyncSchedulerClient
from .watching import Reconnect

__all__ = [
    # Clients
    "AdminClient",
    "SchedulerClient",
    "SyncSchedulerClient",
    # Connecting
    "ClientTls",
    "credential_metadata",
    "open_channel",
    "Reconnect",
    "RateLimitRetry",
    "NO_RATE_LIMIT_RETRY",
    # Errors
    "ArtifactCheckError",
    "CpaError",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "FieldViolation",
    "TlsFileError",
    "UNDECODABLE_RESPONSE",
]
