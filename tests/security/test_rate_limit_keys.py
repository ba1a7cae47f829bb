"""Rate limits with authentication on: the `key` bucket is the credential's (the principal the
auth interceptor set), so two keys of one tenant are limited apart, and a credential acting for
another tenant is limited at its own tenant's rate, in its own bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa_client import CpaError

from .conftest import SecureScheduler, secure_settings, start_secure

PER_KEY = 3
# The admin (tenant default) makes the keys through the same limiter: it gets room.
LIMITS = "tenants:\n  default:\n    calls_per_minute: 1000\n  acme:\n    calls_per_minute: 2\n"


def _limited(limit: int) -> tuple[grpc.StatusCode, str, str, str]:
    return (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "key", str(limit))


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[SecureScheduler]:
    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    settings = secure_settings(
        tmp_path / "data",
        rate_limits_enabled=True,
        rate_limit_per_key=PER_KEY,
        rate_limit_per_ip=0,
        tenant_limits_path=limits,
    )
    server, port = await start_secure(settings)
    try:
        assert server.local_admin_key is not None
        yield SecureScheduler(server=server, port=port, admin_key=server.local_admin_key[0])
    finally:
        await server.stop(grace_s=1.0)


async def _calls(scheduler: SecureScheduler, key: str, count: int, **metadata: str) -> list[Any]:
    """The outcome of `count` ListJobs calls with `key`: None, or the refusal's (code, reason,
    scope, limit)."""
    outcomes: list[Any] = []
    async with scheduler.client(key, **metadata) as client:
        for _ in range(count):
            try:
                [job async for job in client.list_jobs()]
            except CpaError as error:
                info = error.metadata
                refusal = (error.code, error.reason, info.get("scope"), info.get("limit"))
                outcomes.append(refusal)
            else:
                outcomes.append(None)
    return outcomes


async def test_two_keys_of_one_tenant_have_a_bucket_each(limited: SecureScheduler) -> None:
    _, first = await limited.key("viewer", tenant="globex")
    _, second = await limited.key("viewer", tenant="globex")

    assert await _calls(limited, first, PER_KEY + 1) == [None] * PER_KEY + [_limited(3)]
    # The first key's bucket is empty; the second's, of the same tenant, is full.
    assert await _calls(limited, second, PER_KEY + 1) == [None] * PER_KEY + [_limited(3)]
    assert await _calls(limited, first, 1) == [_limited(3)]


async def test_a_key_is_limited_at_its_own_tenants_rate(limited: SecureScheduler) -> None:
    _, acme = await limited.key("viewer", tenant="acme")
    _, operator = await limited.key("operator", tenant="globex")

    # acme's file entry (2 a minute) is its keys' limit.
    assert await _calls(limited, acme, 3) == [None, None, _limited(2)]
    # globex's operator acting for acme keeps globex's rate, in its own bucket.
    acting = await _calls(limited, operator, PER_KEY + 1, x_cpa_act_as_tenant="acme")
    assert acting == [None] * PER_KEY + [_limited(3)]
