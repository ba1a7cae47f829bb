"""A job deadline: when it passes, queued work is cancelled, running attempts are told to stop,
and the job ends FAILED with JOB_DEADLINE_EXCEEDED once they have stopped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cpa_scheduler.domain import (
    AttemptRef,
    AttemptState,
    Job,
    JobOptions,
    JobSource,
    JobState,
    Reason,
    SourceKind,
    TaskGraph,
    TaskState,
    ToDo,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
DEADLINE = NOW + timedelta(seconds=60)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def job_with_deadline(deadline: datetime | None = DEADLINE) -> Job:
    graph = TaskGraph.from_todos(
        [ToDo(id="a", action="wait"), ToDo(id="b", action="noop", depends_on=("a",))]
    )
    job = Job.create(
        job_id="job-1",
        tenant="t",
        graph=graph,
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=4, deadline=deadline),
        now=NOW,
    )
    job.take_changes()
    return job


def test_before_the_deadline_nothing_happens() -> None:
    job = job_with_deadline()
    assert not job.expire(now=at(59))
    assert job.take_changes().events == []
    assert not job_with_deadline(deadline=None).expire(now=at(10_000))


def test_queued_work_is_cancelled_and_the_job_fails_at_once_when_nothing_runs() -> None:
    job = job_with_deadline()
    assert job.expire(now=at(61))
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert (job.error.code, job.error.reason) == ("DEADLINE_EXCEEDED", Reason.JOB_DEADLINE_EXCEEDED)
    assert {t.state for t in job.tasks.values()} == {TaskState.CANCELLED}
    assert job.take_changes().events[-1].terminal
    assert not job.dead_lettered


def test_running_attempts_are_told_to_stop_and_the_job_fails_when_they_report() -> None:
    job = job_with_deadline()
    job.assign("a", attempt=1, agent_id="agent-1", lease_until=at(30), now=at(1))
    job.take_changes()
    assert job.expire(now=at(61))
    changes = job.take_changes()
    assert changes.cancels == [(AttemptRef("job-1", "a", 1), "agent-1")]
    assert job.is_terminal is False  # still waiting for the agent
    assert job.tasks["b"].state is TaskState.CANCELLED
    assert not job.expire(now=at(62))  # already being stopped: no second round
    job.hand_back("a", attempt=1, reason="stopped", now=at(63))
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.reason is Reason.JOB_DEADLINE_EXCEEDED
    assert job.tasks["a"].attempts[-1].state is AttemptState.CANCELLED


def test_a_user_cancel_still_ends_cancelled_and_retry_clears_the_reason() -> None:
    job = job_with_deadline()
    job.cancel(now=at(1))
    assert job.state is JobState.CANCELLED
    assert job.cancel_reason is Reason.CANCELLED_BY_USER
    assert not job.expire(now=at(61))  # ended: the deadline changes nothing
    job.retry(now=at(62))
    assert job.cancel_reason is None
    assert not job.cancel_requested
