"""A job deadline over real sockets: the running action is stopped on the agent and the job ends
FAILED with JOB_DEADLINE_EXCEEDED."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient

from .conftest import (
    Agents,
    collect_events,
    finished,
    first_event,
    task_reached,
    todo,
    todos_spec,
)


def _in(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return stamp


async def test_a_passed_deadline_stops_the_running_task_and_fails_the_job(
    client: SchedulerClient, agents: Agents
) -> None:
    agent = await agents.start("agent-1")
    spec = todos_spec(
        todo("long", "wait", params={"seconds": 60}),
        todo("after", "noop", depends_on=["long"]),
        deadline=_in(1.5),
    )
    job_id = (await client.schedule_job(spec)).job.job_id
    await first_event(client, job_id, task_reached("long", job_pb2.TASK_STATE_RUNNING))
    job = await asyncio.wait_for(finished(client, job_id), 15)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.reason == error_pb2.ERROR_REASON_JOB_DEADLINE_EXCEEDED
    assert job.error.code == "DEADLINE_EXCEEDED"
    states = {t.todo.id: job_pb2.TaskState.Name(t.state) for t in job.tasks}
    assert states == {"long": "TASK_STATE_CANCELLED", "after": "TASK_STATE_CANCELLED"}
    assert not agent.running_attempts


@pytest.mark.parametrize("timeout_s", [None, 30], ids=["no timeout", "timeout past the deadline"])
async def test_an_attempt_stopped_at_the_deadline_is_recorded_as_the_deadline_not_a_timeout(
    client: SchedulerClient, agents: Agents, timeout_s: int | None
) -> None:
    # The agent stops the action at the deadline itself (it is in the assignment), and usually
    # reports before the server's sweep sees the deadline pass: the record must say deadline.
    await agents.start("agent-1")
    long = todo("long", "wait", params={"seconds": 60})
    if timeout_s is not None:
        long.timeout.CopyFrom(duration_pb2.Duration(seconds=timeout_s))
    spec = todos_spec(long, deadline=_in(1.5))
    job_id = (await client.schedule_job(spec)).job.job_id
    await first_event(client, job_id, task_reached("long", job_pb2.TASK_STATE_RUNNING))
    job = await asyncio.wait_for(finished(client, job_id), 15)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.reason == error_pb2.ERROR_REASON_JOB_DEADLINE_EXCEEDED
    [task] = job.tasks
    [attempt] = task.attempts  # not retried
    assert job_pb2.AttemptState.Name(attempt.state) == "ATTEMPT_STATE_CANCELLED"
    assert attempt.error.reason == error_pb2.ERROR_REASON_JOB_DEADLINE_EXCEEDED
    assert task.state == job_pb2.TASK_STATE_CANCELLED
    events = await collect_events(client, job_id)
    kinds = {event.WhichOneof("kind") for event in events}
    assert "task_retry_scheduled" not in kinds
    for event in events:
        change = getattr(event, event.WhichOneof("kind") or "")
        if "error" in change.DESCRIPTOR.fields_by_name:
            assert change.error.reason != error_pb2.ERROR_REASON_TASK_TIMEOUT, event


def _lam_request(message_id: str, deadline: timestamp_pb2.Timestamp) -> lam.LamMessage:
    return lam.LamMessage(
        id=message_id,
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        correlation=lam.Correlation(conversation_id=f"conv-{message_id}"),
        expected=lam.Expectation(deadline=deadline),
        request=lam.RequestBody(todos=[todo("long", "wait", params={"seconds": 60})]),
    )


async def test_a_lam_expected_deadline_is_the_job_deadline(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    reply = await client.send_message(_lam_request("m-1", _in(1.5)))
    assert reply.performative == lam.PERFORMATIVE_AGREE
    job = await asyncio.wait_for(finished(client, reply.agree.job_id), 15)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.reason == error_pb2.ERROR_REASON_JOB_DEADLINE_EXCEEDED
    assert job.tasks[0].state == job_pb2.TASK_STATE_CANCELLED


async def test_a_lam_request_whose_deadline_passed_is_refused(client: SchedulerClient) -> None:
    reply = await client.send_message(_lam_request("m-2", _in(-1)))
    assert reply.performative == lam.PERFORMATIVE_REFUSE
    assert reply.refuse.field == "expected.deadline"
    assert "already passed" in reply.refuse.message
