"""Typed asyncio SDK for the CPA Scheduler; the generated contract lives in the `cpa` package."""

from .artifact_chunks import ArtifactCheckError
from .errors import UNDECODABLE_RESPONSE, CpaError, FieldViolation
from .scheduler_client import SchedulerClient

__all__ = [
    # Client
    "SchedulerClient",
    # Errors
    "ArtifactCheckError",
    "CpaError",
    "FieldViolation",
    "UNDECODABLE_RESPONSE",
]
