"""Agents that die or lag: leases expire, tasks run elsewhere, stale results are refused."""

from __future__ import annotations

import signal

import grpc
import pytest

from cpa.common.v1 import error_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient

from .conftest import (
    AgentProcesses,
    Agents,
    Scheduler,
    finished,
    first_event,
    task_reached,
    todo,
    todos_spec,
)
from .raw_agent import RawAgentStream


async def test_killed_agent_task_runs_again_elsewhere_after_the_lease(
    client: SchedulerClient, agents: Agents, agent_processes: AgentProcesses
) -> None:
    response = await client.schedule_job(
        todos_spec(todo("export", "wait", params={"seconds": 1.0}, required_labels={"pool": "a"}))
    )
    job_id = response.job.job_id
    doomed = agent_processes.start("doomed", labels='{"pool": "a"}')
    running = await first_event(client, job_id, task_reached("export", job_pb2.TASK_STATE_RUNNING))
    assert running.task_state_changed.agent_id == "doomed"
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)

    await agents.start("survivor", labels={"pool": "a"})
    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    (task,) = job.tasks
    assert [(a.number, a.agent_id, job_pb2.AttemptState.Name(a.state)) for a in task.attempts] == [
        (1, "doomed", "ATTEMPT_STATE_LOST"),
        (2, "survivor", "ATTEMPT_STATE_SUCCEEDED"),
    ]
    assert task.attempts[0].error.code == "LOST"


async def test_a_slow_agent_past_its_lease_has_its_late_result_refused(
    raw_stream: RawAgentStream, scheduler: Scheduler, client: SchedulerClient, agents: Agents
) -> None:
    await raw_stream.hello("slow")
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    response = await client.schedule_job(todos_spec(todo("step", "noop")))
    job_id = response.job.job_id
    assignment = (await raw_stream.read_until("assignment")).assignment
    assert (assignment.job_id, assignment.todo.id, assignment.attempt) == (job_id, "step", 1)
    # The slow agent sends nothing: its lease expires and a live agent takes over; the server
    # closes the silent stream, so the slow agent gets no more work.
    await agents.start("fast")
    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.agent_id for a in job.tasks[0].attempts] == ["slow", "fast"]
    while await raw_stream.read() is not None:
        pass

    # Back on a new stream, the slow agent reports its attempt at last: refused.
    again = RawAgentStream(scheduler.target)
    try:
        await again.hello("slow")
        late = ex.Result(job_id=job_id, task_id="step", attempt=1)
        again.send(ex.ConnectRequest(report_id=7, result=late))
        ack = (await again.read_until("report_ack")).report_ack
    finally:
        await again.close()
    assert (ack.report_id, ack.accepted) == (7, False)
    assert ack.reason == error_pb2.ERROR_REASON_STALE_ATTEMPT
    # The refused result changed nothing.
    after = await client.get_job(job_id)
    assert after.state == job_pb2.JOB_STATE_SUCCEEDED
    assert after.last_event_sequence == job.last_event_sequence


async def test_heartbeat_tells_the_agent_which_attempts_are_stale(
    raw_stream: RawAgentStream,
) -> None:
    await raw_stream.hello("confused")
    ghost = ex.RunningAttempt(job_id="no-such-job", task_id="t", attempt=3)
    raw_stream.send(ex.ConnectRequest(heartbeat=ex.Heartbeat(running_attempts=[ghost])))
    ack = (await raw_stream.read_until("heartbeat_ack")).heartbeat_ack
    assert list(ack.stale_attempts) == [ghost]


async def test_a_stream_that_does_not_start_with_hello_is_refused(
    raw_stream: RawAgentStream,
) -> None:
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_stream.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message of a session must be a hello" in (caught.value.details() or "")
