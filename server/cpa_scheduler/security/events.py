"""The one place security decisions are reported: refusals and acting for another tenant.

Logged; the interceptor also audits its refusals (api/audit_calls.audit_denied), which needs
the call's metadata and the store, so it is not done here. Never passed a secret: only the
principal's subject.
"""

from __future__ import annotations

import logging

from cpa_scheduler.domain import DomainError

from .principal import Principal

log = logging.getLogger("cpa_scheduler.security")


def denied(method: str, error: DomainError, *, principal: Principal | None, peer: str) -> None:
    """A call refused by authentication (no principal) or authorization."""
    log.info(
        "refused %s from %s (%s): %s: %s",
        method,
        principal.subject if principal is not None else "unauthenticated",
        peer,
        error.reason.value,
        error.message,
    )


def acting_for(method: str, principal: Principal, *, peer: str) -> None:
    """An operator or admin acts for another tenant (x-cpa-act-as-tenant)."""
    log.warning(
        "%s of tenant %s acts for tenant %s: %s (%s)",
        principal.subject,
        principal.home_tenant,
        principal.tenant,
        method,
        peer,
    )
