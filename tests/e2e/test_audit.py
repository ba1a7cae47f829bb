"""The audit trail through the real gRPC server: state-changing calls, LAM messages and task
outcomes leave entries naming who, what, why and the result; refused calls too (bounded per
principal); ListAuditEntries filters and pages, and shows a tenant its own entries only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import audit_pb2, job_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import EVENT_TIMEOUT_S, Agents, Scheduler, finished, todo, todos_spec

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def tenant_client(scheduler: Scheduler, tenant: str, **metadata: str) -> SchedulerClient:
    return SchedulerClient(
        scheduler.target,
        metadata={"x-cpa-tenant": tenant, **metadata},
        timeout_s=EVENT_TIMEOUT_S,
    )


async def entries(client: SchedulerClient, **filters: object) -> list[audit_pb2.AuditEntry]:
    return [e async for e in client.list_audit_entries(**filters)]  # type: ignore[arg-type]


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    # Few refusals per principal, so the bound is reached quickly.
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=1.5,
        heartbeat_interval_s=0.2,
        audit_refusals_per_minute=3,
    )


async def test_schedule_cancel_retry_and_lam_leave_entries_with_who_what_why(
    scheduler: Scheduler,
) -> None:
    async with tenant_client(
        scheduler,
        "acme",
        **{"x-request-id": "req-42", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
    ) as acme:
        scheduled = await acme.schedule_job(todos_spec(todo("step", "wait", params={"s": 30})))
        job_id = scheduled.job.job_id
        await acme.cancel_job(job_id, reason="wrong invoice ✓")
        await finished(acme, job_id)
        await acme.retry_job(job_id)
        reply = await acme.send_message(
            lam.LamMessage(
                id="lam-1",
                sender="agent://ops-bot",
                performative=lam.PERFORMATIVE_CANCEL,
                cancel=lam.CancelBody(job_id=job_id, reason="by LAM"),
            )
        )
        assert reply.performative == lam.PERFORMATIVE_CONFIRM
        listed = await entries(acme, job_id=job_id)

    actions = [e.action for e in reversed(listed)]  # oldest first
    assert actions == ["ScheduleJob", "CancelJob", "RetryJob", "SendMessage.cancel"]
    schedule, cancel, retry, lam_cancel = reversed(listed)
    for entry in listed:
        assert (entry.tenant, entry.principal, entry.credential_kind) == (
            "acme",
            "local",
            "insecure_local",
        )
        assert entry.result_code == "OK"
        assert entry.job_id == job_id
        assert entry.trace_id == TRACE
        assert entry.request_id == "req-42"
        assert entry.peer.startswith("ipv")
    assert cancel.reason == "wrong invoice ✓"
    assert lam_cancel.reason == "by LAM"
    assert schedule.reason == retry.reason == ""  # explicit ToDos: no intent


async def test_a_lam_request_is_audited_with_its_intent_and_message_id(
    scheduler: Scheduler,
) -> None:
    async with tenant_client(scheduler, "acme") as acme:
        reply = await acme.send_message(
            lam.LamMessage(
                id="lam-req-7",
                sender="agent://ops-bot",
                performative=lam.PERFORMATIVE_REQUEST,
                request=lam.RequestBody(text="send a mail to ops@example.com about the audit"),
            )
        )
        assert reply.performative == lam.PERFORMATIVE_AGREE
        [entry] = await entries(acme, action="SendMessage.request")
    assert (entry.job_id, entry.request_id, entry.result_code, entry.reason) == (
        reply.agree.job_id,
        "lam-req-7",
        "OK",
        "send_mail",  # the intent the text was routed to
    )


async def test_a_task_outcome_is_audited_with_agent_attempt_and_error(
    scheduler: Scheduler, client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-9")
    ok = (await client.schedule_job(todos_spec(todo("say", "echo", params={"x": 1})))).job.job_id
    failing = todos_spec(todo("boom", "fail", params={"code": "LOGIN_FAILED", "message": "no"}))
    failed = (await client.schedule_job(failing)).job.job_id
    assert (await finished(client, ok)).state == job_pb2.JOB_STATE_SUCCEEDED
    assert (await finished(client, failed)).state == job_pb2.JOB_STATE_FAILED

    [success] = await entries(client, job_id=ok, action="TaskResult")
    assert (success.task_id, success.attempt, success.task_action, success.agent_id) == (
        "say",
        1,
        "echo",
        "agent-9",
    )
    assert (success.principal, list(success.roles), success.result_code) == (
        "agent:agent-9",
        ["agent"],
        "OK",
    )
    [failure] = await entries(client, job_id=failed, action="TaskResult")
    assert (failure.result_code, failure.result_message) == ("LOGIN_FAILED", "no")
    assert [e.job_id for e in await entries(client, result="LOGIN_FAILED")] == [failed]


async def test_refused_calls_are_audited_within_the_bound(scheduler: Scheduler) -> None:
    async with tenant_client(scheduler, "acme") as acme:
        with pytest.raises(CpaError) as unknown:
            await acme.cancel_job("no-such-job")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(CpaError):
            await acme.schedule_job(todos_spec(todo("a", "noop"), todo("a", "noop")))
        [invalid, not_found] = await entries(acme)
        assert (not_found.action, not_found.job_id, not_found.result_code) == (
            "CancelJob",
            "no-such-job",
            "NOT_FOUND",
        )
        assert not_found.result_reason == "JOB_NOT_FOUND"
        assert (invalid.action, invalid.result_code, invalid.result_reason) == (
            "ScheduleJob",
            "INVALID_ARGUMENT",
            "DUPLICATE_TASK_ID",
        )
        assert invalid.result_field.startswith("spec.todos"), invalid.result_field
        # A flood: at most 3 refusals of one principal per minute are written one by one.
        for _ in range(10):
            with pytest.raises(CpaError):
                await acme.retry_job("no-such-job")
        assert len(await entries(acme, action="RetryJob")) == 1
        assert len(await entries(acme)) == 3


async def test_another_tenant_sees_nothing_and_filters_and_pages_work(
    scheduler: Scheduler,
) -> None:
    async with (
        tenant_client(scheduler, "acme") as acme,
        tenant_client(scheduler, "intruder") as other,
    ):
        jobs = [
            (await acme.schedule_job(todos_spec(todo("a", "wait", params={"s": 30})))).job.job_id
            for _ in range(5)
        ]
        for job_id in jobs[:2]:
            await acme.cancel_job(job_id)
        everything = await entries(acme, page_size=2)
        assert len(everything) == 7
        times = [e.create_time.ToDatetime(tzinfo=UTC) for e in everything]
        assert times == sorted(times, reverse=True)
        assert len({e.entry_id for e in everything}) == 7
        assert [e.job_id for e in await entries(acme, action="CancelJob")] == jobs[1::-1]
        assert await entries(acme, principal="someone-else") == []
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert await entries(acme, start_time=later) == []
        assert len(await entries(acme, end_time=later)) == 7

        # The other tenant: nothing listed, even by job id.
        assert await entries(other) == []
        assert await entries(other, job_id=jobs[0]) == []
        # Nor can it use acme's page token.
        first = await acme._stub.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(page_size=1),
            metadata=(("x-cpa-tenant", "acme"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as stolen:
            await other._stub.ListAuditEntries(
                audit_pb2.ListAuditEntriesRequest(page_size=1, page_token=first.next_page_token),
                metadata=(("x-cpa-tenant", "intruder"),),
            )
        assert stolen.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "another tenant" in (stolen.value.details() or "")


async def test_bad_filters_name_their_field(client: SchedulerClient) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"job_id": "j" * 129}, "job_id", "INVALID_FIELD"),
        ({"principal": "p" * 257}, "principal", "INVALID_FIELD"),
        ({"action": "a" * 65}, "action", "INVALID_FIELD"),
        ({"result": "r" * 129}, "result", "INVALID_FIELD"),
        ({"start_time": start, "end_time": start}, "end_time", "INVALID_TIME_RANGE"),
        ({"page_size": -1}, "page_size", "INVALID_FIELD"),
    ]
    for filters, field, reason in cases:
        with pytest.raises(CpaError) as refused:
            await entries(client, **filters)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        fields = [v.field for v in refused.value.field_violations]
        assert (refused.value.reason, fields) == (reason, [field]), filters
    # A forged page token.
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await client._stub.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(page_token="eyJ2IjoyfQ")
        )
    assert forged.value.code() == grpc.StatusCode.INVALID_ARGUMENT
