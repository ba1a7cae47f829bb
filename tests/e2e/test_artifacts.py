"""Artifacts over real sockets (embedded scheduler, SQLite + files): an agent's executor stores
a file, a downstream task on another agent takes it by name and its agent checks the sha256;
uploads that lie, overflow, or come from the wrong session are refused and leave nothing; other
tenants see nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format

from cpa.common.v1 import artifact_pb2, error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from cpa_client import CpaError, SchedulerClient
from cpa_client.artifact_chunks import split
from cpa_scheduler.settings import Settings
from tests.fixtures.artifact_executors import artifact_registry, content

from .conftest import (
    EVENT_TIMEOUT_S,
    HEARTBEAT_S,
    LEASE_S,
    Agents,
    Scheduler,
    collect_events,
    finished,
    todo,
    todos_spec,
)
from .raw_agent import RawAgentStream

MAX_BYTES = 3 * 1024 * 1024
UPLOAD_IDLE_S = 1.5


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=LEASE_S,
        heartbeat_interval_s=HEARTBEAT_S,
        max_request_bytes=256 * 1024,
        artifact_max_bytes=MAX_BYTES,
        artifact_upload_idle_s=UPLOAD_IDLE_S,
    )


def artifact_input(task_id: str, name: str) -> todo_pb2.OutputReference:
    return todo_pb2.OutputReference(task_id=task_id, artifact_name=name)


async def test_an_artifact_flows_from_one_agent_to_a_task_on_another(
    client: SchedulerClient, agents: Agents, scheduler: Scheduler, tmp_path: Path
) -> None:
    # Two agents, each with one of the two actions: the file crosses agents via the scheduler.
    await agents.start("producer", registry=artifact_registry(), labels={"role": "producer"})
    await agents.start("consumer", registry=artifact_registry(), labels={"role": "consumer"})
    size = 2 * 1024 * 1024 + 17  # three chunks
    quick_retry = todo_pb2.RetryPolicy(
        max_attempts=2, initial_backoff=duration_pb2.Duration(nanos=1)
    )
    response = await client.schedule_job(
        todos_spec(
            todo(
                "make",
                "store_file",
                params={"name": "invoice.pdf", "size": size, "fail_first_attempt": True},
                required_labels={"role": "producer"},
                retry_policy=quick_retry,
            ),
            todo(
                "use",
                "read_file",
                depends_on=["make"],
                inputs={"doc": artifact_input("make", "invoice.pdf")},
                required_labels={"role": "consumer"},
            ),
        )
    )
    job_id = response.job.job_id

    events = await collect_events(client, job_id)
    job = await client.get_job(job_id)

    assert job.state == S.JOB_STATE_SUCCEEDED, job
    expected_sha = hashlib.sha256(content(size)).hexdigest()
    tasks = {task.todo.id: task for task in job.tasks}
    used = json_format.MessageToDict(tasks["use"].outputs)
    # The consumer's agent downloaded the bytes and they hash to what the producer stored.
    assert used == {
        "name": "invoice.pdf",
        "size": size,
        "sha256": expected_sha,
        "declared_sha256": expected_sha,
    }
    assert tasks["use"].attempts[0].agent_id == "consumer"
    # The failed attempt's screenshot stays listed, with its attempt.
    listed = [(a.task_id, a.attempt, a.name, a.size_bytes) for a in tasks["make"].artifacts]
    assert listed == [("make", 1, "failure.png", 25), ("make", 2, "invoice.pdf", size)]
    basic = await client.get_job(job_id, view=S.JOB_VIEW_BASIC)
    assert [a.name for t in basic.tasks for a in t.artifacts] == ["failure.png", "invoice.pdf"]
    assert all(a.job_id == job_id for t in basic.tasks for a in t.artifacts)
    # Stored events, in order, say when each became visible.
    stored = [e.task_artifact_stored for e in events if e.HasField("task_artifact_stored")]
    assert [(s.task_id, s.attempt, s.artifact.name) for s in stored] == [
        ("make", 1, "failure.png"),
        ("make", 2, "invoice.pdf"),
    ]

    artifacts = await client.list_artifacts(job_id)
    assert [a.artifact_id for a in artifacts] == [a.artifact_id for a in tasks["make"].artifacts]
    assert await client.list_artifacts(job_id, task_id="use") == []
    pdf = artifacts[1]
    target = tmp_path / "invoice.pdf"
    metadata = await client.download_artifact(job_id, pdf.artifact_id, target)
    assert metadata.sha256 == expected_sha
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected_sha
    # On disk: one file per content, private, beside the SQLite file.
    data_dir = scheduler.server.settings.data_dir
    files = [p for p in (data_dir / "artifacts").rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(
        [expected_sha, hashlib.sha256(b"\x89PNG the failure's screen").hexdigest()]
    )
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)


async def test_an_artifact_the_upstream_did_not_store_fails_the_task_unresolved(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1", registry=artifact_registry())
    response = await client.schedule_job(
        todos_spec(
            todo("make", "store_file", params={"name": "a.pdf", "size": 10}),
            todo(
                "use",
                "read_file",
                depends_on=["make"],
                inputs={"doc": artifact_input("make", "b.pdf")},
            ),
        )
    )
    job = await finished(client, response.job.job_id)
    assert job.state == S.JOB_STATE_FAILED
    use = next(t for t in job.tasks if t.todo.id == "use")
    assert use.error.reason == error_pb2.ERROR_REASON_UNRESOLVED_INPUT
    assert "did not store it (its artifacts: 'a.pdf')" in use.error.message
    assert not use.attempts  # it never ran


# -- uploads by hand: a raw agent stream holds a RUNNING attempt -----------------------------


class Held:
    """A raw agent that holds attempt 1 of task `t` of a job, and an upload stub."""

    def __init__(self, target: str, welcome: ex.Welcome, job_id: str) -> None:
        self.session_id = welcome.session_id
        self.job_id = job_id
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = executor_service_pb2_grpc.ExecutorServiceStub(self.channel)

    def header(self, data: bytes, **changes: object) -> ex.UploadArtifactHeader:
        fields: dict[str, object] = {
            "job_id": self.job_id,
            "task_id": "t",
            "attempt": 1,
            "session_id": self.session_id,
            "name": "shot.png",
            "media_type": "image/png",
            "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        fields.update(changes)
        return ex.UploadArtifactHeader(**fields)  # type: ignore[arg-type]

    async def upload(
        self, header: ex.UploadArtifactHeader, data: bytes, *, tenant: str = ""
    ) -> ex.UploadArtifactResponse:
        def requests() -> Iterator[ex.UploadArtifactRequest]:
            yield ex.UploadArtifactRequest(header=header)
            for chunk in split(data):
                yield ex.UploadArtifactRequest(chunk=chunk)

        metadata = (("x-cpa-tenant", tenant),) if tenant else ()
        try:
            return await self.stub.UploadArtifact(requests(), metadata=metadata)
        except grpc.aio.AioRpcError as error:
            raise CpaError.from_rpc_error(error) from None


@pytest.fixture
async def held(
    scheduler: Scheduler, client: SchedulerClient, raw_stream: RawAgentStream
) -> AsyncIterator[Held]:
    welcome = await raw_stream.hello("raw", actions=("noop",))
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    job_id = (await client.schedule_job(todos_spec(todo("t", "noop")))).job.job_id
    assignment = (await raw_stream.read_until("assignment")).assignment
    assert (assignment.job_id, assignment.attempt) == (job_id, 1)
    holder = Held(scheduler.target, welcome, job_id)
    try:
        yield holder
    finally:
        await holder.channel.close(grace=None)


async def test_a_held_attempt_uploads_and_a_second_save_of_a_name_replaces_the_first(
    held: Held, client: SchedulerClient
) -> None:
    first = await held.upload(held.header(b"one"), b"one")
    second = await held.upload(held.header(b"two"), b"two")
    listed = await client.list_artifacts(held.job_id)
    assert [(a.name, a.sha256) for a in listed] == [
        ("shot.png", hashlib.sha256(b"two").hexdigest())
    ]
    assert listed[0].artifact_id == second.artifact.artifact_id != first.artifact.artifact_id
    empty = await held.upload(held.header(b"", name="empty.txt", media_type=""), b"")
    assert empty.artifact.media_type == "application/octet-stream"
    metadata, data = await client.read_artifact(held.job_id, empty.artifact.artifact_id)
    assert (metadata.size_bytes, data) == (0, b"")


async def test_a_digest_mismatch_is_refused_and_stores_nothing(
    held: Held, client: SchedulerClient, scheduler: Scheduler
) -> None:
    data = content(1500)
    with pytest.raises(CpaError) as caught:
        await held.upload(held.header(data, sha256=hashlib.sha256(b"other").hexdigest()), data)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "ARTIFACT_DIGEST_MISMATCH"
    assert caught.value.metadata["field"] == "header.sha256"
    assert await client.list_artifacts(held.job_id) == []
    assert not _stored_files(scheduler)


async def test_over_the_size_limit_is_refused_with_nothing_stored(
    held: Held, client: SchedulerClient, scheduler: Scheduler
) -> None:
    data = content(MAX_BYTES + 1)
    # Declared over the limit: refused before a byte is read.
    with pytest.raises(CpaError) as caught:
        await held.upload(held.header(data), data)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason == "ARTIFACT_TOO_LARGE"
    assert caught.value.metadata["field"] == "header.size_bytes"
    # Declared small, sent large: refused when the bytes pass the declared size.
    with pytest.raises(CpaError) as caught:
        await held.upload(held.header(data[:10], sha256=hashlib.sha256(data).hexdigest()), data)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "ARTIFACT_SIZE_MISMATCH"
    # Declared larger than sent: incomplete.
    with pytest.raises(CpaError) as caught:
        await held.upload(held.header(data[:100], size_bytes=200), data[:100])
    assert caught.value.reason == "ARTIFACT_INCOMPLETE"
    assert caught.value.metadata["field"] == "header.size_bytes"
    assert await client.list_artifacts(held.job_id) == []
    assert not _stored_files(scheduler)


@pytest.mark.parametrize("sent_first", [0, 1, 2], ids=["nothing", "header", "one-chunk"])
async def test_an_upload_that_stops_sending_is_ended_and_stores_nothing(
    held: Held,
    client: SchedulerClient,
    scheduler: Scheduler,
    raw_stream: RawAgentStream,
    sent_first: int,
) -> None:
    # Two chunks declared, `sent_first` messages sent, then silence with the stream left open:
    # the server ends the call after the idle limit instead of holding it (and its buffer).
    data = content(2 * 1024 * 1024)
    messages = [ex.UploadArtifactRequest(header=held.header(data))] + [
        ex.UploadArtifactRequest(chunk=chunk) for chunk in split(data)
    ]
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[ex.UploadArtifactRequest]:
        for message in messages[:sent_first]:
            yield message
        await never.wait()

    running = ex.RunningAttempt(job_id=held.job_id, task_id="t", attempt=1)

    async def beating() -> None:  # the agent's stream stays alive meanwhile, as a real one does
        while True:
            await raw_stream.heartbeat_ack(running)
            await asyncio.sleep(HEARTBEAT_S)

    loop = asyncio.get_running_loop()
    started = loop.time()
    heartbeats = asyncio.create_task(beating())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await held.stub.UploadArtifact(stalled(), timeout=UPLOAD_IDLE_S + 20)
    finally:
        heartbeats.cancel()
    error = CpaError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_STALLED")
    assert loop.time() - started >= UPLOAD_IDLE_S - 0.1
    assert await client.list_artifacts(held.job_id) == []
    assert not _stored_files(scheduler)
    # The attempt may still upload: a stalled call leaves nothing behind that refuses it.
    await held.upload(held.header(data), data)
    assert [a.name for a in await client.list_artifacts(held.job_id)] == ["shot.png"]


async def test_an_upload_from_a_session_that_does_not_hold_the_attempt_is_refused(
    held: Held, client: SchedulerClient, scheduler: Scheduler
) -> None:
    other = RawAgentStream(scheduler.target)
    try:
        other_welcome = await other.hello("other", actions=("noop",))
        data = b"forged"
        # Another live session of the tenant: its agent does not hold the attempt.
        with pytest.raises(CpaError) as caught:
            await held.upload(held.header(data, session_id=other_welcome.session_id), data)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.reason == "ATTEMPT_NOT_HELD"
        # A made-up session.
        with pytest.raises(CpaError) as caught:
            await held.upload(held.header(data, session_id="f" * 32), data)
        assert caught.value.reason == "ATTEMPT_NOT_HELD"
        assert caught.value.metadata["field"] == "header.session_id"
        # The holder, but an attempt that is not the current one.
        with pytest.raises(CpaError) as caught:
            await held.upload(held.header(data, attempt=2), data)
        assert caught.value.reason == "STALE_ATTEMPT"
        # The holder's session id under another tenant's name: that tenant has no such job.
        with pytest.raises(CpaError) as caught:
            await held.upload(held.header(data), data, tenant="intruder")
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.reason == "ATTEMPT_NOT_HELD"
    finally:
        await other.close()
    assert await client.list_artifacts(held.job_id) == []


async def test_an_unknown_job_or_task_is_not_found_naming_the_header_field(
    held: Held, client: SchedulerClient
) -> None:
    """The refusal names the field of UploadArtifactHeader, not ListArtifacts' `job_id`."""
    data = b"x"
    for changes, reason, field in (
        ({"job_id": "no-such-job"}, "JOB_NOT_FOUND", "header.job_id"),
        ({"task_id": "no-such-task"}, "TASK_NOT_FOUND", "header.task_id"),
    ):
        with pytest.raises(CpaError) as caught:
            await held.upload(held.header(data, **changes), data)
        assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, reason)
        assert caught.value.metadata["field"] == field
    assert await client.list_artifacts(held.job_id) == []


