"""Artifacts in the shared storage contract, on every backend: the bytes (files beside the
SQLite file; chunks in PostgreSQL) and the record on the task (the job store). Uploads go
through the real application service and orchestrator, so "nothing visible" is checked where a
caller would look: the task's list and the content store."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cpa_scheduler.artifacts import ArtifactContent, Artifacts, FileContent, UploadHeader
from cpa_scheduler.artifacts.postgres import PostgresContent
from cpa_scheduler.dispatch import SessionRegistry
from cpa_scheduler.dispatch.directory import LocalAgentDirectory
from cpa_scheduler.domain import (
    ArtifactRecord,
    AttemptNotHeld,
    InvalidArgument,
    NotFound,
    Reason,
    StaleAttempt,
    TaskArtifactStored,
)
from cpa_scheduler.events import LocalEventBus
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import Planner
from cpa_scheduler.queue import LocalWorkQueue
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import Store

from .conftest import BACKENDS
from .test_store_contract import NOW, TENANT, assigning, create, new_job, todo

OTHER = "tenant-b"
CHUNK = 64 * 1024


def data_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(params=BACKENDS)
async def content(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ArtifactContent]:
    opened: ArtifactContent
    if request.param == "postgres":
        opened = await PostgresContent.open(request.getfixturevalue("postgres_url"))
    else:
        opened = FileContent(tmp_path / "artifacts")
    try:
        yield opened
    finally:
        await opened.close()


async def read_all(content: ArtifactContent, tenant: str, sha256: str) -> bytes:
    chunks = [c async for c in content.read(tenant, sha256, chunk_bytes=CHUNK)]
    assert all(len(c) <= CHUNK for c in chunks)
    return b"".join(chunks)


async def store_bytes(content: ArtifactContent, tenant: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    writer = await content.begin(tenant, digest)
    for start in range(0, len(data), 300_000):
        await writer.write(data[start : start + 300_000])
    await writer.commit()
    return digest


# -- the bytes -------------------------------------------------------------------------------


async def test_committed_bytes_read_back_in_bounded_chunks(content: ArtifactContent) -> None:
    data = data_of(2_500_000)
    digest = await store_bytes(content, TENANT, data)
    assert await content.exists(TENANT, digest)
    assert await read_all(content, TENANT, digest) == data
    empty = await store_bytes(content, TENANT, b"")
    assert await read_all(content, TENANT, empty) == b""


async def test_bytes_being_written_or_aborted_are_never_readable(content: ArtifactContent) -> None:
    data = data_of(1_500_000, seed=2)
    digest = hashlib.sha256(data).hexdigest()
    writer = await content.begin(TENANT, digest)
    await writer.write(data[:1_200_000])
    assert not await content.exists(TENANT, digest)
    await writer.abort()
    assert not await content.exists(TENANT, digest)
    with pytest.raises(FileNotFoundError):
        await read_all(content, TENANT, digest)
    # Stored later, whole, by another upload.
    assert await store_bytes(content, TENANT, data) == digest
    assert await read_all(content, TENANT, digest) == data


async def test_tenants_never_share_bytes(content: ArtifactContent) -> None:
    digest = await store_bytes(content, TENANT, b"tenant a's invoice")
    assert not await content.exists(OTHER, digest)
    with pytest.raises(FileNotFoundError):
        await read_all(content, OTHER, digest)
    # The same bytes of the other tenant are its own copy.
    assert await store_bytes(content, OTHER, b"tenant a's invoice") == digest
    assert await read_all(content, OTHER, digest) == b"tenant a's invoice"


async def test_the_same_bytes_twice_are_stored_once_and_stay_readable(
    content: ArtifactContent,
) -> None:
    data = data_of(700_000, seed=3)
    digest = await store_bytes(content, TENANT, data)
    again = await content.begin(TENANT, digest)
    await again.write(data)
    await again.abort()  # an aborted repeat must not take the stored copy with it
    assert await read_all(content, TENANT, digest) == data
    assert await store_bytes(content, TENANT, data) == digest
    assert await read_all(content, TENANT, digest) == data


# -- the record on the task (the job store) ---------------------------------------------------


def record(name: str, attempt: int = 1, artifact_id: str = "a1") -> ArtifactRecord:
    return ArtifactRecord(
        artifact_id=artifact_id,
        task_id="a",
        attempt=attempt,
        name=name,
        media_type="application/pdf",
        size_bytes=3,
        sha256=hashlib.sha256(b"pdf").hexdigest(),
        create_time=NOW,
    )


async def test_stored_artifacts_read_back_with_their_attempt_and_event(store: Store) -> None:
    await create(store, new_job("job-1", todo("a")))
    await store.update_job(TENANT, "job-1", assigning("a"))
    _, _, changes = await store.update_job(
        TENANT,
        "job-1",
        lambda job: job.store_artifact(record("x.pdf"), agent_id="agent-1", now=NOW),
    )
    # Fenced like a report: another agent, or an attempt that is not the current one.
    with pytest.raises(AttemptNotHeld):
        await store.update_job(
            TENANT,
            "job-1",
            lambda job: job.store_artifact(record("y.pdf"), agent_id="agent-2", now=NOW),
        )
    with pytest.raises(StaleAttempt):
        await store.update_job(
            TENANT,
            "job-1",
            lambda job: job.store_artifact(record("y.pdf", 2), agent_id="agent-1", now=NOW),
        )
    job = await store.get_job(TENANT, "job-1")
    assert job.tasks["a"].artifacts == [record("x.pdf")]
    events = await store.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    assert events[-1].payload == TaskArtifactStored(artifact=record("x.pdf"))
    assert changes.events[-1].payload == events[-1].payload
    with pytest.raises(NotFound):
        await store.get_job(OTHER, "job-1")


# -- uploads through the application service -----------------------------------------------------


@pytest.fixture
async def service(store: Store, content: ArtifactContent) -> Artifacts:
    settings = Settings()
    sessions = SessionRegistry()
    orchestrator = Orchestrator(
        store=store,
        planner=Planner.from_settings(settings),
        queue=LocalWorkQueue(),
        bus=LocalEventBus(),
        directory=LocalAgentDirectory(sessions, replica_id="r1"),
        settings=settings,
        clock=lambda: datetime.now(UTC),
    )
    await create(store, new_job("job-1", todo("a")))
    await store.update_job(TENANT, "job-1", assigning("a"))
    return Artifacts(content=content, orchestrator=orchestrator, max_bytes=1_000_000)


def header(data: bytes, **changes: object) -> UploadHeader:
    base = UploadHeader(
        job_id="job-1",
        task_id="a",
        attempt=1,
        name="invoice.pdf",
        media_type="application/pdf",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def chunks_of(data: bytes, *, cut_after: int | None = None) -> AsyncIterator[bytes]:
    for index, start in enumerate(range(0, len(data), 100_000)):
        if cut_after is not None and index == cut_after:
            raise ConnectionResetError("the agent went away")
        yield data[start : start + 100_000]


Upload = Callable[..., Awaitable[object]]


async def test_an_upload_is_listed_only_once_complete_and_checked(
    service: Artifacts, content: ArtifactContent
) -> None:
    data = data_of(450_000, seed=5)
    digest = hashlib.sha256(data).hexdigest()
    # Cut off mid-way: nothing listed, no bytes kept.
    with pytest.raises(ConnectionResetError):
        await service.upload(TENANT, "agent-1", header(data), chunks_of(data, cut_after=2))
    # A digest mismatch: refused, nothing kept.
    with pytest.raises(InvalidArgument) as mismatch:
        await service.upload(TENANT, "agent-1", header(data, sha256="0" * 64), chunks_of(data))
    assert mismatch.value.reason is Reason.ARTIFACT_DIGEST_MISMATCH
    assert await service.list(TENANT, "job-1") == []
    assert not await content.exists(TENANT, digest)
    assert not await content.exists(TENANT, "0" * 64)
    # Whole and checked: listed and readable; another tenant finds no such job.
    job_id, stored = await service.upload(TENANT, "agent-1", header(data), chunks_of(data))
    assert job_id == "job-1"
    assert await service.list(TENANT, "job-1") == [stored]
    found, chunks = await service.open(TENANT, "job-1", stored.artifact_id)
    assert found == stored
    assert b"".join([c async for c in chunks]) == data
    with pytest.raises(NotFound) as foreign:
        await service.open(OTHER, "job-1", stored.artifact_id)
    assert foreign.value.reason is Reason.JOB_NOT_FOUND
