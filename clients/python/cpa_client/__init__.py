"""Typed asyncio SDK for the CPA Scheduler; the generated contract lives in the `cpa` package."""

from .admin_client import AdminClient
from .artifact_chunks import ArtifactCheckError
from .channels import ClientTls, TlsFileError, credential_metadata, open_channel
from .errors import UNDECODABLE_RESPONSE, CpaError, FieldViolation
from .scheduler_client import SchedulerClient

__all__ = [
    # Clients
    "AdminClient",
    "SchedulerClient",
    # Connecting
    "ClientTls",
    "credential_metadata",
    "open_channel",
    # Errors
    "ArtifactCheckError",
    "CpaError",
    "FieldViolation",
    "TlsFileError",
    "UNDECODABLE_RESPONSE",
]
