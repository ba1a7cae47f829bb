"""Who a call is, for the audit trail: the one place that turns a call's principal (or, while
authentication is off, its named tenant) and metadata into an AuditActor and AuditCall.

The auth interceptor sets current_principal() for every call (with authentication off, the
one "local" principal of the tenant the call names); without one (a call served outside the
interceptor) the caller is the tenant from `x-cpa-tenant`, subject "anonymous".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import grpc.aio

from cpa_scheduler.domain import AuditActor, AuditCall
from cpa_scheduler.domain.audit import MAX_AUDIT_TEXT_BYTES
from cpa_scheduler.domain.errors import clip
from cpa_scheduler.security.principal import CredentialKind, Principal, current_principal

from .call_context import tenant_of

Context = grpc.aio.ServicerContext[Any, Any]

ANONYMOUS: Final = "anonymous"
UNAUTHENTICATED: Final = "unauthenticated"
REQUEST_ID_KEY: Final = "x-request-id"
TRACEPARENT_KEY: Final = "traceparent"
# W3C Trace Context: version-traceid-parentid-flags; an all-zero trace id is invalid.
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE: Final = "0" * 32


def _actor_of(principal: Principal, peer: str) -> AuditActor:
    return AuditActor(
        tenant=principal.tenant,
        subject=principal.subject,
        roles=tuple(sorted(role.value for role in principal.roles)),
        credential_kind=principal.kind.value,
        credential_id=principal.credential_id,
        home_tenant=principal.home_tenant if principal.acting_for_other_tenant else "",
        peer=peer,
    )


def _peer(context: Context) -> str:
    try:
        return clip(context.peer() or "", MAX_AUDIT_TEXT_BYTES)
    except Exception:  # a context without a transport (never in a served call)
        return ""


def principal_for_audit(context: Context, *, default_tenant: str) -> AuditActor:
    """The caller of this call as the audit records it."""
    principal = current_principal()
    if principal is not None:
        return _actor_of(principal, _peer(context))
    return AuditActor(
        tenant=tenant_of(context, default=default_tenant),
        subject=ANONYMOUS,
        credential_kind=CredentialKind.INSECURE_LOCAL.value,
        peer=_peer(context),
    )


def agent_for_audit(context: Context, *, tenant: str, agent_id: str) -> AuditActor:
    """An agent's stream (its results are audited by it): the agent token's principal, or the
    agent id while authentication is off (every caller is then the one local principal)."""
    principal = current_principal()
    if principal is not None and principal.kind is not CredentialKind.INSECURE_LOCAL:
        return _actor_of(principal, _peer(context))
    return AuditActor(
        tenant=tenant,
        subject=f"agent:{agent_id}",
        roles=("agent",),
        credential_kind=CredentialKind.INSECURE_LOCAL.value,
        peer=_peer(context),
    )


Metadata = Iterable[tuple[str, Any]]


def _metadata(metadata: Metadata | None, key: str) -> str:
    for name, value in metadata or ():
        if name == key and isinstance(value, str):
            return clip(value, MAX_AUDIT_TEXT_BYTES)
    return ""


def trace_id_of(metadata: Metadata | None) -> str:
    """The trace id of a valid `traceparent`, else empty."""
    match = _TRACEPARENT.fullmatch(_metadata(metadata, TRACEPARENT_KEY).strip())
    if match is None or match.group(1) == _ZERO_TRACE:
        return ""
    return match.group(1)


def denied_call(
    *,
    method: str,
    metadata: Metadata | None,
    principal: Principal | None,
    tenant: str,
    peer: str = "",
) -> AuditCall:
    """A call the auth layer refuses before any servicer runs (gRPC method path, metadata; the
    principal when it was authenticated, else the tenant it names, subject "unauthenticated")."""
    if principal is not None:
        actor = _actor_of(principal, peer)
    else:
        actor = AuditActor(tenant=tenant, subject=UNAUTHENTICATED, peer=peer)
    return AuditCall(
        actor=actor,
        action=method.rpartition("/")[2] or method,
        request_id=_metadata(metadata, REQUEST_ID_KEY),
        trace_id=trace_id_of(metadata),
    )


def audit_call(
    context: Context, action: str, *, default_tenant: str, request_id: str = ""
) -> AuditCall:
    """The call as its audit entries name it. `request_id`: the request's own id, used when
    the metadata carries no `x-request-id`."""
    metadata = context.invocation_metadata()
    return AuditCall(
        actor=principal_for_audit(context, default_tenant=default_tenant),
        action=action,
        request_id=_metadata(metadata, REQUEST_ID_KEY) or clip(request_id, MAX_AUDIT_TEXT_BYTES),
        trace_id=trace_id_of(metadata),
    )
