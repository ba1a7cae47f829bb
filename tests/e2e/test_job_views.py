"""Answers that carry jobs fit a default client: views without duplicated payloads (AIP-157),
ListJobs pages bounded by bytes, and JSON nested as deep as accepted still decodes in every
reply. Every client here has gRPC's default limits (4 MiB receive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.api.proto_values import MAX_JSON_DEPTH
from cpa_scheduler.settings import Settings

from .conftest import HEARTBEAT_S, LEASE_S, Agents, finished, todo, todos_spec
from .raw_agent import RawAgentStream

MIB = 1024 * 1024
DEFAULT_CLIENT_RECEIVE_BYTES = 4 * MIB


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    # The defaults that matter here: max_request_bytes (4 MiB) and the ListJobs page budget.
    return Settings(
        data_dir=tmp_path / "data", lease_duration_s=LEASE_S, heartbeat_interval_s=HEARTBEAT_S
    )


def _blob_todo(task_id: str, size: int, **fields: Any) -> todo_pb2.ToDo:
    return todo(task_id, "echo", params={"blob": "x" * size}, **fields)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def _depth(value: Any) -> int:
    """Objects and arrays nested in a JSON value."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


async def test_a_2_2_mib_job_is_answered_once_within_the_default_client_limit(
    client: SchedulerClient,
) -> None:
    spec = todos_spec(_blob_todo("big", int(2.2 * MIB)))
    request_bytes = scheduler_service_pb2.ScheduleJobRequest(spec=spec).ByteSize()

    answer = await client.schedule_job(spec)  # BASIC: the payload is not sent back
    assert answer.created
    assert answer.ByteSize() < 4096
    assert not answer.job.tasks[0].todo.HasField("params")
    assert answer.job.spec.WhichOneof("source") == "todos"
    assert not answer.job.spec.todos.todos  # never repeated: the tasks hold the ToDos

    full = await client.get_job(answer.job.job_id)  # FULL: the payload once
    assert full.tasks[0].todo.params.fields["blob"].string_value == "x" * int(2.2 * MIB)
    assert request_bytes < full.ByteSize() < request_bytes + 1024
    basic = await client.get_job(answer.job.job_id, view=job_pb2.JOB_VIEW_BASIC)
    assert not basic.tasks[0].todo.HasField("params")

    # A repeat asked in FULL gets the job with its payload once, below the client's limit.
    again = await client.schedule_job(spec, request_id="", view=job_pb2.JOB_VIEW_FULL)
    assert again.ByteSize() < DEFAULT_CLIENT_RECEIVE_BYTES
    [batch] = await client.batch_schedule_jobs([spec])
    assert batch.ByteSize() < 4096


async def test_list_jobs_pages_stop_at_the_byte_budget(
    client: SchedulerClient, scheduler_settings: Settings
) -> None:
    budget = scheduler_settings.list_jobs_page_max_bytes
    job_ids = [
        (await client.schedule_job(todos_spec(_blob_todo("big", int(1.1 * MIB))))).job.job_id
        for _ in range(4)
    ]
    # 1.1 MiB each in FULL: two fit the 3 MiB budget, a third would pass it.
    pages: list[scheduler_service_pb2.ListJobsResponse] = []
    token = ""
    while True:
        page = await client._stub.ListJobs(
            scheduler_service_pb2.ListJobsRequest(
                page_size=100, page_token=token, view=job_pb2.JOB_VIEW_FULL
            )
        )
        pages.append(page)
        if not (token := page.next_page_token):
            break
    assert [len(page.jobs) for page in pages] == [2, 2]
    assert all(page.ByteSize() <= budget + 64 for page in pages)
    assert [job.job_id for page in pages for job in page.jobs] == job_ids[::-1]
    # BASIC pages are small: every job on one page.
    basic = await client._stub.ListJobs(scheduler_service_pb2.ListJobsRequest(page_size=100))
    assert len(basic.jobs) == 4
    assert not basic.next_page_token


async def test_a_job_larger_than_the_page_budget_comes_alone(
    client: SchedulerClient, scheduler_settings: Settings
) -> None:
    small = (await client.schedule_job(todos_spec(todo("a", "noop")))).job.job_id
    large_spec = todos_spec(_blob_todo("big", int(3.5 * MIB)))
    large = (await client.schedule_job(large_spec)).job.job_id
    assert large_spec.ByteSize() > scheduler_settings.list_jobs_page_max_bytes

    listed = [
        [job.job_id for job in page]
        async for page in _pages(client, view=job_pb2.JOB_VIEW_FULL, page_size=10)
    ]
    assert listed == [[large], [small]]


