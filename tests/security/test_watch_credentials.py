"""WatchJob streams end with their credential, over real gRPC: revoking an API key ends the
streams it opened (UNAUTHENTICATED, CREDENTIAL_REVOKED; on the revoking replica at once) while
other credentials' streams go on, and a JWT's streams end when it expires (CREDENTIAL_EXPIRED).
Through the REST gateway the event stream ends too. Across replicas:
tests/security/test_revocation_replicas.py."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import jwt
import pytest

from tests.cli.conftest import StartCli
from tests.cli.rest_gateway import rpc_status

from .conftest import (
    CACHE_TTL_S,
    CALL_TIMEOUT_S,
    PENDING,
    SecureScheduler,
    Watch,
    gateway_in_front,
    secure_settings,
    start_secure,
)


async def test_revoking_a_key_ends_its_watch_streams_and_only_those(
    secure: SecureScheduler,
) -> None:
    async with secure.client(secure.admin_key) as admin:
        job_id = (await admin.schedule_job(PENDING)).job.job_id
    revoked_id, revoked_key = await secure.key("viewer")
    _, other_key = await secure.key("viewer")
    async with (
        secure.client(revoked_key) as revoked,
        secure.client(other_key) as other,
        secure.client(secure.admin_key) as admin,
    ):
        doomed = [Watch(revoked, job_id), Watch(revoked, job_id)]
        kept = Watch(other, job_id)
        for watch in (*doomed, kept):
            await watch.opened()

        revoked_at = time.monotonic()
        await secure.revoke(revoked_id)
        errors = [await watch.ended() for watch in doomed]
        ended_after_s = time.monotonic() - revoked_at
        for error in errors:
            assert error is not None
            assert (error.code, error.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CREDENTIAL_REVOKED",
            )
        # The replica that revoked the key ends its streams at once, not after a cache TTL.
        assert ended_after_s < CACHE_TTL_S

        # The other key's stream is still open: it sees the job end, and ends normally.
        assert not kept.task.done()
        await admin.cancel_job(job_id)
        assert await kept.ended() is None
        assert kept.events[-1].terminal
        # A new watch with the revoked key is refused at its start.
        assert (await Watch(revoked, job_id).ended()).reason == "CREDENTIAL_REVOKED"  # type: ignore[union-attr]


ISSUER = "https://idp.example.test"
AUDIENCE = "cpa-scheduler"
HMAC_SECRET = "a-shared-secret-of-at-least-32-characters!"
LIFETIME_S = 2


@pytest.fixture
async def jwt_scheduler(tmp_path: Path) -> AsyncIterator[SecureScheduler]:
    settings = secure_settings(
        tmp_path / "data",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_algorithms="HS256",
        jwt_hmac_secret=HMAC_SECRET,
        jwt_clock_skew_s=0,
    )
    server, port = await start_secure(settings)
    try:
        yield SecureScheduler(server=server, port=port, admin_key="")
    finally:
        await server.stop(grace_s=1.0)


async def test_an_expiring_jwt_ends_its_watch_streams(jwt_scheduler: SecureScheduler) -> None:
    issued = time.time()
    expires = int(issued + LIFETIME_S)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": expires, "iat": int(issued)}
    token = jwt.encode(
        {**claims, "cpa_tenant": "acme", "cpa_roles": ["submitter", "viewer"]},
        HMAC_SECRET,
        algorithm="HS256",
    )
    async with jwt_scheduler.client(token) as client:
        job_id = (await client.schedule_job(PENDING)).job.job_id
        watch = Watch(client, job_id)
        await watch.opened()
        error = await watch.ended()
        ended_at = time.time()
        assert error is not None
        assert (error.code, error.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "CREDENTIAL_EXPIRED",
        )
        # At its expiry (no skew here), not before, and not much after.
        assert expires <= ended_at < expires + 1.0


async def test_over_rest_a_revoked_keys_event_stream_ends_and_reopening_is_401(
    secure: SecureScheduler, start_cli: StartCli
) -> None:
    async with secure.client(secure.admin_key) as admin:
        job_id = (await admin.schedule_job(PENDING)).job.job_id
    key_id, key = await secure.key("viewer")
    gateway = await gateway_in_front(start_cli, secure.target)
    headers = {"x-api-key": key}
    async with httpx.AsyncClient(base_url=gateway, timeout=CALL_TIMEOUT_S, trust_env=False) as http:
        path = f"/v1/jobs/{job_id}:watch"
        async with http.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            first = await anext(lines)
            assert first.startswith("data:"), first
            await secure.revoke(key_id)
            # The status is in the trailers, which REST callers do not see: the stream ends
            # (cleanly, or reset by the gateway), before its read timeout.
            with contextlib.suppress(httpx.RemoteProtocolError):
                rest = [line async for line in lines]
                events = [json.loads(line[5:])["event"] for line in rest if line[:5] == "data:"]
                # Stored events still queued may precede the end; the job did not end.
                assert not any(event["terminal"] for event in events)
        again = await http.get(path, headers=headers)
        rpc_status(again, 401, 16, "CREDENTIAL_REVOKED")
