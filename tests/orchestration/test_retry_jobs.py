"""Orchestrator.retry_jobs over the real embedded backends (SQLite, local queue and bus): pages
through the matches, counts skipped jobs against the bound, never takes a job twice."""

from __future__ import annotations

from cpa_scheduler.domain import JobFilter, JobOptions, JobSource, JobState, Reason, SourceKind
from cpa_scheduler.domain.todo import ToDo
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import TodoRequest

TENANT = "acme"
EVERY_JOB = JobFilter()


async def _job(orchestrator: Orchestrator, *, cancelled: bool, tenant: str = TENANT) -> str:
    """A job whose one task waits QUEUED (no agent runs here): PENDING, or CANCELLED."""
    plan = orchestrator.plan(TodoRequest([ToDo(id="step", action="noop")]), context={})
    job, _ = await orchestrator.submit(
        tenant=tenant,
        plan=plan,
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=1),
    )
    if cancelled:
        assert (await orchestrator.cancel(tenant, job.job_id)).state is JobState.CANCELLED
    return job.job_id


async def test_pages_through_every_match_and_takes_each_job_once(
    orchestrator: Orchestrator,
) -> None:
    cancelled = [await _job(orchestrator, cancelled=True) for _ in range(5)]

    # Re-driven jobs still match the empty filter: only the page position keeps them from
    # being taken again (they would be skipped, PENDING cannot be re-driven).
    retried, skipped = await orchestrator.retry_jobs(TENANT, EVERY_JOB, limit=100, batch=2)

    assert [job.job_id for job in retried] == cancelled[::-1]
    assert skipped == []
    assert {job.state for job in retried} == {JobState.PENDING}
    assert {job.retry_count for job in retried} == {1}


async def test_jobs_that_cannot_be_re_driven_are_skipped_and_count_against_the_limit(
    orchestrator: Orchestrator,
) -> None:
    # Oldest first: cancelled, pending, cancelled, pending, cancelled.
    ids = [await _job(orchestrator, cancelled=n % 2 == 0) for n in range(5)]
    newest_first = ids[::-1]

    retried, skipped = await orchestrator.retry_jobs(TENANT, EVERY_JOB, limit=3, batch=2)

    assert [job.job_id for job in retried] == [newest_first[0], newest_first[2]]
    assert [job_id for job_id, _ in skipped] == [newest_first[1]]
    assert skipped[0][1].reason is Reason.ILLEGAL_TRANSITION
    # Beyond the limit nothing changed.
    for job_id in newest_first[3:]:
        assert (await orchestrator.get_job(TENANT, job_id)).retry_count == 0


async def test_only_the_tenants_matching_jobs_are_re_driven(orchestrator: Orchestrator) -> None:
    mine = await _job(orchestrator, cancelled=True)
    theirs = await _job(orchestrator, cancelled=True, tenant="globex")
    await _job(orchestrator, cancelled=False)

    retried, skipped = await orchestrator.retry_jobs(
        TENANT, JobFilter(states=frozenset({JobState.CANCELLED})), limit=10
    )

    assert ([job.job_id for job in retried], skipped) == ([mine], [])
    assert (await orchestrator.get_job("globex", theirs)).state is JobState.CANCELLED
