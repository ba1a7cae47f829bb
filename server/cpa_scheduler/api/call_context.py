"""What a call carries besides its message: the tenant it acts for, from its Principal.

The auth interceptor (security/interceptor.py) sets the principal of every non-public call: the
credential's tenant, the one an operator acts for (`x-cpa-act-as-tenant`), or, with
CPA_INSECURE_LOCAL, the one named in `x-cpa-tenant`.
"""

from __future__ import annotations

from typing import Any

import grpc.aio

from cpa_scheduler.security import current_principal


def tenant_of(context: grpc.aio.ServicerContext[Any, Any], *, default: str) -> str:
    """The caller's tenant; `default` only outside an authenticated call (never for a client)."""
    principal = current_principal()
    return principal.tenant if principal is not None else default
