"""Server-enforced timeouts over real sockets: a task no agent can take fails when its
schedule-to-start timeout passes, naming what is missing; an attempt whose agent keeps its
stream alive but never reports is timed out by the server, and its late result is refused."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import Agents, finished, todo, todos_spec
from .raw_agent import RawAgentStream

SERVER_GRACE_S = 0.5


@pytest.fixture
def scheduler_settings(scheduler_settings: Settings) -> Settings:
    return scheduler_settings.model_copy(update={"task_timeout_grace_s": SERVER_GRACE_S})


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


async def test_a_task_no_agent_can_take_fails_naming_the_missing_capability(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("cpu-only", capabilities=["browser"])
    spec = todos_spec(
        todo(
            "render",
            "noop",
            required_capabilities=["gpu"],
            schedule_to_start_timeout=seconds(1),
        ),
        todo("after", "noop", depends_on=["render"]),
    )
    job_id = (await client.schedule_job(spec)).job.job_id
    job = await finished(client, job_id)

    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.dead_lettered
    render, after = job.tasks
    assert render.state == job_pb2.TASK_STATE_FAILED
    assert render.error.reason == error_pb2.ERROR_REASON_SCHEDULE_TO_START_TIMEOUT
    assert render.error.code == "SCHEDULE_TO_START_TIMEOUT"
    assert "capability 'gpu'" in render.error.message
    assert "agent 'cpu-only' lacks capabilities gpu" in render.error.message
    assert list(render.attempts) == []
    assert after.state == job_pb2.TASK_STATE_SKIPPED


async def test_a_task_an_agent_takes_in_time_is_not_failed(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("gpu-box", capabilities=["gpu"])
    spec = todos_spec(
        todo("render", "noop", required_capabilities=["gpu"], schedule_to_start_timeout=seconds(5))
    )
    job = await finished(client, (await client.schedule_job(spec)).job.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_a_schedule_to_start_timeout_must_be_positive(client: SchedulerClient) -> None:
    spec = todos_spec(todo("x", "noop", schedule_to_start_timeout=seconds(-1)))
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(spec)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [
        "spec.todos.todos[0].schedule_to_start_timeout"
    ]


async def test_an_attempt_that_never_reports_is_timed_out_by_the_server(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("mute", actions=["wait"])
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    spec = todos_spec(
        todo(
            "stuck",
            "wait",
            params={"seconds": 60},
            timeout=seconds(0.5),
            retry_policy=todo_pb2.RetryPolicy(max_attempts=1),
        )
    )
    job_id = (await client.schedule_job(spec)).job.job_id
    assignment = (await raw_stream.read_until("assignment")).assignment
    running = ex.RunningAttempt(job_id=job_id, task_id="stuck", attempt=assignment.attempt)

    async def keep_heartbeating() -> None:
        # A live agent: its stream and heartbeats never stop, only its report never comes.
        while True:
            raw_stream.send(ex.ConnectRequest(heartbeat=ex.Heartbeat(running_attempts=[running])))
            await asyncio.sleep(0.1)

    heartbeats = asyncio.create_task(keep_heartbeating())
    try:
        cancel = (await raw_stream.read_until("cancel")).cancel
        assert (cancel.job_id, cancel.task_id, cancel.attempt) == (job_id, "stuck", 1)
        job = await finished(client, job_id)
    finally:
        heartbeats.cancel()

    assert job.state == job_pb2.JOB_STATE_FAILED
    (task,) = job.tasks
    (attempt,) = task.attempts
    assert attempt.state == job_pb2.ATTEMPT_STATE_TIMED_OUT
    assert attempt.error.reason == error_pb2.ERROR_REASON_TASK_TIMEOUT
    assert "the server stopped waiting" in attempt.error.message
    assert job.error.code == "TASK_TIMEOUT"

    # The result that finally comes is refused and changes nothing.
    late = ex.Result(job_id=job_id, task_id="stuck", attempt=1)
    raw_stream.send(ex.ConnectRequest(report_id=3, result=late))
    ack = (await raw_stream.read_until("report_ack")).report_ack
    assert (ack.report_id, ack.accepted, ack.reason) == (
        3,
        False,
        error_pb2.ERROR_REASON_STALE_ATTEMPT,
    )
    after = await client.get_job(job_id)
    assert (after.state, after.last_event_sequence) == (job.state, job.last_event_sequence)
