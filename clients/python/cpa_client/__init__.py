"""Typed asyncio SDK for the CPA Scheduler; the generated contract lives in the `cpa` package."""

from .admin_client import AdminClient
from .artifact_chunks import ArtifactCheckError
from .errors import UNDECODABLE_RESPONSE, CpaError, FieldViolation
from .scheduler_client import SchedulerClient, credential_metadata

__all__ = [
    # Clients
    "AdminClient",
    "SchedulerClient",
    "credential_metadata",
    # Errors
    "ArtifactCheckError",
    "CpaError",
    "FieldViolation",
    "UNDECODABLE_RESPONSE",
]
