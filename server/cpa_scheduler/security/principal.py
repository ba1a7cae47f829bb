"""Who is calling: the principal a call acts as, resolved once per call by the auth layer.

Every part that needs the caller (tenant scoping, permissions, rate limits, quotas, audit) reads
`current_principal()`; nothing reads credentials or `x-cpa-tenant` metadata itself. The auth
layer (an interceptor) sets it for the duration of the call; with authentication off
(`--insecure-local`, tests) it names the tenant from `x-cpa-tenant` as before, with full rights.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar
from dataclasses import dataclass


class Role(enum.StrEnum):
    """What a principal may do; each RPC requires one permission, each role grants a set
    (security/permissions.py). Roles are not a strict ladder: an approver need not submit."""

    VIEWER = "viewer"
    SUBMITTER = "submitter"
    APPROVER = "approver"
    OPERATOR = "operator"
    ADMIN = "admin"
    # An executor agent's token: ExecutorService only, within the capabilities it allows.
    AGENT = "agent"


class CredentialKind(enum.StrEnum):
    API_KEY = "api_key"
    JWT = "jwt"
    AGENT_TOKEN = "agent_token"
    # Authentication off: the tenant is named by the caller (loopback-only, explicit).
    INSECURE_LOCAL = "insecure_local"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one call."""

    # The tenant the call acts for: the credential's, or, for an operator or admin acting for
    # another tenant explicitly, that tenant (then `home_tenant` is the credential's).
    tenant: str
    # Stable, printable identity for audit: "key:<prefix>", "jwt:<iss>#<sub>", "agent:<prefix>",
    # "local".
    subject: str
    roles: frozenset[Role]
    kind: CredentialKind
    # Stable id of the credential (key id, token id, "iss#sub"): rate limits and revocation.
    credential_id: str
    home_tenant: str = ""
    # Agent tokens only: the actions and capabilities its hello may advertise (fnmatch patterns,
    # "*" any); empty allows none. Checked by ExecutorService.Connect.
    allowed_actions: tuple[str, ...] = ()
    allowed_capabilities: tuple[str, ...] = ()
    # When the credential stops being accepted (wall-clock seconds): a JWT's exp plus the clock
    # skew; None for credentials without an expiry. Open streams end then (credential_watch.py).
    valid_until: float | None = None

    @property
    def acting_for_other_tenant(self) -> bool:
        return bool(self.home_tenant) and self.home_tenant != self.tenant


_current: ContextVar[Principal | None] = ContextVar("cpa_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the call being served, or None outside a call (background work)."""
    return _current.get()


def set_current_principal(principal: Principal | None) -> object:
    """Sets the principal for the current context; returns a token for `reset_principal`."""
    return _current.set(principal)


def reset_principal(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
