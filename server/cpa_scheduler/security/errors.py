"""The errors of authentication and authorization (their reasons map to UNAUTHENTICATED and
PERMISSION_DENIED in api/errors.py)."""

from __future__ import annotations

from cpa_scheduler.domain import DomainError, Reason


def unauthenticated(message: str, reason: Reason = Reason.CREDENTIAL_INVALID) -> DomainError:
    return DomainError(message, reason=reason)


def permission_denied(
    message: str, reason: Reason = Reason.PERMISSION_DENIED, *, field: str = ""
) -> DomainError:
    return DomainError(message, reason=reason, field=field)
