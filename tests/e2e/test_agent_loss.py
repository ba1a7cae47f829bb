"""Agents that die or lag: leases expire, tasks run elsewhere, stale results are refused."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import grpc
import pytest

from cpa.common.v1 import agent_capabilities_pb2, error_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient

from .conftest import (
    EVENT_TIMEOUT_S,
    AgentProcesses,
    Agents,
    Scheduler,
    finished,
    first_event,
    task_reached,
    todo,
    todos_spec,
)


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


class RawAgentStream:
    """A hand-driven agent stream: the test decides what the 'agent' says and when."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._channel = grpc.aio.insecure_channel(scheduler.target)
        self._outgoing: asyncio.Queue[ex.ConnectRequest] = asyncio.Queue()
        stub = executor_service_pb2_grpc.ExecutorServiceStub(self._channel)
        self._call = stub.Connect(self._requests())

    async def _requests(self) -> AsyncIterator[ex.ConnectRequest]:
        while True:
            yield await self._outgoing.get()

    def send(self, request: ex.ConnectRequest) -> None:
        self._outgoing.put_nowait(request)

    async def read(self) -> ex.ConnectResponse:
        message = await asyncio.wait_for(self._call.read(), EVENT_TIMEOUT_S)
        assert isinstance(message, ex.ConnectResponse), message
        return message

    async def read_until(self, kind: str) -> ex.ConnectResponse:
        while (message := await self.read()).WhichOneof("kind") != kind:
            pass
        return message

    async def hello(self, agent_id: str) -> ex.ConnectResponse:
        capabilities = agent_capabilities_pb2.AgentCapabilities(actions=["noop"], slots=1)
        self.send(ex.ConnectRequest(hello=ex.Hello(agent_id=agent_id, capabilities=capabilities)))
        return await self.read_until("welcome")

    async def close(self) -> None:
        self._call.cancel()
        await self._channel.close(grace=None)


@pytest.fixture
async def raw_stream(scheduler: Scheduler) -> AsyncIterator[RawAgentStream]:
    stream = RawAgentStream(scheduler)
    try:
        yield stream
    finally:
        await stream.close()


async def test_a_slow_agent_past_its_lease_has_its_late_result_refused(
    raw_stream: RawAgentStream, client: SchedulerClient, agents: Agents
) -> None:
    await raw_stream.hello("slow")
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    response = await client.schedule_job(todos_spec(todo("step", "noop")))
    job_id = response.job.job_id
    assignment = (await raw_stream.read_until("assignment")).assignment
    assert (assignment.job_id, assignment.todo.id, assignment.attempt) == (job_id, "step", 1)
    # The slow agent sends no heartbeat: its lease expires and a live agent takes over.
    await agents.start("fast")
    job = await finished(client, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.agent_id for a in job.tasks[0].attempts] == ["slow", "fast"]

    late = ex.Result(job_id=job_id, task_id="step", attempt=1)
    raw_stream.send(ex.ConnectRequest(report_id=7, result=late))
    ack = (await raw_stream.read_until("report_ack")).report_ack
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
