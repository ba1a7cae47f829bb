"""WatchJob streams end with their credential, over real gRPC: revoking an API key ends the
streams it opened (UNAUTHENTICATED, CREDENTIAL_REVOKED; on the revoking replica at once) while
other credentials' streams go on, and a JWT's streams end when it expires (CREDENTIAL_EXPIRED).
The stream's last message carries the same status (WatchJobResponse.error): through the REST
gateway, where trailers are not seen, it is the last event. Across replicas:
tests/security/test_revocation_replicas.py."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from google.rpc.error_details_pb2 import ErrorInfo

from cpa.scheduler.v1.scheduler_service_pb2 import WatchJobRequest, WatchJobResponse
from cpa.scheduler.v1.scheduler_service_pb2_grpc import SchedulerServiceStub
from cpa_client import CpaError
from cpa_client.errors import ERROR_DOMAIN
from tests.cli.conftest import StartCli
from tests.cli.rest_gateway import ERROR_INFO, rpc_status

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


async def _pending_job_and_viewer(secure: SecureScheduler) -> tuple[str, tuple[str, str]]:
    """A job that stays pending (the admin's), and a new viewer key (id, secret) to watch it."""
    async with secure.client(secure.admin_key) as admin:
        job_id = (await admin.schedule_job(PENDING)).job.job_id
    return job_id, await secure.key("viewer")


async def test_revoking_a_key_ends_its_watch_streams_and_only_those(
    secure: SecureScheduler,
) -> None:
    job_id, (revoked_id, revoked_key) = await _pending_job_and_viewer(secure)
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


async def _read_all(call: Any, into: list[WatchJobResponse]) -> None:
    while isinstance(response := await call.read(), WatchJobResponse):
        into.append(response)


async def test_a_revoked_keys_watch_ends_with_a_last_message_carrying_its_status(
    secure: SecureScheduler,
) -> None:
    # gRPC callers get the status as the call's too; the last message is for those who see no
    # trailers, and holds the same google.rpc.Status.
    job_id, (key_id, key) = await _pending_job_and_viewer(secure)
    async with grpc.aio.insecure_channel(secure.target) as channel:
        call = SchedulerServiceStub(channel).WatchJob(
            WatchJobRequest(job_id=job_id), metadata=(("x-api-key", key),)
        )
        first = await call.read()
        assert isinstance(first, WatchJobResponse)
        assert first.HasField("event")
        await secure.revoke(key_id)
        responses: list[WatchJobResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _read_all(call, responses)
    error = CpaError.from_rpc_error(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_REVOKED")
    last = responses[-1]
    assert last.HasField("error")
    assert (last.error.code, last.error.message) == (error.code.value[0], error.message)
    (detail,) = [d for d in last.error.details if d.Is(ErrorInfo.DESCRIPTOR)]
    info = ErrorInfo()
    detail.Unpack(info)
    assert (info.reason, info.domain) == ("CREDENTIAL_REVOKED", ERROR_DOMAIN)
    # Only the last message carries one; none before it.
    assert not any(response.HasField("error") for response in responses[:-1])


async def test_over_rest_a_revoked_keys_event_stream_ends_with_its_status_and_reopening_is_401(
    secure: SecureScheduler, start_cli: StartCli
) -> None:
    job_id, (key_id, key) = await _pending_job_and_viewer(secure)
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
            # Trailers are invisible here: the stream's last event carries the status. (Envoy
            # may then reset the stream rather than end it cleanly: the events read count.)
            messages: list[dict[str, Any]] = []
            with contextlib.suppress(httpx.RemoteProtocolError):
                async for line in lines:
                    if line.startswith("data:"):
                        messages.append(json.loads(line[5:]))
        assert messages, "the stream ended without its last event"
        *before, last = messages
        # Stored events still queued may precede the end; the job did not end.
        assert all("event" in message and not message["event"]["terminal"] for message in before)
        assert set(last) == {"error"}, last
        status = last["error"]
        assert status["code"] == 16, status
        assert status["message"], status
        infos = [d for d in status["details"] if d["@type"] == ERROR_INFO]
        assert [(i["reason"], i["domain"]) for i in infos] == [("CREDENTIAL_REVOKED", ERROR_DOMAIN)]
        again = await http.get(path, headers=headers)
        rpc_status(again, 401, 16, "CREDENTIAL_REVOKED")
