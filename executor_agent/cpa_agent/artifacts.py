"""The agent's ArtifactAccess: an attempt's files go to the scheduler over UploadArtifact, its
artifact inputs come back over DownloadArtifact, both on the channel of the agent's current
stream (calls of their own, never the stream itself: docs/adr/0002-artifacts.md).

The Connection owns the channel, the tenant and the session id; each attempt gets an
AttemptArtifacts bound to it. While the agent is disconnected a call waits for the next session
(the attempt's own timeout bounds the wait); a call cut with the connection is made again on a
session that lives: the next one, which adopted the attempt (see
AttemptArtifacts._on_a_live_session).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

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
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Link:
    """What an artifact call needs of the agent's current session."""

    channel: grpc.aio.Channel
    session_id: str
    tenant: str
    # The agent's credential metadata (authorization), empty without a token.
    credentials: tuple[tuple[str, str], ...] = ()


class LinkSource(Protocol):
    """The Connection's: waits for a welcomed session and returns its link. With `cut` (the
    link of a call that the connection's end cut), a later session's link, or `cut` itself once
    the server has spoken on its session since the call failed (the session survived)."""

    def __call__(self, cut: Link | None = None, /) -> Awaitable[Link]: ...


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

        async def upload(link: Link) -> pb.UploadArtifactResponse:
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
            return await _stub(link).UploadArtifact(
                _upload_requests(header, data), metadata=_metadata(link)
            )

        response = await self._on_a_live_session(
            ARTIFACT_UPLOAD_FAILED, f"storing {name!r}", upload
        )
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

        async def download(link: Link) -> tuple[artifact_pb2.Artifact, bytes]:
            return await download_bytes(
                _stub(link).DownloadArtifact(request, metadata=_metadata(link))
            )

        try:
            artifact, data = await self._on_a_live_session(
                ARTIFACT_DOWNLOAD_FAILED, f"reading input {input_name!r}", download
            )
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

    async def _on_a_live_session(
        self, code: str, what: str, call: Callable[[Link], Awaitable[_T]]
    ) -> _T:
        """`call` on the current session; when the connection's end cut it, again (at most
        _CALLS_PER_ARTIFACT calls in all) on a session that lives: the next one, which adopted
        the attempt, or the same one once the server spoke on it since. Not at once on the
        same link: a reset fails the call before the stream's reader notices, and that session
        is gone (the server refuses its id) and its channel about to close under the repeat.
        A failure is an ExecutorError with `code` (see _failure)."""
        cut: Link | None = None
        for calls in itertools.count(1):
            link = await self._link(cut)
            try:
                return await call(link)
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RETRY_CODES or calls >= _CALLS_PER_ARTIFACT:
                    raise _failure(code, what, error) from None
                logger.info("%s for %s cut (%s); again", what, self._key, error.code().name)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # the attempt itself is stopped
                # Not the attempt: the session's end closed its channel, and grpc.aio cancels
                # the calls of a channel it closes.
                if calls >= _CALLS_PER_ARTIFACT:
                    raise ExecutorError(
                        code,
                        f"{what} failed: the agent's session ended under the call",
                        retryable=True,
                        details={"grpc_status": grpc.StatusCode.CANCELLED.name},
                    ) from None
                logger.info("%s for %s cut (its session ended); again", what, self._key)
            cut = link
        raise AssertionError("unreachable: the loop returns or raises")


def _upload_requests(
    header: pb.UploadArtifactHeader, data: bytes
) -> Iterator[pb.UploadArtifactRequest]:
    yield pb.UploadArtifactRequest(header=header)
    for chunk in split(data):
        yield pb.UploadArtifactRequest(chunk=chunk)


def _stub(link: Link) -> executor_service_pb2_grpc.ExecutorServiceAsyncStub:
    return executor_service_pb2_grpc.ExecutorServiceStub(link.channel)


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