async def _pages(client: SchedulerClient, **fields: Any) -> Any:
    token = ""
    while True:
        page = await client._stub.ListJobs(
            scheduler_service_pb2.ListJobsRequest(page_token=token, **fields)
        )
        yield list(page.jobs)
        if not (token := page.next_page_token):
            return


async def test_the_deepest_accepted_json_decodes_in_every_reply(
    client: SchedulerClient, scheduler: Any, agents: Agents
) -> None:
    await agents.start("agent-1")
    deepest = _nested(MAX_JSON_DEPTH)
    spec = todos_spec(todo("a", "echo", params=deepest))
    spec.context.update(deepest)
    full = job_pb2.JOB_VIEW_FULL

    # Each reply is read by a client with gRPC's default limits.
    answer = await client.schedule_job(spec, view=full)
    assert _depth(_dict(answer.job.tasks[0].todo.params)) == MAX_JSON_DEPTH
    [batch] = await client.batch_schedule_jobs([spec], view=full)
    assert _depth(_dict(batch.job.spec.context)) == MAX_JSON_DEPTH

    done = await finished(client, answer.job.job_id)  # the agent decoded its assignment
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert _depth(_dict(done.tasks[0].outputs)) == MAX_JSON_DEPTH  # echo: outputs = params
    listed = [job async for job in client.list_jobs(view=full)]
    assert {job.job_id for job in listed} == {answer.job.job_id, batch.job.job_id}

    # One level more is refused at submission, naming the field.
    too_deep = todos_spec(todo("a", "echo", params=_nested(MAX_JSON_DEPTH + 1)))
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(too_deep)
    assert caught.value.reason == "NESTING_TOO_DEEP"
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def _dict(struct: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(struct)
    return result


async def test_cancel_and_retry_answer_basic_unless_asked_for_full(
    client: SchedulerClient,
) -> None:
    spec = todos_spec(todo("a", "noop", params={"blob": "x" * 1000}))
    spec.context.update({"who": "ops"})
    job_id = (await client.schedule_job(spec)).job.job_id  # no agent: the task stays QUEUED

    cancelled = await client.cancel_job(job_id)
    assert not cancelled.tasks[0].todo.HasField("params")
    assert not cancelled.spec.HasField("context")
    again = await client.cancel_job(job_id, view=job_pb2.JOB_VIEW_FULL)
    assert again.tasks[0].todo.params.fields["blob"].string_value == "x" * 1000
    assert again.spec.context.fields["who"].string_value == "ops"

    await finished(client, job_id)
    retried = await client.retry_job(job_id)
    assert not retried.tasks[0].todo.HasField("params")
    await client.cancel_job(job_id)
    await finished(client, job_id)
    full = await client.retry_job(job_id, view=job_pb2.JOB_VIEW_FULL)
    assert full.tasks[0].todo.params.fields["blob"].string_value == "x" * 1000

    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await client._stub.GetJob(scheduler_service_pb2.GetJobRequest(job_id=job_id, view=9))  # type: ignore[arg-type]
    error = CpaError.from_rpc_error(raw.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert error.metadata["field"] == "view"


async def test_an_agents_huge_error_message_is_clipped_at_intake(
    client: SchedulerClient, raw_stream: RawAgentStream
) -> None:
    """Every attempt's error is in every view of the job: 1 MiB messages from a few attempts
    would push even the BASIC answer past a default client's limit."""
    await raw_stream.hello("raw", actions=("noop",))
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    policy = todo_pb2.RetryPolicy(max_attempts=5, initial_backoff=duration_pb2.Duration(nanos=1))
    job_id = (
        await client.schedule_job(todos_spec(todo("a", "noop", retry_policy=policy)))
    ).job.job_id
    for report_id in range(1, 6):
        assignment = (await raw_stream.read_until("assignment")).assignment
        error = error_pb2.TaskError(code="E" * 10_000, message="m" * MIB, retryable=True)
        result = ex.Result(job_id=job_id, task_id="a", attempt=assignment.attempt, error=error)
        raw_stream.send(ex.ConnectRequest(report_id=report_id, result=result))
        assert (await raw_stream.read_until("report_ack")).report_ack.accepted
        raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))

    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert [len(a.error.message.encode()) <= 4096 for a in job.tasks[0].attempts] == [True] * 5
    assert all(len(a.error.code) <= 256 for a in job.tasks[0].attempts)
    assert job.ByteSize() < 64 * 1024
