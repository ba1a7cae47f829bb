"""What a call carries besides its message: the tenant it acts for, from its Principal, and the
idempotency key (metadata `idempotency-key`, the HTTP header `Idempotency-Key` of REST callers,
which the gateway forwards as gRPC metadata).

The auth interceptor (security/interceptor.py) sets the principal of every non-public call: the
credential's tenant, the one an operator acts for (`x-cpa-act-as-tenant`), or, with
CPA_INSECURE_LOCAL, the one named in `x-cpa-tenant`.
"""

from __future__ import annotations

from typing import Any

import grpc.aio

from cpa_scheduler.domain import InvalidArgument, Reason, echo
from cpa_scheduler.security import current_principal

from .ids import MAX_ID_CHARS

# Names the tenant with authentication off (CPA_INSECURE_LOCAL); with it on, it may only repeat
# the credential's. Read by the auth interceptor alone.
TENANT_METADATA_KEY = "x-cpa-tenant"
IDEMPOTENCY_KEY_METADATA_KEY = "idempotency-key"


def tenant_of(context: grpc.aio.ServicerContext[Any, Any], *, default: str) -> str:
    """The caller's tenant; `default` only outside an authenticated call (never for a client)."""
    principal = current_principal()
    return principal.tenant if principal is not None else default


def idempotency_key(context: grpc.aio.ServicerContext[Any, Any], *, field: str) -> str:
    """The call's idempotency key, "" without one. Refused, naming `field` (what the key stands
    for in the message): two different keys, or one longer than MAX_ID_CHARS."""
    keys = {
        value
        for key, value in context.invocation_metadata() or ()
        if key == IDEMPOTENCY_KEY_METADATA_KEY and isinstance(value, str) and value
    }
    if len(keys) > 1:
        raise InvalidArgument(
            f"the call carries {len(keys)} different {IDEMPOTENCY_KEY_METADATA_KEY} values",
            reason=Reason.IDEMPOTENCY_KEY_MISMATCH,
            field=field,
        )
    key = keys.pop() if keys else ""
    if len(key) > MAX_ID_CHARS:
        raise InvalidArgument(
            f"{IDEMPOTENCY_KEY_METADATA_KEY} {echo(key)} is longer than {MAX_ID_CHARS} characters",
            reason=Reason.INVALID_FIELD,
            field=field,
        )
    return key


def keyed_id(current: str, context: grpc.aio.ServicerContext[Any, Any], *, field: str) -> str:
    """The idempotency id of a request whose message holds `current` in `field`: the call's key
    when the message leaves it empty; refused when the two differ."""
    key = idempotency_key(context, field=field)
    if key and current and key != current:
        raise InvalidArgument(
            f"{IDEMPOTENCY_KEY_METADATA_KEY} {echo(key)} differs from {field} {echo(current)}",
            reason=Reason.IDEMPOTENCY_KEY_MISMATCH,
            field=field,
        )
    return current or key
