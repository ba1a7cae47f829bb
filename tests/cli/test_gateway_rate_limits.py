"""Rate limits through the real Envoy gateway: a refused REST call answers 429 with a
Retry-After header and the JSON google.rpc.Status (ErrorInfo + RetryInfo); the per-address
limit counts each client the trusted gateway names, and a forged x-forwarded-for counts for
nothing. Clients bind distinct loopback addresses (127.0.0.2, 127.0.0.3) so that they differ
from the gateway's own (127.0.0.1, the one the scheduler trusts)."""

from __future__ import annotations

import httpx
import pytest

from cpa_client.errors import ERROR_DOMAIN as DOMAIN

from .conftest import StartCli, start_gateway, start_server

PER_IP = 3


def _client(base_url: str, source: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=10, trust_env=False)


@pytest.fixture
def gateway_url(start_cli: StartCli) -> str:
    _, upstream = start_server(
        start_cli,
        env={
            "CPA_RATE_LIMITS_ENABLED": "true",
            "CPA_RATE_LIMIT_PER_IP": str(PER_IP),
            "CPA_RATE_LIMIT_PER_KEY": "1000",
            "CPA_TRUSTED_PROXIES": "127.0.0.1/32",
        },
    )
    _, match = start_gateway(start_cli, upstream)
    return f"http://{match['address']}"


async def test_rest_refusal_is_429_with_retry_after_and_retry_info(gateway_url: str) -> None:
    async with (
        _client(gateway_url, "127.0.0.2") as first,
        _client(gateway_url, "127.0.0.3") as other,
    ):
        for _ in range(PER_IP):
            assert (await first.get("/v1/jobs")).status_code == 200
        refused = await first.get("/v1/jobs")
        assert refused.status_code == 429, refused.text
        # One token per 60/PER_IP s: whole seconds, rounded up.
        assert refused.headers["retry-after"] == str(60 // PER_IP)
        status = refused.json()
        assert status["code"] == 8  # RESOURCE_EXHAUSTED
        info, retry = status["details"]
        assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
        assert (info["reason"], info["domain"]) == ("RATE_LIMITED", DOMAIN)
        assert info["metadata"]["scope"] == "ip"
        assert info["metadata"]["limit"] == str(PER_IP)
        assert retry["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
        assert retry["retry_delay"].endswith("s")
        assert 0 < float(retry["retry_delay"][:-1]) <= 60 / PER_IP
        # A forged header does not move the refused client to a fresh bucket.
        forged = await first.get("/v1/jobs", headers={"x-forwarded-for": "198.51.100.7"})
        assert forged.status_code == 429
        # Another client behind the same gateway has a bucket of its own.
        assert (await other.get("/v1/jobs")).status_code == 200
