"""CancelJob's reason over real sockets: recorded in the job's events and on the job, sent to the
agent (CancelAttempt.reason) and handed to the executor; bounded in length."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from cpa.common.v1 import error_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2
from cpa_agent import Agent, AgentSettings, ExecutionContext, builtin_registry
from cpa_client import CpaError, SchedulerClient

from .conftest import (
    EVENT_TIMEOUT_S,
    Scheduler,
    collect_events,
    finished,
    first_event,
    task_reached,
    todo,
    todos_spec,
)
from .raw_agent import RawAgentStream

REASON = "wrong invoice — ops ticket #42 ✓"


class _Holds:
    """Runs until cancelled, and keeps the cancel reason its context gave it then."""

    action = "hold"

    def __init__(self) -> None:
        self.cancelled_with: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_with.set_result(ctx.cancel_reason)
            raise
        return {}


async def test_a_cancel_reason_is_recorded_and_reaches_the_executor(
    scheduler: Scheduler, client: SchedulerClient
) -> None:
    holds = _Holds()
    registry = builtin_registry()
    registry.register(holds)
    agent = Agent(
        settings=AgentSettings(server=scheduler.target, agent_id="agent-1"), registry=registry
    )
    running = asyncio.create_task(agent.async_run())
    try:
        await asyncio.wait_for(agent.connected.wait(), EVENT_TIMEOUT_S)
        spec = todos_spec(todo("long", "hold"), todo("after", "noop", depends_on=["long"]))
        job_id = (await client.schedule_job(spec)).job.job_id
        await first_event(client, job_id, task_reached("long", job_pb2.TASK_STATE_RUNNING))

        answered = await client.cancel_job(job_id, reason=REASON)
        assert answered.cancel_requested
        assert answered.cancel_reason == REASON

        seen = await asyncio.wait_for(holds.cancelled_with, EVENT_TIMEOUT_S)
        assert seen == REASON
        job = await finished(client, job_id)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    assert job.cancel_reason == REASON
    events = await collect_events(client, job_id)
    requested = [e for e in events if e.WhichOneof("kind") == "job_cancel_requested"]
    assert [e.job_cancel_requested.reason for e in requested] == [REASON]
    # Recorded when the cancel was accepted: before the task changes it caused.
    after = next(e for e in events if e.task_state_changed.task_id == "after")
    assert requested[0].sequence < after.sequence
    assert after.task_state_changed.error.message == f"job cancelled: {REASON}"
    assert after.task_state_changed.error.reason == error_pb2.ERROR_REASON_CANCELLED_BY_USER


async def test_the_cancel_on_the_wire_carries_the_reason(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw")
    job_id, assignment = await raw_stream.assigned(client, todo("step", "noop"))
    await client.cancel_job(job_id, reason=REASON)
    cancel = (await raw_stream.read_until("cancel")).cancel
    assert (cancel.job_id, cancel.task_id, cancel.attempt) == (job_id, "step", assignment.attempt)
    assert cancel.reason == REASON
    # The agent stops and reports: the job ends CANCELLED, the reason kept.
    stopped = ex.Result(
        job_id=job_id,
        task_id="step",
        attempt=assignment.attempt,
        cancelled=True,
        error=error_pb2.TaskError(code="CANCELLED", message=cancel.reason),
    )
    raw_stream.send(ex.ConnectRequest(report_id=1, result=stopped))
    job = await finished(client, job_id)
    assert (job.state, job.cancel_reason) == (job_pb2.JOB_STATE_CANCELLED, REASON)


async def test_a_cancel_without_reason_says_job_cancelled(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw")
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    job_id = (await client.schedule_job(todos_spec(todo("step", "noop")))).job.job_id
    await raw_stream.read_until("assignment")
    assert (await client.cancel_job(job_id)).cancel_reason == ""
    assert (await raw_stream.read_until("cancel")).cancel.reason == "job cancelled"


async def test_a_reason_over_the_limit_is_refused_and_cancels_nothing(
    client: SchedulerClient,
) -> None:
    job_id = (await client.schedule_job(todos_spec(todo("step", "noop")))).job.job_id
    # The limit counts UTF-8 bytes: 513 two-byte letters are 1026 bytes.
    with pytest.raises(CpaError) as caught:
        await client.cancel_job(job_id, reason="é" * 513)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TOO_LARGE")
    assert [v.field for v in error.field_violations] == ["reason"]
    assert "é" not in error.message  # the value is not echoed
    job = await client.get_job(job_id)
    assert not job.cancel_requested
    # Exactly at the limit is accepted and kept whole.
    at_limit = "é" * 512
    assert (await client.cancel_job(job_id, reason=at_limit)).cancel_reason == at_limit


def _lam_cancel(job_id: str, reason: str) -> lam.LamMessage:
    return lam.LamMessage(
        id=f"cancel-{len(reason)}",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_CANCEL,
        cancel=lam.CancelBody(job_id=job_id, reason=reason),
    )


async def test_a_lam_cancel_records_its_reason_and_is_bounded_too(
    client: SchedulerClient,
) -> None:
    job_id = (await client.schedule_job(todos_spec(todo("step", "noop")))).job.job_id
    refused = await client.send_message(_lam_cancel(job_id, "x" * 1025))
    assert refused.performative == lam.PERFORMATIVE_REFUSE
    assert refused.refuse.reason == error_pb2.ERROR_REASON_PAYLOAD_TOO_LARGE
    assert refused.refuse.field == "cancel.reason"
    assert not (await client.get_job(job_id)).cancel_requested
    confirmed = await client.send_message(_lam_cancel(job_id, "customer withdrew"))
    assert confirmed.performative == lam.PERFORMATIVE_CONFIRM
    job = await client.get_job(job_id)
    assert (job.state, job.cancel_reason) == (job_pb2.JOB_STATE_CANCELLED, "customer withdrew")