async def test_another_tenant_can_neither_list_nor_download(
    held: Held, client: SchedulerClient, scheduler: Scheduler
) -> None:
    stored = (await held.upload(held.header(b"secret"), b"secret")).artifact
    async with SchedulerClient(
        scheduler.target, metadata={"x-cpa-tenant": "intruder"}, timeout_s=EVENT_TIMEOUT_S
    ) as intruder:
        with pytest.raises(CpaError) as listing:
            await intruder.list_artifacts(held.job_id)
        with pytest.raises(CpaError) as reading:
            await intruder.read_artifact(held.job_id, stored.artifact_id)
    # Exactly what a job that does not exist answers.
    with pytest.raises(CpaError) as missing:
        await client.list_artifacts("0" * 32)
    for error in (listing.value, reading.value):
        assert (error.code, error.reason) == (missing.value.code, missing.value.reason)
        assert error.reason == "JOB_NOT_FOUND"
    # An agent channel of the intruder tenant: the same.
    agent_call = held.stub.DownloadArtifact(
        ex.DownloadArtifactRequest(artifact_id=stored.artifact_id, job_id=held.job_id),
        metadata=(("x-cpa-tenant", "intruder"),),
    )
    with pytest.raises(grpc.aio.AioRpcError) as agent_error:
        async for _ in agent_call:
            pass
    assert agent_error.value.code() == grpc.StatusCode.NOT_FOUND
    # The owner reads it; an id the job does not list is ARTIFACT_NOT_FOUND.
    _, data = await client.read_artifact(held.job_id, stored.artifact_id)
    assert data == b"secret"
    with pytest.raises(CpaError) as unknown:
        await client.read_artifact(held.job_id, "0" * 32)
    assert (unknown.value.code, unknown.value.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "ARTIFACT_NOT_FOUND",
    )


