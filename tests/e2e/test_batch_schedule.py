"""BatchScheduleJobs over real gRPC: every job of a batch runs, answers come in request order,
and a refused batch creates nothing (AIP-233: all or none)."""

from __future__ import annotations

import grpc
import pytest

from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2
from cpa_client import CpaError, SchedulerClient

from .conftest import Agents, finished, todo, todos_spec


def _request(request_id: str, task_id: str) -> scheduler_service_pb2.ScheduleJobRequest:
    return scheduler_service_pb2.ScheduleJobRequest(
        request_id=request_id,
        spec=todos_spec(todo(task_id, "echo", params={"request": request_id})),
    )


async def _job_ids(client: SchedulerClient) -> set[str]:
    return {job.job_id async for job in client.list_jobs()}


async def test_every_job_of_a_batch_runs_and_answers_keep_the_request_order(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    requests = [_request(f"req-{n}", f"task-{n}") for n in range(20)]

    responses = await client.batch_schedule_jobs(requests)

    assert [r.created for r in responses] == [True] * 20
    assert [r.job.tasks[0].todo.id for r in responses] == [f"task-{n}" for n in range(20)]
    assert len({r.job.job_id for r in responses}) == 20
    for n, response in enumerate(responses):
        done = await finished(client, response.job.job_id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED
        assert done.tasks[0].outputs["request"] == f"req-{n}"


async def test_a_repeated_batch_returns_the_same_jobs(client: SchedulerClient) -> None:
    requests = [_request(f"req-{n}", "a") for n in range(3)]
    first = await client.batch_schedule_jobs(requests)

    # The same batch again, plus one new request: the new one alone is created.
    again = await client.batch_schedule_jobs([*requests, _request("req-3", "a")])

    assert [r.created for r in again] == [False, False, False, True]
    assert [r.job.job_id for r in again[:3]] == [r.job.job_id for r in first]
    single = await client.schedule_job(requests[1].spec, request_id="req-1")
    assert (single.created, single.job.job_id) == (False, first[1].job.job_id)


async def test_a_batch_reusing_a_request_id_for_another_request_creates_nothing(
    client: SchedulerClient,
) -> None:
    taken = await client.schedule_job(todos_spec(todo("a", "noop")), request_id="req-1")
    before = await _job_ids(client)

    with pytest.raises(CpaError) as caught:
        await client.batch_schedule_jobs(
            [
                _request("req-0", "a"),
                todos_spec(todo("b", "noop")),
                _request("req-1", "different"),
            ]
        )

    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert error.metadata.get("field") == "requests[2].request_id"
    assert taken.job.job_id in error.message
    assert await _job_ids(client) == before
    # Nothing of the refused batch holds on to its request ids.
    retried = await client.batch_schedule_jobs([_request("req-0", "a")])
    assert retried[0].created


async def test_a_batch_with_a_bad_request_creates_none_of_the_good_ones(
    client: SchedulerClient,
) -> None:
    with pytest.raises(CpaError) as caught:
        await client.batch_schedule_jobs(
            [todos_spec(todo("a", "noop")), todos_spec(todo("b", "Not An Action"))]
        )

    assert caught.value.reason == "UNKNOWN_ACTION"
    assert caught.value.metadata.get("field") == "requests[1].spec.todos.todos[0].custom_action"
    assert await _job_ids(client) == set()
