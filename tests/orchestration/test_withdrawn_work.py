"""Work that leaves QUEUED without being taken (cancelled, deadline passed, schedule-to-start
timeout) leaves the work queue too, in both modes: with no agent for its requirement, nobody
would ever take its entry. Over the real backends (SQLite + local queue, PostgreSQL + Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from cpa_scheduler.backends import Backends
from cpa_scheduler.dispatch import Requirement
from cpa_scheduler.domain import JobOptions, JobSource, JobState, SourceKind, TaskState, ToDo
from cpa_scheduler.orchestration import Orchestrator
from cpa_scheduler.planning import TodoRequest
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import migrate

from .conftest import Clock

TENANT = "acme"
# No agent offers this action here: only withdrawal can empty its queue.
TODO = ToDo(id="step", action="uia", schedule_to_start_s=30.0)


@pytest.fixture(params=["embedded", "distributed"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "embedded":
        yield Settings(data_dir=tmp_path)
        return
    database_url = request.getfixturevalue("postgres_database")
    migrate(database_url)
    yield Settings(
        data_dir=tmp_path,
        database_url=database_url,
        redis_url=request.getfixturevalue("redis_server_url"),
        redis_key_prefix=request.getfixturevalue("redis_prefix"),
    )


async def _queued_job(orchestrator: Orchestrator, clock: Clock, backends: Backends) -> str:
    job, _ = await orchestrator.submit(
        tenant=TENANT,
        plan=orchestrator.plan(TodoRequest([TODO]), context={}),
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=1, deadline=clock.now + timedelta(seconds=60)),
    )
    assert job.tasks["step"].state is TaskState.QUEUED
    assert await backends.queue.requirements() == [Requirement.of(TENANT, TODO)]
    return job.job_id


async def _assert_queue_empty(backends: Backends) -> None:
    assert await backends.queue.requirements() == []
    assert await backends.queue.take(Requirement.of(TENANT, TODO), 10) == []


async def test_a_cancelled_task_leaves_the_queue(
    orchestrator: Orchestrator, clock: Clock, backends: Backends
) -> None:
    job_id = await _queued_job(orchestrator, clock, backends)

    assert (await orchestrator.cancel(TENANT, job_id)).state is JobState.CANCELLED

    await _assert_queue_empty(backends)


async def test_a_task_not_started_in_time_leaves_the_queue(
    orchestrator: Orchestrator, clock: Clock, backends: Backends
) -> None:
    job_id = await _queued_job(orchestrator, clock, backends)
    clock.advance(31)

    assert await orchestrator.expire_unstarted_tasks() == 1

    assert (await orchestrator.get_job(TENANT, job_id)).state is JobState.FAILED
    await _assert_queue_empty(backends)


async def test_a_task_stopped_by_the_deadline_leaves_the_queue(
    orchestrator: Orchestrator, clock: Clock, backends: Backends
) -> None:
    job_id = await _queued_job(orchestrator, clock, backends)
    clock.advance(61)

    assert await orchestrator.expire_overdue_jobs() == 1

    assert (await orchestrator.get_job(TENANT, job_id)).state is JobState.FAILED
    await _assert_queue_empty(backends)


async def test_a_cancelled_job_retried_is_queued_again(
    orchestrator: Orchestrator, clock: Clock, backends: Backends
) -> None:
    job_id = await _queued_job(orchestrator, clock, backends)
    await orchestrator.cancel(TENANT, job_id)

    await orchestrator.retry(TENANT, job_id)

    [item] = await backends.queue.take(Requirement.of(TENANT, TODO), 10)
    assert (item.task.job_id, item.task.todo.id) == (job_id, "step")
