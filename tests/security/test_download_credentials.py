"""DownloadArtifact streams end with their credential, over real gRPC: revoking the API key of
a caller (SchedulerService) or of an agent (ExecutorService) while a large artifact is being
downloaded ends the download with UNAUTHENTICATED (CREDENTIAL_REVOKED) and no further chunks;
the same mechanism as WatchJob's (tests/security/test_watch_credentials.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import scheduler_service_pb2 as sched
from cpa.scheduler.v1 import scheduler_service_pb2_grpc
from cpa_client import CpaError
from cpa_client.artifact_chunks import MAX_CHUNK_BYTES, split
from tests.e2e.raw_agent import RawAgentStream

from .conftest import CALL_TIMEOUT_S, PENDING, SecureScheduler

# Many chunks (of MAX_CHUNK_BYTES), far more than the client's flow-control window holds.
SIZE = 12 * MAX_CHUNK_BYTES
# The downloading client keeps HTTP/2's default window (no BDP probing to grow it): a server
# that went on writing after the revocation could not push the rest into the client's buffers
# before the test reads again.
SMALL_WINDOW = (("grpc.http2.bdp_probe", 0),)


@dataclass(frozen=True)
class Stored:
    job_id: str
    artifact_id: str


@pytest.fixture
async def stored(secure: SecureScheduler) -> AsyncIterator[Stored]:
    """An artifact of SIZE random bytes, uploaded by an agent (its own key) for the attempt it
    runs; the agent stays connected."""
    _, agent_key = await secure.key("agent", actions=["noop"])
    credential = (("x-api-key", agent_key),)
    agent = RawAgentStream(secure.target, metadata=credential)
    try:
        welcome = await agent.hello("uploader")
        agent.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
        async with secure.client(secure.admin_key) as admin:
            job_id = (await admin.schedule_job(PENDING)).job.job_id
        assert (await agent.read_until("assignment")).assignment.job_id == job_id
        data = os.urandom(SIZE)
        header = ex.UploadArtifactHeader(
            job_id=job_id,
            task_id="a",
            attempt=1,
            session_id=welcome.session_id,
            name="large.bin",
            media_type="application/octet-stream",
            size_bytes=SIZE,
            sha256=hashlib.sha256(data).hexdigest(),
        )

        def requests() -> Iterator[ex.UploadArtifactRequest]:
            yield ex.UploadArtifactRequest(header=header)
            for chunk in split(data):
                yield ex.UploadArtifactRequest(chunk=chunk)

        async with grpc.aio.insecure_channel(secure.target) as channel:
            stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
            uploaded = await stub.UploadArtifact(
                requests(), metadata=credential, timeout=CALL_TIMEOUT_S
            )
        yield Stored(job_id, uploaded.artifact.artifact_id)
    finally:
        await agent.close()


def _download(channel: grpc.aio.Channel, service: str, stored: Stored, key: str) -> Any:
    metadata = (("x-api-key", key),)
    if service == "scheduler":
        return scheduler_service_pb2_grpc.SchedulerServiceStub(channel).DownloadArtifact(
            sched.DownloadArtifactRequest(job_id=stored.job_id, artifact_id=stored.artifact_id),
            metadata=metadata,
        )
    return executor_service_pb2_grpc.ExecutorServiceStub(channel).DownloadArtifact(
        ex.DownloadArtifactRequest(job_id=stored.job_id, artifact_id=stored.artifact_id),
        metadata=metadata,
    )


RESPONSES = (sched.DownloadArtifactResponse, ex.DownloadArtifactResponse)

# The caller's role per service: a viewer downloads through SchedulerService, an agent (its
# own key, not the uploader's) through ExecutorService.
ROLES = {"scheduler": ("viewer", ()), "executor": ("agent", ("noop",))}


@pytest.mark.parametrize("service", sorted(ROLES))
async def test_revoking_a_key_ends_its_download_in_progress(
    secure: SecureScheduler, stored: Stored, service: str
) -> None:
    role, actions = ROLES[service]
    key_id, key = await secure.key(role, actions=actions)
    async with grpc.aio.insecure_channel(secure.target, options=SMALL_WINDOW) as channel:
        call = _download(channel, service, stored, key)
        first = await call.read()
        assert first.artifact.size_bytes == SIZE
        received = len((await call.read()).chunk)
        assert received > 0  # the download is under way

        await secure.revoke(key_id)
        error: CpaError | None = None
        try:
            while isinstance(message := await call.read(), RESPONSES):
                received += len(message.chunk)
        except grpc.aio.AioRpcError as rpc_error:
            error = CpaError.from_rpc_error(rpc_error)
        assert error is not None, f"the download completed ({received} bytes)"
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_REVOKED")
        # What was in flight when the key was revoked may arrive; the rest never does.
        assert received < SIZE

    # Another key downloads the whole artifact: the stream's end was the credential's, not
    # the artifact's.
    _, other = await secure.key(role, actions=actions)
    async with grpc.aio.insecure_channel(secure.target) as channel:
        total = 0
        async for message in _download(channel, service, stored, other):
            total += len(message.chunk)
        assert total == SIZE
