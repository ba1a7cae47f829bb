"""What an agent's credential lets its hello claim: its tenant, and the actions and
capabilities an agent token allows (fnmatch patterns; `*` any)."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from cpa_scheduler.domain import Reason

from .errors import permission_denied
from .principal import CredentialKind, Principal, Role


def agent_tenant(principal: Principal | None, hello_tenant: str, *, default: str) -> str:
    """The tenant the agent serves: its credential's (a hello naming another is refused); with
    authentication off, the hello's."""
    if principal is None or principal.kind is CredentialKind.INSECURE_LOCAL:
        return hello_tenant or default
    if hello_tenant and hello_tenant != principal.tenant:
        raise permission_denied(
            f"hello.tenant names another tenant than the agent's credential ({principal.tenant}); "
            "leave it empty or name the credential's",
            Reason.CAPABILITY_NOT_ALLOWED,
            field="hello.tenant",
        )
    return principal.tenant


def check_advertised(
    principal: Principal | None, *, actions: Sequence[str], capabilities: Sequence[str]
) -> None:
    """Refuses the first action or capability an agent token does not allow (other roles that
    may connect, admin, are not scoped)."""
    if principal is None or Role.AGENT not in principal.roles or Role.ADMIN in principal.roles:
        return
    for kind, advertised, allowed in (
        ("action", actions, principal.allowed_actions),
        ("capability", capabilities, principal.allowed_capabilities),
    ):
        field = "actions" if kind == "action" else "capabilities"
        for index, name in enumerate(advertised):
            if not any(fnmatchcase(name, pattern) for pattern in allowed):
                raise permission_denied(
                    f"the agent token {principal.subject} does not allow the {kind} {name[:128]!r} "
                    f"(it allows {', '.join(allowed) or 'none'})",
                    Reason.CAPABILITY_NOT_ALLOWED,
                    field=f"hello.capabilities.{field}[{index}]",
                )
