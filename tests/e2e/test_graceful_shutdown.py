"""The scheduler stopping gracefully (embedded): health NOT_SERVING, new agent streams refused with
UNAVAILABLE, connected agents drained (their results still committed), and stop() bounded by the
drain deadline even when an agent never ends its stream."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.server import SERVICE_NAMES, SchedulerServer
from cpa_scheduler.settings import Settings

from .conftest import (
    EVENT_TIMEOUT_S,
    Agents,
    Scheduler,
    collect_events,
    first_event,
    task_reached,
    todo,
    todos_spec,
)
from .raw_agent import RawAgentStream

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _job_after_restart(settings: Settings, job_id: str) -> job_pb2.Job:
    """The job as a new server on the same store sees it: what the stopped one made durable."""
    server = SchedulerServer(settings)
    port = await server.start("127.0.0.1:0")
    try:
        async with SchedulerClient(f"127.0.0.1:{port}", timeout_s=EVENT_TIMEOUT_S) as client:
            return await client.get_job(job_id)
    finally:
        await server.stop(grace_s=0, drain_s=0)


async def _refused_connect(target: str) -> CpaError:
    """Opens a new agent stream with a hello and returns how the server refused it."""
    hello = ex.ConnectRequest(hello=ex.Hello(agent_id="newcomer"))
    async with grpc.aio.insecure_channel(target) as channel:
        call = executor_service_pb2_grpc.ExecutorServiceStub(channel).Connect(iter([hello]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(call.read(), EVENT_TIMEOUT_S)
    return CpaError.from_rpc_error(refused.value)


async def test_stop_drains_a_busy_agent_commits_its_result_and_refuses_new_streams(
    scheduler: Scheduler,
    scheduler_settings: Settings,
    client: SchedulerClient,
    agents: Agents,
) -> None:
    drain_s = 30.0
    await agents.start("worker")
    spec = todos_spec(todo("slow", "wait", params={"seconds": 2.0}))
    job_id = (await client.schedule_job(spec)).job.job_id
    # Watching is a call in flight: it is served on through the drain, to the terminal event.
    events = asyncio.create_task(collect_events(client, job_id))
    await first_event(client, job_id, task_reached("slow", job_pb2.TASK_STATE_RUNNING))

    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == SERVING
        started = time.monotonic()
        stopping = asyncio.create_task(scheduler.server.stop(grace_s=1.0, drain_s=drain_s))

        changed = await asyncio.wait_for(watch.read(), EVENT_TIMEOUT_S)
        assert isinstance(changed, health_pb2.HealthCheckResponse)
        assert changed.status == NOT_SERVING
        for service in SERVICE_NAMES:
            check = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert check.status == NOT_SERVING, service
        refusal = await _refused_connect(scheduler.target)
        assert refusal.code == grpc.StatusCode.UNAVAILABLE
        assert refusal.reason == "SERVER_SHUTTING_DOWN"
        assert "this replica is shutting down" in refusal.message
        # All of that happened during the drain: the agent's attempt still runs.
        assert not stopping.done()

    terminal = (await events)[-1]
    assert terminal.job_state_changed.to_state == job_pb2.JOB_STATE_SUCCEEDED
    await asyncio.wait_for(stopping, drain_s + 5)
    elapsed_s = time.monotonic() - started
    # The drain ended when the agent, done, closed its stream, long before the deadline.
    assert elapsed_s < drain_s / 2, elapsed_s

    job = await _job_after_restart(scheduler_settings, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    (task,) = job.tasks
    assert [(a.agent_id, job_pb2.AttemptState.Name(a.state)) for a in task.attempts] == [
        ("worker", "ATTEMPT_STATE_SUCCEEDED")
    ]


async def test_a_stream_that_never_ends_is_closed_at_the_drain_deadline(
    scheduler: Scheduler,
    scheduler_settings: Settings,
    client: SchedulerClient,
    raw_stream: RawAgentStream,
) -> None:
    drain_s, grace_s = 1.5, 1.0
    await raw_stream.hello("stubborn")
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    job_id = (await client.schedule_job(todos_spec(todo("step", "noop")))).job.job_id
    assignment = (await raw_stream.read_until("assignment")).assignment

    started = time.monotonic()
    asked_at = datetime.now(UTC)
    stopping = asyncio.create_task(scheduler.server.stop(grace_s=grace_s, drain_s=drain_s))
    drain = (await raw_stream.read_until("drain")).drain
    assert "shutting down" in drain.reason
    deadline_in_s = (drain.deadline.ToDatetime(tzinfo=UTC) - asked_at).total_seconds()
    assert 0 < deadline_in_s <= drain_s + 0.5, deadline_in_s

    # A result reported during the drain is committed and acknowledged as usual.
    outputs = struct_pb2.Struct()
    outputs.update({"done": True})
    result = ex.Result(
        job_id=assignment.job_id,
        task_id=assignment.todo.id,
        attempt=assignment.attempt,
        outputs=outputs,
    )
    raw_stream.send(ex.ConnectRequest(report_id=1, result=result))
    ack = (await raw_stream.read_until("report_ack")).report_ack
    assert (ack.report_id, ack.accepted) == (1, True)

    # The 'agent' ignores the drain and keeps its stream open: the server ends it at the deadline.
    while await raw_stream.read() is not None:
        pass  # heartbeat acks and the like, until the server ends the stream
    await asyncio.wait_for(stopping, drain_s + grace_s + 10)
    elapsed_s = time.monotonic() - started
    assert drain_s - 0.1 <= elapsed_s <= drain_s + grace_s + 1.0, elapsed_s

    job = await _job_after_restart(scheduler_settings, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.agent_id for a in job.tasks[0].attempts] == ["stubborn"]


async def test_hurry_cuts_the_drain_and_the_grace_short(
    scheduler: Scheduler, raw_stream: RawAgentStream
) -> None:
    await raw_stream.hello("stubborn")
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        # A call that never ends by itself: it would hold the stop for the whole grace period.
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert isinstance(await watch.read(), health_pb2.HealthCheckResponse)
        started = time.monotonic()
        stopping = asyncio.create_task(scheduler.server.stop(grace_s=30.0, drain_s=30.0))
        await raw_stream.read_until("drain")
        scheduler.server.hurry()
        await asyncio.wait_for(stopping, 10)
    assert time.monotonic() - started < 5.0
