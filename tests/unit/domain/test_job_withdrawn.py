"""Which tasks a change withdraws from the work queue: those that leave QUEUED untaken."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cpa_scheduler.domain import Job, JobOptions, JobSource, SourceKind, TaskGraph, ToDo

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _job(*, deadline: datetime | None = None) -> Job:
    graph = TaskGraph.from_todos(
        [
            ToDo(id="a", action="noop", schedule_to_start_s=10.0),
            ToDo(id="b", action="noop"),
            ToDo(id="c", action="noop", depends_on=("a",)),
        ]
    )
    return Job.create(
        job_id="job-1",
        tenant="t",
        graph=graph,
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=4, deadline=deadline),
        now=NOW,
    )


def test_cancel_withdraws_the_queued_tasks_not_the_running_or_pending_ones() -> None:
    job = _job()
    job.take_changes()
    job.assign("b", attempt=1, agent_id="agent-1", lease_until=NOW, now=NOW)
    job.take_changes()

    job.cancel(now=NOW, reason="r")

    changes = job.take_changes()
    assert changes.withdrawn == ["a"]  # b runs (told to stop), c was never queued
    assert changes.queued == []


def test_the_deadline_withdraws_the_queued_tasks() -> None:
    job = _job(deadline=NOW)
    job.take_changes()

    assert job.expire(now=NOW + timedelta(seconds=1))

    assert job.take_changes().withdrawn == ["a", "b"]


def test_a_task_not_started_in_time_is_withdrawn() -> None:
    job = _job()
    job.take_changes()

    assert job.miss_start("a", now=NOW + timedelta(seconds=11), why="no agent")

    assert job.take_changes().withdrawn == ["a"]


def test_a_task_queued_and_cancelled_in_one_change_is_neither_published_nor_withdrawn() -> None:
    job = _job()  # its creation's changes (a and b queued) are not taken yet

    job.cancel(now=NOW)

    changes = job.take_changes()
    assert (changes.queued, changes.withdrawn) == ([], [])
