"""Dead letters over real sockets: jobs whose task exhausted its retries, found by ListJobs and
re-driven in bulk by RetryJobs (bounded, safe to repeat, per tenant)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa_client import CpaError, SchedulerClient

from .conftest import Agents, Scheduler, collect_events, finished, todo, todos_spec

DEAD_LETTERED = "dead_lettered = true"


async def _dead_lettered_job(client: SchedulerClient, name: str) -> S.Job:
    """A job whose one task fails retryably twice, exhausting max_attempts 2; a re-drive's
    attempt 3 succeeds."""
    flaky = todo(
        name,
        "fail",
        params={"code": "PORTAL_DOWN", "retryable": True, "until_attempt": 2},
        retry_policy=todo_pb2.RetryPolicy(
            max_attempts=2, initial_backoff=duration_pb2.Duration(nanos=10_000_000)
        ),
    )
    job = await finished(client, (await client.schedule_job(todos_spec(flaky))).job.job_id)
    assert (job.state, job.dead_lettered) == (S.JOB_STATE_FAILED, True)
    return job


async def _succeeded_after_re_drive(client: SchedulerClient, job: S.Job) -> S.Job:
    """The job once its re-driven run has ended."""
    await collect_events(client, job.job_id, after_sequence=job.last_event_sequence)
    return await client.get_job(job.job_id)


async def test_retry_jobs_re_drives_exactly_the_dead_lettered_jobs(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    succeeded = await finished(
        client, (await client.schedule_job(todos_spec(todo("ok", "echo")))).job.job_id
    )
    assert succeeded.state == S.JOB_STATE_SUCCEEDED
    dead = [await _dead_lettered_job(client, f"flaky{n}") for n in range(3)]
    # Cancelled, not dead-lettered: no agent offers the action, so it waits until cancelled.
    cancelled = await client.cancel_job(
        (await client.schedule_job(todos_spec(todo("never", "no_such_agent_action")))).job.job_id
    )
    assert cancelled.state == S.JOB_STATE_CANCELLED

    listed = [job async for job in client.list_jobs(filter=DEAD_LETTERED)]
    assert [job.job_id for job in listed] == [job.job_id for job in reversed(dead)]
    # The listing shows each job's last error: the task's, once its retries were exhausted.
    assert {(job.error.code, job.error.reason) for job in listed} == {
        ("PORTAL_DOWN", error_pb2.ERROR_REASON_RETRIES_EXHAUSTED)
    }

    response = await client.retry_jobs(filter=DEAD_LETTERED)

    assert list(response.job_ids) == [job.job_id for job in reversed(dead)]
    assert list(response.skipped_jobs) == []
    for job in dead:
        after = await _succeeded_after_re_drive(client, job)
        assert (after.state, after.retry_count, after.dead_lettered) == (
            S.JOB_STATE_SUCCEEDED,
            1,
            False,
        )
        assert [a.number for a in after.tasks[0].attempts] == [1, 2, 3]
    # Neither the succeeded nor the cancelled job was touched.
    for untouched in (succeeded, cancelled):
        now = await client.get_job(untouched.job_id)
        assert (now.state, now.retry_count, now.last_event_sequence) == (
            untouched.state,
            0,
            untouched.last_event_sequence,
        )
    # Safe to repeat: nothing is dead-lettered any more.
    again = await client.retry_jobs(filter=DEAD_LETTERED)
    assert (list(again.job_ids), list(again.skipped_jobs)) == ([], [])
    # Without a filter every FAILED or CANCELLED job is a candidate, and only those: here the
    # cancelled one. A dry run changes nothing.
    preview = await client.retry_jobs(dry_run=True)
    assert list(preview.job_ids) == [cancelled.job_id]
    assert (await client.get_job(cancelled.job_id)).state == S.JOB_STATE_CANCELLED


async def test_retry_jobs_takes_at_most_max_jobs_newest_first(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    dead = [await _dead_lettered_job(client, f"flaky{n}") for n in range(3)]
    newest_first = [job.job_id for job in reversed(dead)]

    preview = await client.retry_jobs(filter=DEAD_LETTERED, max_jobs=2, dry_run=True)
    assert list(preview.job_ids) == newest_first[:2]
    first = await client.retry_jobs(filter=DEAD_LETTERED, max_jobs=2)
    assert list(first.job_ids) == newest_first[:2]
    assert (await client.get_job(dead[0].job_id)).state == S.JOB_STATE_FAILED

    # Fewer than max_jobs taken: the last match was re-driven.
    rest = await client.retry_jobs(filter=DEAD_LETTERED, max_jobs=2)
    assert list(rest.job_ids) == [dead[0].job_id]
    for job in dead:
        assert (await _succeeded_after_re_drive(client, job)).state == S.JOB_STATE_SUCCEEDED


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        ({"filter": "dead_letterd = true"}, "INVALID_FILTER", "filter"),
        ({"filter": "dead_lettered = yes"}, "INVALID_FILTER", "filter"),
        # Valid for ListJobs, but no SUCCEEDED job can be re-driven.
        ({"filter": "state = SUCCEEDED"}, "INVALID_FILTER", "filter"),
        ({"max_jobs": 1001}, "INVALID_FIELD", "max_jobs"),
        ({"max_jobs": -1}, "INVALID_FIELD", "max_jobs"),
    ],
)
async def test_bad_retry_jobs_requests_name_the_field(
    client: SchedulerClient, fields: dict[str, object], reason: str, field: str
) -> None:
    with pytest.raises(CpaError) as caught:
        await client.retry_jobs(**fields)  # type: ignore[arg-type]
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert [violation.field for violation in error.field_violations] == [field]


async def test_retry_jobs_re_drives_only_the_callers_tenant(
    scheduler: Scheduler, agents: Agents
) -> None:
    await agents.start("acme-agent", tenant="acme")
    await agents.start("globex-agent", tenant="globex")
    async with (
        SchedulerClient(scheduler.target, metadata={"x-cpa-tenant": "acme"}) as acme,
        SchedulerClient(scheduler.target, metadata={"x-cpa-tenant": "globex"}) as globex,
    ):
        acme_job = await _dead_lettered_job(acme, "flaky")
        globex_job = await _dead_lettered_job(globex, "flaky")

        response = await globex.retry_jobs(filter=DEAD_LETTERED)

        assert list(response.job_ids) == [globex_job.job_id]
        assert (await _succeeded_after_re_drive(globex, globex_job)).state == (
            S.JOB_STATE_SUCCEEDED
        )
        still = await acme.get_job(acme_job.job_id)
        assert (still.state, still.dead_lettered, still.last_event_sequence) == (
            S.JOB_STATE_FAILED,
            True,
            acme_job.last_event_sequence,
        )
