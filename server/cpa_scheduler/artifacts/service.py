"""The application side of artifacts: uploads checked and stored, then recorded on the task
through the orchestrator (one job change, fenced like a report); listings and downloads scoped
by tenant through the job that lists them. The servicers call this; it calls the content store
and the orchestrator, never SQL or gRPC itself.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cpa_client.artifact_chunks import MAX_CHUNK_BYTES
from cpa_scheduler.domain import (
    ArtifactRecord,
    DomainError,
    InvalidArgument,
    NotFound,
    Reason,
    check_artifact_name,
    check_media_type,
    check_sha256,
)
from cpa_scheduler.orchestration import Orchestrator

from .interface import ArtifactContent, ContentWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadHeader:
    """What an upload says it stores (UploadArtifactHeader, session already resolved)."""

    job_id: str
    task_id: str
    attempt: int
    name: str
    media_type: str
    size_bytes: int
    sha256: str


def _too_large(what: str, size: int, limit: int, field: str) -> DomainError:
    return DomainError(
        f"{what} is {size} bytes; artifacts of at most {limit} bytes are stored "
        "(CPA_ARTIFACT_MAX_BYTES)",
        reason=Reason.ARTIFACT_TOO_LARGE,
        field=field,
    )


class Artifacts:
    """Store, list and read artifacts of a tenant's jobs."""

    def __init__(
        self,
        *,
        content: ArtifactContent,
        orchestrator: Orchestrator,
        max_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._content = content
        self._orchestrator = orchestrator
        self._max_bytes = max_bytes
        self._clock = clock

    def check_header(self, header: UploadHeader) -> UploadHeader:
        """The header's own rules (field names as in UploadArtifactRequest); the media type
        defaulted. Before any byte is read or the job is loaded."""
        if not header.job_id:
            raise InvalidArgument(
                "header.job_id is required", reason=Reason.MISSING_FIELD, field="header.job_id"
            )
        if not header.task_id:
            raise InvalidArgument(
                "header.task_id is required", reason=Reason.MISSING_FIELD, field="header.task_id"
            )
        if header.attempt < 1:
            raise InvalidArgument(
                f"header.attempt must be 1 or more, got {header.attempt}", field="header.attempt"
            )
        check_artifact_name(header.name, "header.name")
        media_type = check_media_type(header.media_type, "header.media_type")
        check_sha256(header.sha256, "header.sha256")
        if header.size_bytes < 0:
            raise InvalidArgument(
                f"header.size_bytes must not be negative, got {header.size_bytes}",
                field="header.size_bytes",
            )
        if header.size_bytes > self._max_bytes:
            raise _too_large(
                "header.size_bytes", header.size_bytes, self._max_bytes, "header.size_bytes"
            )
        return dataclasses.replace(header, media_type=media_type)

    async def upload(
        self, tenant: str, agent_id: str, header: UploadHeader, chunks: AsyncIterable[bytes]
    ) -> tuple[str, ArtifactRecord]:
        """Receive, check and store the bytes, then record the artifact on its task; returns
        (job_id, the record). Fenced before the first byte is read (a refused upload costs no
        transfer) and again when recorded. Any failure stores nothing that becomes visible."""
        header = self.check_header(header)
        try:
            job = await self._orchestrator.get_job(tenant, header.job_id)
            job.check_held(header.task_id, attempt=header.attempt, agent_id=agent_id)
        except NotFound as error:
            # JOB_NOT_FOUND, TASK_NOT_FOUND: the header's field, as every other upload error.
            if error.field:
                error.field = f"header.{error.field}"
            raise
        writer = await self._content.begin(tenant, header.sha256)
        try:
            await self._receive(header, chunks, writer)
            await writer.commit()
        except BaseException:
            # Shielded: a cancelled upload (the agent went away) still removes its bytes.
            await asyncio.shield(writer.abort())
            raise
        record = ArtifactRecord(
            artifact_id=uuid.uuid4().hex,
            task_id=header.task_id,
            attempt=header.attempt,
            name=header.name,
            media_type=header.media_type,
            size_bytes=header.size_bytes,
            sha256=header.sha256,
            create_time=self._clock(),
        )
        await self._orchestrator.store_artifact(tenant, header.job_id, agent_id, record)
        return header.job_id, record

    async def _receive(
        self, header: UploadHeader, chunks: AsyncIterable[bytes], writer: ContentWriter
    ) -> None:
        digest = hashlib.sha256()
        received = 0
        async for chunk in chunks:
            if len(chunk) > MAX_CHUNK_BYTES:
                raise InvalidArgument(
                    f"a chunk of {len(chunk)} bytes; at most {MAX_CHUNK_BYTES} per message",
                    reason=Reason.PAYLOAD_TOO_LARGE,
                    field="chunk",
                )
            received += len(chunk)
            if received > header.size_bytes:
                if received > self._max_bytes:
                    raise _too_large("the upload", received, self._max_bytes, "chunk")
                raise InvalidArgument(
                    f"more than the {header.size_bytes} bytes header.size_bytes declared arrived",
                    reason=Reason.ARTIFACT_SIZE_MISMATCH,
                    field="chunk",
                )
            digest.update(chunk)
            await writer.write(chunk)
        if received < header.size_bytes:
            raise InvalidArgument(
                f"the upload ended after {received} of the {header.size_bytes} bytes "
                "header.size_bytes declared",
                reason=Reason.ARTIFACT_INCOMPLETE,
                field="header.size_bytes",
            )
        if digest.hexdigest() != header.sha256:
            raise InvalidArgument(
                f"the bytes have sha256 {digest.hexdigest()}, not the {header.sha256} "
                "header.sha256 declared; nothing was stored",
                reason=Reason.ARTIFACT_DIGEST_MISMATCH,
                field="header.sha256",
            )

    async def list(self, tenant: str, job_id: str, task_id: str = "") -> list[ArtifactRecord]:
        """The artifacts of the tenant's job (JOB_NOT_FOUND otherwise), of one task (
        TASK_NOT_FOUND when the job has none of that id) or all, in task order."""
        job = await self._orchestrator.get_job(tenant, job_id)
        if task_id:
            return job.task(task_id).artifacts
        return [artifact for task in job.tasks.values() for artifact in task.artifacts]

    async def page(
        self,
        tenant: str,
        job_id: str,
        task_id: str,
        *,
        after: tuple[int, int] | None,
        limit: int,
    ) -> tuple[Sequence[ArtifactRecord], tuple[int, int] | None]:
        """At most `limit` of `list`'s artifacts, from just after position `after` (the task's
        place in the plan, the artifact's in its task's list: stable while a job runs, as a
        task's list only grows at its end), and the position of the page's last one when more
        follow (else None)."""
        job = await self._orchestrator.get_job(tenant, job_id)
        tasks = [job.task(task_id)] if task_id else list(job.tasks.values())
        first_task, last_seen = after if after is not None else (0, -1)
        found: builtins.list[ArtifactRecord] = []
        position = (first_task, last_seen)
        for task_index in range(first_task, len(tasks)):
            artifacts = tasks[task_index].artifacts
            start = last_seen + 1 if task_index == first_task else 0
            for artifact_index in range(start, len(artifacts)):
                if len(found) == limit:
                    return found, position
                found.append(artifacts[artifact_index])
                position = (task_index, artifact_index)
        return found, None

    async def open(
        self, tenant: str, job_id: str, artifact_id: str
    ) -> tuple[ArtifactRecord, AsyncIterator[bytes]]:
        """The artifact the tenant's job lists under `artifact_id`, and its bytes in chunks of
        MAX_CHUNK_BYTES. Another tenant's job or artifact is NotFound, as a missing one."""
        if not artifact_id:
            raise InvalidArgument(
                "artifact_id is required", reason=Reason.MISSING_FIELD, field="artifact_id"
            )
        for artifact in await self.list(tenant, job_id):
            if artifact.artifact_id == artifact_id:
                return artifact, self._content.read(
                    tenant, artifact.sha256, chunk_bytes=MAX_CHUNK_BYTES
                )
        raise NotFound(
            f"job {job_id!r} has no artifact {artifact_id[:64]!r}",
            reason=Reason.ARTIFACT_NOT_FOUND,
            field="artifact_id",
        )
