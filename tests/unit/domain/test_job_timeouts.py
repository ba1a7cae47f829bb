"""Server-side timeouts of one task: an attempt whose lease runs out past its timeout TIMED_OUT
(retried by its policy, its agent told to stop), before it was LOST; a QUEUED task no agent
takes within its schedule-to-start timeout fails, saying why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cpa_scheduler.domain import (
    AttemptRef,
    AttemptState,
    InvalidArgument,
    Job,
    JobOptions,
    JobSource,
    JobState,
    Reason,
    RetryPolicy,
    SourceKind,
    StaleAttempt,
    TaskError,
    TaskGraph,
    TaskState,
    ToDo,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
NO_JITTER = RetryPolicy(max_attempts=2, initial_backoff_s=1.0, jitter=0.0)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def make_job(*todos: ToDo) -> Job:
    job = Job.create(
        job_id="job-1",
        tenant="t",
        graph=TaskGraph.from_todos(todos),
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=4),
        now=NOW,
    )
    job.take_changes()
    return job


def started(job: Job, *, timeout_at: datetime | None) -> Job:
    job.assign("a", attempt=1, agent_id="ag", lease_until=at(15), now=NOW, timeout_at=timeout_at)
    job.take_changes()
    return job


# -- task timeout, enforced through the lease --------------------------------------------------


def test_the_lease_never_reaches_past_the_attempt_timeout() -> None:
    job = started(make_job(ToDo(id="a", action="wait", timeout_s=2)), timeout_at=at(3))
    assert job.tasks["a"].lease_until == at(3)
    assert job.tasks["a"].timeout_at == at(3)


def test_a_lease_ending_past_the_timeout_times_the_attempt_out_and_stops_it() -> None:
    todo = ToDo(id="a", action="wait", timeout_s=2, retry_policy=NO_JITTER)
    job = started(make_job(todo), timeout_at=at(3))
    job.lease_expired("a", attempt=1, max_redeliveries=3, now=at(3.5))
    task = job.tasks["a"]
    assert task.attempts[0].state is AttemptState.TIMED_OUT
    assert task.attempts[0].error is not None
    assert task.attempts[0].error.reason is Reason.TASK_TIMEOUT
    assert "timeout of 2 s" in task.attempts[0].error.message
    # Charged to the retry policy (not the redelivery bound), and retried after its backoff.
    assert (task.failures, task.losses) == (1, 0)
    assert task.state is TaskState.QUEUED
    assert task.next_attempt_time == at(4.5)
    assert task.timeout_at is None
    changes = job.take_changes()
    assert changes.cancels == [(AttemptRef("job-1", "a", 1), "ag")]
    assert changes.queued == ["a"]


def test_a_timeout_past_the_last_attempt_fails_the_job() -> None:
    todo = ToDo(id="a", action="wait", timeout_s=2, retry_policy=RetryPolicy(max_attempts=1))
    job = started(make_job(todo), timeout_at=at(3))
    job.lease_expired("a", attempt=1, max_redeliveries=3, now=at(3))
    assert job.state is JobState.FAILED
    assert job.dead_lettered
    assert job.error is not None
    # The code says what happened last, the reason why nothing more will be tried.
    assert (job.error.code, job.error.reason) == ("TASK_TIMEOUT", Reason.RETRIES_EXHAUSTED)


def test_a_lease_ending_before_the_timeout_is_a_lost_agent() -> None:
    job = started(make_job(ToDo(id="a", action="wait", timeout_s=60)), timeout_at=at(65))
    job.lease_expired("a", attempt=1, max_redeliveries=3, now=at(16))
    task = job.tasks["a"]
    assert task.attempts[0].state is AttemptState.LOST
    assert (task.failures, task.losses) == (0, 1)
    assert job.take_changes().cancels == []


def test_without_a_timeout_an_expired_lease_is_always_lost() -> None:
    job = started(make_job(ToDo(id="a", action="wait")), timeout_at=None)
    job.lease_expired("a", attempt=1, max_redeliveries=3, now=at(10_000))
    assert job.tasks["a"].attempts[0].state is AttemptState.LOST


def test_a_late_result_after_the_server_timed_the_attempt_out_is_stale() -> None:
    todo = ToDo(id="a", action="wait", timeout_s=2, retry_policy=NO_JITTER)
    job = started(make_job(todo), timeout_at=at(3))
    job.lease_expired("a", attempt=1, max_redeliveries=3, now=at(3))
    with pytest.raises(StaleAttempt):
        job.succeed("a", attempt=1, outputs={}, now=at(9))


# -- schedule-to-start ----------------------------------------------------------------------


def test_queued_tasks_get_their_start_by_time_and_lose_it_when_they_start() -> None:
    job = make_job(ToDo(id="a", action="click", schedule_to_start_s=30))
    assert job.tasks["a"].start_by == at(30)
    job.assign("a", attempt=1, agent_id="ag", lease_until=at(15), now=at(1))
    assert job.tasks["a"].start_by is None
    assert not job.miss_start("a", now=at(31), why="-")


def test_a_retry_waits_for_an_agent_from_the_end_of_its_backoff() -> None:
    todo = ToDo(id="a", action="click", schedule_to_start_s=30, retry_policy=NO_JITTER)
    job = make_job(todo)
    job.assign("a", attempt=1, agent_id="ag", lease_until=at(15), now=at(1))
    job.fail("a", attempt=1, error=TaskError(code="X", message="x", retryable=True), now=at(2))
    assert job.tasks["a"].next_attempt_time == at(3)
    assert job.tasks["a"].start_by == at(33)


def test_a_task_no_agent_takes_in_time_fails_and_names_what_is_missing() -> None:
    job = make_job(
        ToDo(id="a", action="click", schedule_to_start_s=30),
        ToDo(id="b", action="noop", depends_on=("a",)),
    )
    assert not job.miss_start("a", now=at(29), why="-")
    assert job.miss_start("a", now=at(30), why="no connected agent offers capability 'gpu'")
    task = job.tasks["a"]
    assert task.state is TaskState.FAILED
    assert task.error is not None
    assert (task.error.code, task.error.reason) == (
        "SCHEDULE_TO_START_TIMEOUT",
        Reason.SCHEDULE_TO_START_TIMEOUT,
    )
    assert "within 30 s" in task.error.message
    assert "capability 'gpu'" in task.error.message
    assert not task.error.retryable
    assert task.attempts == []
    assert job.tasks["b"].state is TaskState.SKIPPED
    assert job.state is JobState.FAILED
    assert job.dead_lettered
    # Once failed, a second sweep (another replica) changes nothing.
    job.take_changes()
    assert not job.miss_start("a", now=at(40), why="-")
    assert job.take_changes().events == []


def test_a_re_driven_job_gets_a_new_start_by_time() -> None:
    job = make_job(ToDo(id="a", action="click", schedule_to_start_s=30))
    job.miss_start("a", now=at(30), why="none")
    job.retry(now=at(100))
    assert job.tasks["a"].state is TaskState.QUEUED
    assert job.tasks["a"].start_by == at(130)


def test_schedule_to_start_must_be_positive_and_finite() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidArgument) as caught:
            ToDo(id="a", action="click", schedule_to_start_s=bad).validate()
        assert caught.value.field == "todo.schedule_to_start_timeout"
