"""Refused credentials over REST through the real Envoy gateway, each a JSON google.rpc.Status
with our ErrorInfo: a wrong secret, an expired, wrongly signed or wrong-audience JWT (401), a
JWT whose role does not allow the call (403), and a credential over its per-key rate limit (429
with Retry-After). A missing credential, an API key's 403 and a revoked key's 401 are in
tests/cli/test_security_cli.py; the per-address limit's 429 in
tests/cli/test_gateway_rate_limits.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.cli.conftest import StartCli
from tests.cli.rest_gateway import rpc_status

from .conftest import SecureScheduler, gateway_in_front, secure_settings, start_secure

ISSUER = "https://idp.example.test"
AUDIENCE = "cpa-scheduler"
HMAC_SECRET = "a-shared-secret-of-at-least-32-characters!"
PER_KEY = 3
UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED = 16, 7, 8


def _token(*, secret: str = HMAC_SECRET, lifetime_s: float = 300, **claims: Any) -> str:
    now = time.time()
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": f"user-{now}",  # a bucket of its own per token
        "exp": int(now + lifetime_s),
        "iat": int(now - 1),
        "cpa_tenant": "acme",
        "cpa_roles": ["viewer"],
        **claims,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[SecureScheduler]:
    settings = secure_settings(
        tmp_path / "data",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_algorithms="HS256",
        jwt_hmac_secret=HMAC_SECRET,
        jwt_clock_skew_s=0,
        rate_limits_enabled=True,
        rate_limit_per_key=PER_KEY,
        rate_limit_per_ip=0,
    )
    server, port = await start_secure(settings)
    try:
        # With a JWT issuer no local admin key is made: the test needs none.
        yield SecureScheduler(server=server, port=port, admin_key="")
    finally:
        await server.stop(grace_s=1.0)


async def test_refused_credentials_over_rest(
    scheduler: SecureScheduler, start_cli: StartCli
) -> None:
    gateway = await gateway_in_front(start_cli, scheduler.target)
    async with httpx.AsyncClient(base_url=gateway, timeout=20.0, trust_env=False) as http:

        async def jobs(credential: str, *, header: str = "authorization") -> httpx.Response:
            value = f"Bearer {credential}" if header == "authorization" else credential
            return await http.get("/v1/jobs", headers={header: value})

        wrong_secret = f"cpa_{'0' * 12}_{'x' * 43}"
        status = rpc_status(
            await jobs(wrong_secret, header="x-api-key"), 401, UNAUTHENTICATED, "CREDENTIAL_INVALID"
        )
        assert "x" * 43 not in status["message"]  # never an echo of a secret
        expired = _token(lifetime_s=-60)
        rpc_status(await jobs(expired), 401, UNAUTHENTICATED, "CREDENTIAL_EXPIRED")
        forged = _token(secret="another-secret-of-at-least-32-characters")
        rpc_status(await jobs(forged), 401, UNAUTHENTICATED, "CREDENTIAL_INVALID")
        elsewhere = _token(aud="another-service")
        rpc_status(await jobs(elsewhere), 401, UNAUTHENTICATED, "CREDENTIAL_INVALID")

        viewer = _token()
        submit = await http.post(
            "/v1/jobs",
            headers={"authorization": f"Bearer {viewer}"},
            json={"spec": {"text": "x"}},
        )
        rpc_status(submit, 403, PERMISSION_DENIED, "PERMISSION_DENIED")
        # The refused call took nothing of the viewer's bucket.
        for _ in range(PER_KEY):
            assert (await jobs(viewer)).status_code == 200
        limited = await jobs(viewer)
        status = rpc_status(limited, 429, RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert limited.headers["retry-after"] == str(60 // PER_KEY)
        (info,) = [d for d in status["details"] if d.get("reason") == "RATE_LIMITED"]
        assert info["metadata"]["scope"] == "key"
        # Another credential has its own bucket.
        assert (await jobs(_token())).status_code == 200