def _stored_files(scheduler: Scheduler) -> list[Path]:
    root = scheduler.server.settings.data_dir / "artifacts"
    return [p for p in root.rglob("*") if p.is_file()]


async def test_artifacts_listed_in_progress_and_result_are_ignored(
    held: Held, client: SchedulerClient, raw_stream: RawAgentStream
) -> None:
    """Only UploadArtifact records artifacts: a Progress or Result that lists one the server
    never received (the contract says these fields are ignored) adds nothing to the task."""
    uploaded = await held.upload(held.header(b"real"), b"real")
    claimed = artifact_pb2.Artifact(name="claimed.pdf", size_bytes=9, sha256="0" * 64)
    progress = ex.Progress(job_id=held.job_id, task_id="t", attempt=1, message="half")
    progress.artifacts.append(claimed)
    raw_stream.send(ex.ConnectRequest(report_id=1, progress=progress))
    result = ex.Result(job_id=held.job_id, task_id="t", attempt=1)
    result.outputs.update({})
    result.artifacts.append(claimed)
    raw_stream.send(ex.ConnectRequest(report_id=2, result=result))

    job = await finished(client, held.job_id)
    assert job.state == S.JOB_STATE_SUCCEEDED
    (task,) = job.tasks
    assert [a.artifact_id for a in task.artifacts] == [uploaded.artifact.artifact_id]
    assert [a.name for a in await client.list_artifacts(held.job_id)] == ["shot.png"]


