"""A cancel's reason: recorded first in its own event, kept on the job, in the cancelled tasks'
errors, and what the agents of running attempts are told; a second cancel changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cpa_scheduler.domain import (
    AttemptRef,
    Job,
    JobCancelRequested,
    JobOptions,
    JobSource,
    SourceKind,
    TaskGraph,
    TaskStateChanged,
    ToDo,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _running_job(*, deadline: datetime | None = None, timeout_s: float | None = None) -> Job:
    graph = TaskGraph.from_todos(
        [
            ToDo(id="a", action="noop", timeout_s=timeout_s),
            ToDo(id="b", action="noop", depends_on=("a",)),
        ]
    )
    job = Job.create(
        job_id="job-1",
        tenant="t",
        graph=graph,
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=4, deadline=deadline),
        now=NOW,
    )
    job.assign("a", attempt=1, agent_id="agent-1", lease_until=NOW + timedelta(seconds=60), now=NOW)
    job.take_changes()
    return job


def test_the_reason_is_recorded_before_the_changes_it_causes() -> None:
    job = _running_job()

    job.cancel(now=NOW, reason="wrong invoice")

    events = [event.payload for event in job.take_changes().events]
    assert events[0] == JobCancelRequested(reason="wrong invoice")
    assert isinstance(events[1], TaskStateChanged)
    assert events[1].error is not None
    assert events[1].error.message == "job cancelled: wrong invoice"
    assert job.cancel_message == "wrong invoice"
    assert job.stop_message() == "wrong invoice"


def test_a_second_cancel_keeps_the_first_reason_and_records_nothing() -> None:
    job = _running_job()
    job.cancel(now=NOW, reason="first")
    job.take_changes()

    job.cancel(now=NOW, reason="second")

    assert job.take_changes().events == []
    assert job.cancel_message == "first"


def test_without_a_reason_agents_are_told_job_cancelled() -> None:
    job = _running_job()
    job.cancel(now=NOW)
    assert job.take_changes().events[0].payload == JobCancelRequested(reason="")
    assert job.stop_message() == "job cancelled"


def test_what_agents_are_told_when_the_deadline_or_a_timeout_stops_them() -> None:
    overdue = _running_job(deadline=NOW + timedelta(seconds=5))
    assert overdue.expire(now=NOW + timedelta(seconds=6))
    assert overdue.stop_message() == "the job deadline passed"

    slow = _running_job(timeout_s=1)
    slow.tasks["a"].timeout_at = NOW + timedelta(seconds=2)
    slow.lease_expired("a", attempt=1, max_redeliveries=3, now=NOW + timedelta(seconds=3))
    assert slow.take_changes().cancels == [(AttemptRef("job-1", "a", 1), "agent-1")]
    assert slow.stop_message() == "the attempt ran past its timeout"


def test_retry_clears_the_reason() -> None:
    job = _running_job()
    job.cancel(now=NOW, reason="oops")
    job.hand_back("a", attempt=1, reason="stopped", now=NOW)

    job.retry(now=NOW)

    assert (job.cancel_requested, job.cancel_message) == (False, "")
