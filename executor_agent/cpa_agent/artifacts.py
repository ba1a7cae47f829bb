"""The agent's ArtifactAccess: an attempt's files go to the scheduler over UploadArtifact, its
artifact inputs come back over DownloadArtifact, both on the channel of the agent's current
stream (calls of their own, never the stream itself: docs/adr/0002-artifacts.md).

The Connection owns the channel, the tenant and the session id; each attempt gets an
AttemptArtifacts bound to it. While the agent is disconnected a call waits for the next session
(the attempt's own timeout bounds the wait); a call cut by a reconnect is made once more on the
new session, which adopted the attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc
import grpc.aio

from cpa.common.v1 import artifact_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa_agent.executors.base import ArtifactInfo, ExecutorError
from cpa_agent.runner import AttemptKey
from cpa_client.artifact_chunks import ArtifactCheckError, download_bytes, split

logger = logging.getLogger(__name__)

TENANT_METADATA_KEY = "x-cpa-tenant"
# Error codes (TaskError.code) an executor's attempt fails with when an artifact call does.
ARTIFACT_UPLOAD_FAILED = "ARTIFACT_UPLOAD_FAILED"
ARTIFACT_DOWNLOAD_FAILED = "ARTIFACT_DOWNLOAD_FAILED"
ARTIFACT_MISMATCH = "ARTIFACT_MISMATCH"
INPUT_NOT_FOUND = "INPUT_NOT_FOUND"
# Calls cut by the session's end are made again on the next one, this many times in all.
_CALLS_PER_ARTIFACT = 3
# Codes after which the same call may succeed on another session.
_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


@dataclass(frozen=True, slots=True)
class Link:
    """What an artifact call needs of the agent's current session."""

    channel: grpc.aio.Channel
    session_id: str
    tenant: str
    # The agent's credential metadata (authorization), empty without a token.
    credentials: tuple[tuple[str, str], ...] = ()


LinkSource = Callable[[], Awaitable[Link]]
"""Waits for a welcomed session and returns its link (the Connection's)."""


def info_of(artifact: artifact_pb2.Artifact) -> ArtifactInfo:
    return ArtifactInfo(
        name=artifact.name,
        media_type=artifact.media_type,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        artifact_id=artifact.artifact_id,
    )


class AttemptArtifacts:
    """ArtifactAccess of one attempt (see cpa_agent.executors.base.ArtifactAccess)."""

    def __init__(
        self,
        *,
        key: AttemptKey,
        link: LinkSource,
        input_artifacts: Mapping[str, artifact_pb2.Artifact],
    ) -> None:
        self._key = key
        self._link = link
        self._inputs = dict(input_artifacts)

    async def save(self, name: str, media_type: str, data: bytes) -> ArtifactInfo:
        digest = hashlib.sha256(data).hexdigest()
        response: pb.UploadArtifactResponse | None = None
        for call in range(1, _CALLS_PER_ARTIFACT + 1):
            link = await self._link()
            header = pb.UploadArtifactHeader(
                job_id=self._key.job_id,
                task_id=self._key.task_id,
                attempt=self._key.attempt,
                session_id=link.session_id,
                name=name,
                media_type=media_type,
                size_bytes=len(data),
                sha256=digest,
            )
            stub = executor_service_pb2_grpc.ExecutorServiceStub(link.channel)
            try:
                response = await stub.UploadArtifact(
                    _upload_requests(header, data), metadata=_metadata(link)
                )
                break
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRY_CODES and call < _CALLS_PER_ARTIFACT:
                    logger.info(
                        "upload of %r for %s cut (%s); again", name, self._key, error.code()
                    )
                    continue
                raise _failure(ARTIFACT_UPLOAD_FAILED, f"storing {name!r}", error) from None
        assert response is not None  # the loop breaks with one or raises
        logger.info("attempt %s stored artifact %r (%d bytes)", self._key, name, len(data))
        return info_of(response.artifact)

    async def read_input(self, input_name: str) -> tuple[ArtifactInfo, bytes]:
        expected = self._inputs.get(input_name)
        if expected is None:
            raise ExecutorError(
                INPUT_NOT_FOUND,
                f"the task has no artifact input {input_name!r} (ToDo.inputs with artifact_name)",
                retryable=False,
            )
        request = pb.DownloadArtifactRequest(
            artifact_id=expected.artifact_id, job_id=self._key.job_id
        )
        for call in range(1, _CALLS_PER_ARTIFACT + 1):
            link = await self._link()
            stub = executor_service_pb2_grpc.ExecutorServiceStub(link.channel)
            try:
                artifact, data = await download_bytes(
                    stub.DownloadArtifact(request, metadata=_metadata(link))
                )
                break
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRY_CODES and call < _CALLS_PER_ARTIFACT:
                    continue
                raise _failure(
                    ARTIFACT_DOWNLOAD_FAILED, f"reading input {input_name!r}", error
                ) from None
            except ArtifactCheckError as error:
                raise ExecutorError(ARTIFACT_MISMATCH, str(error), retryable=False) from None
        # What the assignment promised is what must have arrived (the download checked the
        # bytes against the metadata the server sent with them).
        if (artifact.sha256, artifact.size_bytes) != (expected.sha256, expected.size_bytes):
            raise ExecutorError(
                ARTIFACT_MISMATCH,
                f"input {input_name!r}: the artifact downloaded has sha256 {artifact.sha256} and "
                f"{artifact.size_bytes} bytes, the assignment named {expected.sha256} and "
                f"{expected.size_bytes} bytes",
                retryable=False,
            )
        return info_of(artifact), data


def _upload_requests(
    header: pb.UploadArtifactHeader, data: bytes
) -> Iterator[pb.UploadArtifactRequest]:
    yield pb.UploadArtifactRequest(header=header)
    for chunk in split(data):
        yield pb.UploadArtifactRequest(chunk=chunk)


def _metadata(link: Link) -> tuple[tuple[str, str], ...]:
    tenant = ((TENANT_METADATA_KEY, link.tenant),) if link.tenant else ()
    return (*tenant, *link.credentials)


def _failure(code: str, what: str, error: grpc.aio.AioRpcError) -> ExecutorError:
    """An artifact call's failure as the attempt's: retryable when the scheduler could not be
    reached; not when it refused (too large, a digest mismatch, the attempt no longer ours)."""
    return ExecutorError(
        code,
        f"{what} failed: {error.code().name}: {error.details()}",
        retryable=error.code() in _RETRY_CODES or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED,
        details={"grpc_status": error.code().name},
    )


async def wait_for_link(connected: asyncio.Event, current: Callable[[], Link | None]) -> Link:
    """The current session's link, waiting for a welcome while there is none."""
    while True:
        link = current()
        if link is not None:
            return link
        await connected.wait()
        # Set, but the session may have ended before we ran: look again.
        if current() is None:
            await asyncio.sleep(0)
