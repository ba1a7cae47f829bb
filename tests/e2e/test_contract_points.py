"""The contract points a client or agent author relies on (issue 15), each pinned over real
gRPC: how a ToDo's action is checked, that cancelling is idempotent, what a cancelled attempt's
Result carries, that only Credit grants work, when Assignment.deadline is absent, and what a
Progress report needs and does not do."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient

from .conftest import EVENT_TIMEOUT_S, collect_events, first_event, task_reached, todo, todos_spec
from .raw_agent import RawAgentStream


def _custom(name: str) -> todo_pb2.ToDo:
    return todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action=name)


@pytest.mark.parametrize(
    ("message", "reason", "field"),
    [
        # Unset is a missing field, as every unset required field is.
        (todo_pb2.ToDo(id="a"), "MISSING_FIELD", "action"),
        (
            todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CUSTOM),
            "MISSING_FIELD",
            "custom_action",
        ),
        (todo_pb2.ToDo(id="a", action=99), "UNKNOWN_ACTION", "action"),  # type: ignore[arg-type]
        (
            todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CLICK, custom_action="x"),
            "INVALID_FIELD",
            "custom_action",
        ),
        # The custom name rule: 1-63 of [a-z0-9_.-], starting with a letter, not a built-in.
        (_custom("Echo"), "UNKNOWN_ACTION", "custom_action"),
        (_custom("9lives"), "UNKNOWN_ACTION", "custom_action"),
        (_custom("a" * 64), "UNKNOWN_ACTION", "custom_action"),
        (_custom("send_mail"), "UNKNOWN_ACTION", "custom_action"),
    ],
    ids=[
        "unset",
        "custom-unnamed",
        "unknown-number",
        "name-without-custom",
        "upper-case",
        "digit-first",
        "64-long",
        "built-in-name",
    ],
)
async def test_a_todos_action_is_checked_as_documented(
    client: SchedulerClient, message: todo_pb2.ToDo, reason: str, field: str
) -> None:
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(todos_spec(message))
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), error.message
    assert [v.field for v in error.field_violations] == [f"spec.todos.todos[0].{field}"]


async def test_custom_names_within_the_rule_are_taken_verbatim(client: SchedulerClient) -> None:
    for name in ("a" * 63, "my.action-2_x", "z"):
        preview = await client.preview_plan(todos_spec(_custom(name)))
        assert [(t.action, t.custom_action) for t in preview.todos] == [
            (todo_pb2.ACTION_TYPE_CUSTOM, name)
        ]


def _lam_cancel(job_id: str, reason: str) -> lam.LamMessage:
    return lam.LamMessage(
        id=f"cancel-{reason}",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_CANCEL,
        cancel=lam.CancelBody(job_id=job_id, reason=reason),
    )


async def test_cancelling_a_cancelled_job_succeeds_and_changes_nothing(
    client: SchedulerClient,
) -> None:
    # No agent: the task is QUEUED, so the cancel ends the job at once.
    job_id = (await client.schedule_job(todos_spec(todo("a", "noop")))).job.job_id
    first = await client.cancel_job(job_id, reason="first")
    assert (first.state, first.cancel_reason) == (job_pb2.JOB_STATE_CANCELLED, "first")
    events = await collect_events(client, job_id)

    again = await client.cancel_job(job_id, reason="second")
    assert (again.state, again.cancel_reason) == (job_pb2.JOB_STATE_CANCELLED, "first")
    confirmed = await client.send_message(_lam_cancel(job_id, "third"))
    assert (confirmed.performative, confirmed.confirm.subject) == (
        lam.PERFORMATIVE_CONFIRM,
        job_id,
    )
    assert await collect_events(client, job_id) == events  # no event added
    assert (await client.get_job(job_id)).cancel_reason == "first"


async def test_a_job_that_ended_otherwise_cannot_be_cancelled(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw")
    job_id, assignment = await raw_stream.assigned(client, todo("a", "noop"))
    failed = ex.Result(
        job_id=job_id,
        task_id="a",
        attempt=assignment.attempt,
        error=error_pb2.TaskError(code="BROKEN", retryable=False),
    )
    raw_stream.send(ex.ConnectRequest(report_id=1, result=failed))
    await collect_events(client, job_id)
    with pytest.raises(CpaError) as caught:
        await client.cancel_job(job_id, reason="too late")
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
    )
    refused = await client.send_message(_lam_cancel(job_id, "too late"))
    assert refused.refuse.reason == error_pb2.ERROR_REASON_ILLEGAL_TRANSITION
    job = await client.get_job(job_id)
    assert (job.state, job.cancel_reason) == (job_pb2.JOB_STATE_FAILED, "")


async def test_a_cancelled_attempt_reports_cancelled_with_no_outcome_needed(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw")
    job_id, assignment = await raw_stream.assigned(client, todo("a", "noop"))
    await client.cancel_job(job_id, reason="stop")
    cancel = (await raw_stream.read_until("cancel")).cancel
    stopped = ex.Result(job_id=job_id, task_id="a", attempt=cancel.attempt, cancelled=True)
    raw_stream.send(ex.ConnectRequest(report_id=7, result=stopped))
    ack = (await raw_stream.read_until("report_ack")).report_ack
    assert (ack.report_id, ack.accepted) == (7, True)
    await collect_events(client, job_id)
    job = await client.get_job(job_id)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    (task,) = job.tasks
    assert task.state == job_pb2.TASK_STATE_CANCELLED
    assert [a.state for a in task.attempts] == [job_pb2.ATTEMPT_STATE_CANCELLED]
    assert assignment.attempt == cancel.attempt


async def test_an_attempt_stopped_unasked_goes_back_to_the_queue_uncharged(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw")
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    spec = todos_spec(todo("a", "noop", retry_policy=todo_pb2.RetryPolicy(max_attempts=1)))
    job_id = (await client.schedule_job(spec)).job.job_id
    first = (await raw_stream.read_until("assignment")).assignment
    stopped = ex.Result(job_id=job_id, task_id="a", attempt=first.attempt, cancelled=True)
    raw_stream.send(ex.ConnectRequest(report_id=1, result=stopped))
    # The result handed the slot back: the task comes again, though it allows one attempt.
    second = (await raw_stream.read_until("assignment")).assignment
    assert (second.job_id, second.attempt) == (job_id, first.attempt + 1)
    job = await client.get_job(job_id)
    assert job.state == job_pb2.JOB_STATE_RUNNING


async def test_a_report_for_an_unknown_job_or_task_is_refused_as_stale(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw")
    job_id = (await client.schedule_job(todos_spec(todo("a", "noop")))).job.job_id
    for report_id, (job, task) in enumerate([("no-such-job", "a"), (job_id, "ghost")], 1):
        result = ex.Result(job_id=job, task_id=task, attempt=1, cancelled=True)
        raw_stream.send(ex.ConnectRequest(report_id=report_id, result=result))
        ack = (await raw_stream.read_until("report_ack")).report_ack
        assert (ack.report_id, ack.accepted, ack.reason) == (
            report_id,
            False,
            error_pb2.ERROR_REASON_STALE_ATTEMPT,
        )


async def _free_credits(client: SchedulerClient, agent_id: str) -> int:
    (agent,) = [a async for a in client.list_agents() if a.agent_id == agent_id]
    return agent.free_credits


async def test_slots_in_the_hello_grant_no_work_only_credit_does(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw", slots=4)
    assert await _free_credits(client, "raw") == 0
    job_id = (await client.schedule_job(todos_spec(todo("a", "noop")))).job.job_id
    await first_event(client, job_id, task_reached("a", job_pb2.TASK_STATE_QUEUED))
    # The stream is read in order: by the heartbeat's ack nothing was sent for the job.
    raw_stream.send(ex.ConnectRequest(heartbeat=ex.Heartbeat()))
    before = await raw_stream.read()
    assert before is not None
    assert before.WhichOneof("kind") == "heartbeat_ack"
    assert (await client.get_job(job_id)).tasks[0].state == job_pb2.TASK_STATE_QUEUED

    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    assignment = (await raw_stream.read_until("assignment")).assignment
    assert assignment.job_id == job_id
    # Slots do bound the credit: never more outstanding than slots minus running attempts.
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=100)))
    await raw_stream.heartbeat_ack()
    assert await _free_credits(client, "raw") == 3


async def test_negative_credit_and_offers_change_nothing(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw", slots=2)
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=-5)))
    raw_stream.send(ex.ConnectRequest(offer=ex.Offer(cfp_id="x", available=True)))
    await raw_stream.heartbeat_ack()  # the stream lives, both were read
    assert await _free_credits(client, "raw") == 0
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    await raw_stream.heartbeat_ack()
    assert await _free_credits(client, "raw") == 1


async def test_the_assignment_deadline_is_absent_without_a_job_deadline(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw", slots=2)
    raw_stream.send(ex.ConnectRequest(credit=ex.Credit(slots=2)))
    await client.schedule_job(todos_spec(todo("free", "noop")))
    free = (await raw_stream.read_until("assignment")).assignment
    assert not free.HasField("deadline")

    deadline = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    spec = todos_spec(todo("bound", "noop"))
    spec.deadline.FromDatetime(deadline)
    await client.schedule_job(spec)
    bound = (await raw_stream.read_until("assignment")).assignment
    assert bound.deadline.ToDatetime(UTC) == deadline


async def test_progress_needs_no_report_id_and_does_not_renew_the_lease(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    await raw_stream.hello("raw")
    job_id, assignment = await raw_stream.assigned(client, todo("a", "noop"))

    def progress(**fields: Any) -> ex.Progress:
        return ex.Progress(job_id=job_id, task_id="a", attempt=assignment.attempt, **fields)

    # Without a report id: recorded, never acked.
    raw_stream.send(ex.ConnectRequest(progress=progress(percent=10, message="quiet")))
    event = await first_event(client, job_id, lambda e: e.task_progress.message == "quiet")
    assert event.task_progress.percent == 10

    # Progress alone, acked one by one, keeps coming while the lease runs out: the attempt is
    # lost all the same (only a Heartbeat renews a lease).
    lost = asyncio.create_task(first_event(client, job_id, lambda e: e.task_retry_scheduled.lost))
    report_id = 0
    while not lost.done():
        report_id += 1
        raw_stream.send(ex.ConnectRequest(report_id=report_id, progress=progress()))
        ack = (await raw_stream.read_until("report_ack")).report_ack
        if ack.accepted:
            assert ack.report_id == report_id
        else:  # the lease ran out between two reports: the attempt is no longer current
            assert ack.reason == error_pb2.ERROR_REASON_STALE_ATTEMPT
            break
    retry = (await asyncio.wait_for(lost, EVENT_TIMEOUT_S)).task_retry_scheduled
    assert (retry.task_id, retry.failed_attempt) == ("a", assignment.attempt)
    assert report_id > 1