async def test_artifacts_are_listed_in_pages_that_miss_nothing_added_meanwhile(
    held: Held, client: SchedulerClient, scheduler: Scheduler
) -> None:
    names = [f"shot-{n}.png" for n in range(5)]
    for name in names:
        await held.upload(held.header(name.encode(), name=name), name.encode())
    channel = grpc.aio.insecure_channel(scheduler.target)
    stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)

    async def page(token: str = "", **fields: Any) -> scheduler_service_pb2.ListArtifactsResponse:
        fields = {"job_id": held.job_id, "page_size": 2, "page_token": token, **fields}
        request = scheduler_service_pb2.ListArtifactsRequest(**fields)
        try:
            return await stub.ListArtifacts(request)
        except grpc.aio.AioRpcError as error:
            raise CpaError.from_rpc_error(error) from None

    try:
        first = await page()
        # Stored between two pages: at the end of the task's list, so on a later page.
        await held.upload(held.header(b"late", name="late.png"), b"late")
        second = await page(first.next_page_token)
        third = await page(second.next_page_token)
        assert third.next_page_token == ""
        paged = [a.name for p in (first, second, third) for a in p.artifacts]
        assert paged == [*names, "late.png"]
        assert [len(p.artifacts) for p in (first, second, third)] == [2, 2, 2]
        # The SDK follows the pages itself.
        assert [a.name for a in await client.list_artifacts(held.job_id, page_size=4)] == paged
        # A token is bound to its job and task, its list and its tenant, and cannot be altered.
        await client.schedule_job(todos_spec(todo("other", "noop")))
        time_id_token = (
            await stub.ListJobs(scheduler_service_pb2.ListJobsRequest(page_size=1))
        ).next_page_token
        assert time_id_token
        refused = [
            page(first.next_page_token, task_id="t"),
            page(first.next_page_token[:-4] + "AAAA"),
            page(time_id_token),
        ]
        for call in refused:
            with pytest.raises(CpaError) as caught:
                await call
            assert caught.value.reason == "INVALID_PAGE_TOKEN"
            assert caught.value.metadata["field"] == "page_token"
        with pytest.raises(grpc.aio.AioRpcError) as other_tenant:
            await stub.ListArtifacts(
                scheduler_service_pb2.ListArtifactsRequest(
                    job_id=held.job_id, page_token=first.next_page_token
                ),
                metadata=(("x-cpa-tenant", "intruder"),),
            )
        assert CpaError.from_rpc_error(other_tenant.value).reason == "INVALID_PAGE_TOKEN"
        with pytest.raises(CpaError) as negative:
            await page(page_size=-1)
        assert (negative.value.reason, negative.value.metadata["field"]) == (
            "INVALID_FIELD",
            "page_size",
        )
    finally:
        await channel.close(grace=None)
