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
    JobStateChanged,
    Reason,
    SourceKind,
    TaskError,
    TaskGraph,
    TaskState,
    TaskStateChanged,
    ToDo,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
DEADLINE = NOW + timedelta(seconds=60)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def job_with_deadline(
    deadline: datetime | None = DEADLINE, *, timeout_s: float | None = None
) -> Job:
    graph = TaskGraph.from_todos(
        [
            ToDo(id="a", action="wait", timeout_s=timeout_s),
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
    attempt = job.tasks["a"].attempts[-1]
    assert attempt.state is AttemptState.CANCELLED
    # The agent obeyed the server's stop: the deadline's doing, recorded as such.
    assert attempt.error is not None
    assert attempt.error.reason is Reason.JOB_DEADLINE_EXCEEDED


def test_a_user_cancel_still_ends_cancelled_and_retry_clears_the_reason() -> None:
    job = job_with_deadline()
    job.cancel(now=at(1))
    assert job.state is JobState.CANCELLED
    assert job.cancel_reason is Reason.CANCELLED_BY_USER
    assert not job.expire(now=at(61))  # ended: the deadline changes nothing
    job.retry(now=at(62))
    assert job.cancel_reason is None
    assert not job.cancel_requested


# -- an attempt stopped at the deadline: the deadline's doing, not a task timeout -------------

# What an agent reports when it stops an attempt at the earlier of its timeout and the job
# deadline: older agents say TASK_TIMEOUT for both, newer ones say which.
AGENT_TIMEOUT = TaskError(
    code="TASK_TIMEOUT",
    message="attempt passed its deadline",
    retryable=True,
    reason=Reason.TASK_TIMEOUT,
)
AGENT_DEADLINE = TaskError(
    code="DEADLINE_EXCEEDED",
    message="attempt passed the job deadline",
    reason=Reason.JOB_DEADLINE_EXCEEDED,
)


def _assert_ended_by_the_deadline(job: Job, now: datetime) -> None:
    task = job.tasks["a"]
    attempt = task.attempts[-1]
    assert attempt.state is AttemptState.CANCELLED
    assert attempt.error is not None
    assert attempt.error.reason is Reason.JOB_DEADLINE_EXCEEDED
    assert task.state is TaskState.CANCELLED
    assert task.failures == 0  # nothing is charged, nothing is retried
    assert job.tasks["b"].state is TaskState.CANCELLED
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.reason is Reason.JOB_DEADLINE_EXCEEDED
    assert not job.dead_lettered
    events = [e.payload for e in job.take_changes().events]
    assert events[0] == TaskStateChanged(
        task_id="a",
        from_state=TaskState.RUNNING,
        to_state=TaskState.CANCELLED,
        attempt=1,
        error=attempt.error,
    )
    assert events[-1] == JobStateChanged(
        from_state=JobState.RUNNING, to_state=JobState.FAILED, error=job.error
    )
    assert all("TIMED_OUT" not in str(e) and "TASK_TIMEOUT" not in str(e) for e in events)


def test_a_timeout_reported_at_the_deadline_of_a_task_without_timeout_is_the_deadline() -> None:
    job = job_with_deadline()
    job.assign("a", attempt=1, agent_id="agent-1", lease_until=at(30), now=at(1))
    job.take_changes()
    # The agent stopped at the deadline before the sweep saw it pass.
    job.fail("a", attempt=1, error=AGENT_TIMEOUT, now=at(60))
    _assert_ended_by_the_deadline(job, at(60))


def test_a_timeout_reported_after_the_sweep_stopped_the_job_is_the_deadline() -> None:
    job = job_with_deadline()
    job.assign("a", attempt=1, agent_id="agent-1", lease_until=at(30), now=at(1))
    assert job.expire(now=at(61))
    job.take_changes()
    job.fail("a", attempt=1, error=AGENT_TIMEOUT, now=at(61))
    attempt = job.tasks["a"].attempts[-1]
    assert attempt.state is AttemptState.CANCELLED
    assert attempt.error is not None
    assert attempt.error.reason is Reason.JOB_DEADLINE_EXCEEDED
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.reason is Reason.JOB_DEADLINE_EXCEEDED


def test_a_deadline_reported_as_such_by_the_agent_is_the_deadline() -> None:
    job = job_with_deadline(timeout_s=600)
    job.assign("a", attempt=1, agent_id="agent-1", lease_until=at(30), now=at(1))
    job.take_changes()
    job.fail("a", attempt=1, error=AGENT_DEADLINE, now=at(60))
    _assert_ended_by_the_deadline(job, at(60))


def test_a_task_timeout_that_came_before_the_deadline_stays_a_timeout() -> None:
    job = job_with_deadline(timeout_s=10)
    job.assign("a", attempt=1, agent_id="agent-1", lease_until=at(30), now=at(1))
    job.take_changes()
    job.fail("a", attempt=1, error=AGENT_TIMEOUT, now=at(11))
    assert job.tasks["a"].attempts[-1].state is AttemptState.TIMED_OUT
    assert job.tasks["a"].state is TaskState.QUEUED  # the retry policy decides
    assert job.state is JobState.RUNNING


def test_a_timeout_whose_bound_lies_past_the_deadline_is_the_deadline() -> None:
    job = job_with_deadline(timeout_s=600)
    job.assign("a", attempt=1, agent_id="agent-1", lease_until=at(30), now=at(1))
    job.take_changes()
    job.fail("a", attempt=1, error=AGENT_TIMEOUT, now=at(60))
    _assert_ended_by_the_deadline(job, at(60))


def test_the_servers_own_timeout_past_the_deadline_is_the_deadline() -> None:
    job = job_with_deadline(timeout_s=100)
    # The server stops waiting at timeout + grace; the deadline (60) came before the timeout.
    job.assign(
        "a", attempt=1, agent_id="agent-1", lease_until=at(200), now=at(1), timeout_at=at(106)
    )
    job.take_changes()
    job.lease_expired("a", attempt=1, max_redeliveries=3, now=at(106))
    cancels = job.changes.cancels
    assert cancels == [(AttemptRef("job-1", "a", 1), "agent-1")]
    _assert_ended_by_the_deadline(job, at(106))
