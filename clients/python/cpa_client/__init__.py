"""Typed asyncio SDK for the CPA Scheduler; the generated contract lives in the `cpa` package."""

from .artifact_chunks import ArtifactCheckError
from .channels import ClientTls, TlsFileError, open_channel
from .errors import UNDECODABLE_RESPONSE, CpaError, FieldViolation
from .scheduler_client import SchedulerClient

__all__ = [
    # Client
    "SchedulerClient",
    "ClientTls",
    "open_channel",
    # Errors
    "ArtifactCheckError",
    "CpaError",
    "FieldViolation",
    "TlsFileError",
    "UNDECODABLE_RESPONSE",
]
