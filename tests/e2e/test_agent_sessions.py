"""Who may speak for an attempt, and who may use an agent id: over real sockets, with raw agent
streams playing the honest agent, a second agent of the same tenant that forges reports, an
agent of another tenant that picked the same id, and a second process reusing a live id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2

from cpa.common.v1 import error_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient

from .conftest import Scheduler, finished, todo, todos_spec
from .raw_agent import RawAgentStream


@pytest.fixture
async def second_stream(scheduler: Scheduler) -> AsyncIterator[RawAgentStream]:
    stream = RawAgentStream(scheduler.target)
    try:
        yield stream
    finally:
        await stream.close()


def _outputs(**values: str) -> struct_pb2.Struct:
    outputs = struct_pb2.Struct()
    outputs.update(values)
    return outputs


async def test_reports_for_an_attempt_held_by_another_agent_are_refused(
    raw_stream: RawAgentStream, second_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("holder")
    await second_stream.hello("forger")  # same tenant, its own id
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    job_id = (await client.schedule_job(todos_spec(todo("t", "noop")))).job.job_id
    assignment = (await raw_stream.read_until("assignment")).assignment
    held = ex.RunningAttempt(job_id=job_id, task_id="t", attempt=assignment.attempt)

    # The forger reports progress and a result for the attempt it does not hold ...
    second_stream.send(
        ex.ConnectRequest(
            report_id=1,
            progress=ex.Progress(job_id=job_id, task_id="t", attempt=1, message="forged"),
        )
    )
    second_stream.send(
        ex.ConnectRequest(
            report_id=2,
            result=ex.Result(job_id=job_id, task_id="t", attempt=1, outputs=_outputs(who="forger")),
        )
    )
    acks: dict[int, tuple[bool, int]] = {}
    while len(acks) < 2:
        ack = (await second_stream.read_until("report_ack")).report_ack
        acks[ack.report_id] = (ack.accepted, ack.reason)
    refused = (False, error_pb2.ERROR_REASON_ATTEMPT_NOT_HELD)
    assert acks == {1: refused, 2: refused}
    # ... and claims it in a heartbeat: not renewed for it, and told it is not its attempt.
    assert list((await second_stream.heartbeat_ack(held)).stale_attempts) == [held]

    # Nothing changed: the task still runs on the holder, with no progress from the forger.
    job = await client.get_job(job_id)
    assert job.tasks[0].state == job_pb2.TASK_STATE_RUNNING
    assert [a.agent_id for a in job.tasks[0].attempts] == ["holder"]
    assert not list((await raw_stream.heartbeat_ack(held)).stale_attempts)

    # The holder completes the attempt with its own outputs.
    raw_stream.send(
        ex.ConnectRequest(
            report_id=1,
            result=ex.Result(job_id=job_id, task_id="t", attempt=1, outputs=_outputs(who="holder")),
        )
    )
    ack = (await raw_stream.read_until("report_ack")).report_ack
    assert ack.accepted
    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert dict(job.tasks[0].outputs) == {"who": "holder"}


async def test_an_agent_of_another_tenant_with_the_same_id_does_not_end_the_first(
    raw_stream: RawAgentStream, second_stream: RawAgentStream
) -> None:
    first = await raw_stream.hello("shared-id", tenant="tenant-a")
    second = await second_stream.hello("shared-id", tenant="tenant-b")

    assert first.session_id != second.session_id
    # Both streams live on: each gets its heartbeat answered.
    await raw_stream.heartbeat_ack()
    await second_stream.heartbeat_ack()


async def test_a_second_process_with_a_live_agent_id_is_refused(
    raw_stream: RawAgentStream, second_stream: RawAgentStream
) -> None:
    await raw_stream.hello("agent-1")

    second_stream.send_hello("agent-1")
    error = await second_stream.refusal()

    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "AGENT_ID_IN_USE")
    assert "agent-1" in error.message
    await raw_stream.heartbeat_ack()  # the live session is untouched


async def test_a_reconnecting_agent_takes_its_last_session_over(
    raw_stream: RawAgentStream,
    second_stream: RawAgentStream,
    scheduler: Scheduler,
    client: SchedulerClient,
) -> None:
    # The first stream holds an attempt, then goes silent (a cut without FIN, as far as the
    # server can tell); the agent reconnects naming that session and listing the attempt.
    old = await raw_stream.hello("agent-1")
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    job_id = (await client.schedule_job(todos_spec(todo("t", "noop")))).job.job_id
    assignment = (await raw_stream.read_until("assignment")).assignment
    held = ex.RunningAttempt(job_id=job_id, task_id="t", attempt=assignment.attempt)

    new = await second_stream.hello(
        "agent-1", running_attempts=[held], resume_session_id=old.session_id
    )

    assert list(new.adopted_attempts) == [held]
    assert await raw_stream.read() is None  # the old session was closed
    # A session taken over speaks for nothing any more; the new one completes the attempt.
    result = ex.Result(job_id=job_id, task_id="t", attempt=1)
    second_stream.send(ex.ConnectRequest(report_id=7, result=result))
    ack = (await second_stream.read_until("report_ack")).report_ack
    assert (ack.report_id, ack.accepted) == (7, True)
    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    # And the session chain holds: a hello naming the first session takes over the second.
    third = RawAgentStream(scheduler.target)
    try:
        await third.hello("agent-1", resume_session_id=old.session_id)
        assert await second_stream.read() is None
    finally:
        await third.close()
