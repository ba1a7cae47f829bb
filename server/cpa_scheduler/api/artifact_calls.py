"""The artifact RPCs' wire side, shared by ExecutorService (UploadArtifact, DownloadArtifact for
agents) and SchedulerService (ListArtifacts, DownloadArtifact for callers): messages in and
out, the session that proves which agent uploads; the rules are in cpa_scheduler.artifacts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc.aio
from google.protobuf.message import Message

from cpa.executor.v1 import executor_service_pb2 as executor_pb
from cpa.scheduler.v1 import scheduler_service_pb2 as scheduler_pb
from cpa_scheduler.artifacts import Artifacts, UploadHeader
from cpa_scheduler.dispatch import AgentSession, SessionRegistry
from cpa_scheduler.dispatch.directory import AgentDirectory
from cpa_scheduler.domain import DomainError, FailedPrecondition, InvalidArgument, Reason

from .artifact_convert import artifact_to_proto
from .ids import required_id

Context = grpc.aio.ServicerContext[Any, Any]
DownloadRequest = executor_pb.DownloadArtifactRequest | scheduler_pb.DownloadArtifactRequest


def _header(message: executor_pb.UploadArtifactHeader) -> UploadHeader:
    return UploadHeader(
        job_id=required_id(message.job_id, "header.job_id"),
        task_id=required_id(message.task_id, "header.task_id"),
        attempt=message.attempt,
        name=message.name,
        media_type=message.media_type,
        size_bytes=message.size_bytes,
        sha256=message.sha256,
    )


async def _unless_stalled(
    requests: AsyncIterator[executor_pb.UploadArtifactRequest], idle_s: float
) -> AsyncIterator[executor_pb.UploadArtifactRequest]:
    """The upload's messages, each within `idle_s` of the one before (the first, of the call's
    start): an agent that stops sending without ending its stream would hold the upload, and
    what it buffered, for ever."""
    while True:
        try:
            async with asyncio.timeout(idle_s):
                message = await anext(requests)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DomainError(
                f"the upload sent nothing for {idle_s:g}s (CPA_ARTIFACT_UPLOAD_IDLE_S) and did "
                "not end; nothing of it is stored",
                reason=Reason.UPLOAD_STALLED,
            ) from None
        yield message


async def _chunks(
    requests: AsyncIterator[executor_pb.UploadArtifactRequest],
) -> AsyncIterator[bytes]:
    async for request in requests:
        kind = request.WhichOneof("kind")
        if kind == "header":
            raise InvalidArgument(
                "an upload has one header, its first message; a second one came",
                field="header",
            )
        if kind != "chunk":
            raise InvalidArgument(
                "an upload message after the header must be a chunk",
                reason=Reason.MISSING_FIELD,
                field="chunk",
            )
        yield request.chunk


async def agent_of_session(
    tenant: str,
    session_id: str,
    *,
    streams: dict[str, AgentSession],
    sessions: SessionRegistry,
    directory: AgentDirectory,
) -> str:
    """The agent id of the tenant's live session `session_id`: one of this replica's streams,
    else one another replica announces as its current session. FailedPrecondition
    (ATTEMPT_NOT_HELD) otherwise: no live session of this tenant may write for an attempt."""
    required_id(session_id, "header.session_id")
    session = streams.get(session_id)
    if session is not None and session.profile.tenant == tenant and sessions.holds(session):
        return session.agent_id
    for record in await directory.list_agents(tenant):
        if record.session_ids[:1] == (session_id,):
            return record.agent_id
    raise FailedPrecondition(
        "header.session_id names no live session of this tenant (the agent's stream ended or "
        "was taken over); uploads are accepted from the session that runs the attempt",
        reason=Reason.ATTEMPT_NOT_HELD,
        field="header.session_id",
    )


async def upload(
    artifacts: Artifacts,
    tenant: str,
    requests: AsyncIterator[executor_pb.UploadArtifactRequest],
    *,
    streams: dict[str, AgentSession],
    sessions: SessionRegistry,
    directory: AgentDirectory,
    idle_s: float,
) -> executor_pb.UploadArtifactResponse:
    requests = _unless_stalled(requests, idle_s)
    first = await anext(requests, None)
    if first is None or first.WhichOneof("kind") != "header":
        raise InvalidArgument(
            "the first message of an upload must be its header",
            reason=Reason.MISSING_FIELD,
            field="header",
        )
    header = artifacts.check_header(_header(first.header))
    agent_id = await agent_of_session(
        tenant, first.header.session_id, streams=streams, sessions=sessions, directory=directory
    )
    job_id, record = await artifacts.upload(tenant, agent_id, header, _chunks(requests))
    return executor_pb.UploadArtifactResponse(artifact=artifact_to_proto(job_id, record))


async def download(
    artifacts: Artifacts,
    tenant: str,
    request: DownloadRequest,
    context: Context,
    response: Callable[..., Message],
) -> None:
    """Writes the artifact's metadata, then its bytes chunk by chunk, as `response` messages.

    Written with context.write (the handler is a coroutine, not a generator) so that the end of
    the caller's credential, which cancels the handler's task (credential_watch.py), lands in
    this body whatever it awaits, and the stream ends with UNAUTHENTICATED."""
    job_id = required_id(request.job_id, "job_id")
    record, chunks = await artifacts.open(
        tenant, job_id, required_id(request.artifact_id, "artifact_id")
    )
    await context.write(response(artifact=artifact_to_proto(job_id, record)))
    try:
        async for chunk in chunks:
            await context.write(response(chunk=chunk))
    finally:
        # Ended early (the credential, the client gone): release the store's reader (a
        # PostgreSQL connection, a file) now, not at garbage collection.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
