"""What a call carries besides its message: the tenant (metadata `x-cpa-tenant`)."""

from __future__ import annotations

from typing import Any

import grpc.aio

TENANT_METADATA_KEY = "x-cpa-tenant"


def tenant_of(context: grpc.aio.ServicerContext[Any, Any], *, default: str) -> str:
    """The caller's tenant. Authentication will bind it to credentials; until then it is named."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY and isinstance(value, str) and value:
            return value
    return default
