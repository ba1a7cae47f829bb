"""Job aggregate: states, attempts, fencing, retries, redelivery, cancel, re-drive, events, changes.

Every test drives a job through its public methods with a fixed clock and checks the exact
states, attempt records, events (numbered 1, 2, 3, ... per job; `terminal` only on a job's end)
and what `take_changes()` hands to storage and the orchestrator.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from cpa_scheduler.domain import (
    DEFAULT_RETRY_POLICY,
    Attempt,
    AttemptRef,
    AttemptState,
    DomainError,
    EventPayload,
    FailedPrecondition,
    Job,
    JobCancelRequested,
    JobChanges,
    JobEvent,
    JobOptions,
    JobSource,
    JobState,
    JobStateChanged,
    NotFound,
    Reason,
    RetryPolicy,
    SourceKind,
    StaleAttempt,
    TaskError,
    TaskGraph,
    TaskProgress,
    TaskRetryScheduled,
    TaskState,
    TaskStateChanged,
    ToDo,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=30)
JOB_ID = "job-1"
TENANT = "tenant-a"

# Backoff 2 s, 6 s, 18 s, ... without jitter, so next_attempt_time is exact.
NO_JITTER = RetryPolicy(
    max_attempts=3, initial_backoff_s=2.0, multiplier=3.0, max_backoff_s=100.0, jitter=0.0
)

CANCELLED_BY_USER = TaskError(
    code="CANCELLED", message="job cancelled", reason=Reason.CANCELLED_BY_USER
)

_JOB_TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


# -- helpers --------------------------------------------------------------------------------


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def todo(
    task_id: str,
    *depends_on: str,
    retry_policy: RetryPolicy | None = None,
    requires_approval: bool = False,
) -> ToDo:
    return ToDo(
        id=task_id,
        action="click",
        depends_on=depends_on,
        retry_policy=retry_policy,
        requires_approval=requires_approval,
    )


def err(
    code: str = "BOOM",
    message: str = "boom",
    *,
    retryable: bool = True,
    reason: Reason | None = None,
) -> TaskError:
    return TaskError(code=code, message=message, retryable=retryable, reason=reason)


def upstream_failed(task_id: str) -> TaskError:
    return TaskError(
        code="UPSTREAM_FAILED",
        message=f"not run: task {task_id!r} failed",
        reason=Reason.UPSTREAM_FAILED,
    )


def payloads(changes: JobChanges) -> list[EventPayload]:
    return [event.payload for event in changes.events]


def state_of(job: Job) -> JobState:
    """The job's state, read through a call so mypy does not narrow it for later asserts."""
    return job.state


def task_states(job: Job) -> dict[str, TaskState]:
    return {task_id: task.state for task_id, task in job.tasks.items()}


class Run:
    """A job plus every event it has produced, checked on each hand-over of changes."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.log: list[JobEvent] = []

    def take(self) -> JobChanges:
        """take_changes(), checking the events continue the job's numbering without a gap."""
        changes = self.job.take_changes()
        first = len(self.log) + 1
        assert [e.sequence for e in changes.events] == list(
            range(first, first + len(changes.events))
        )
        for event in changes.events:
            assert event.job_id == JOB_ID
            assert event.tenant == TENANT
        self.log.extend(changes.events)
        assert self.job.last_event_sequence == len(self.log)
        self._check_terminal_flags()
        return changes

    def _check_terminal_flags(self) -> None:
        for index, event in enumerate(self.log):
            payload = event.payload
            ends_job = isinstance(payload, JobStateChanged) and payload.to_state in _JOB_TERMINAL
            assert event.terminal == ends_job, event
            if event.terminal and index + 1 < len(self.log):
                # Only a re-drive (RetryJob) may follow a job's end.
                following = [
                    e.payload
                    for e in self.log[index + 1 :]
                    if isinstance(e.payload, JobStateChanged)
                ]
                assert following, self.log[index + 1 :]
                assert following[0].to_state is JobState.PENDING
        if self.log:
            assert self.log[-1].terminal == self.job.is_terminal

    def start(
        self,
        task_id: str,
        *,
        agent_id: str = "agent-1",
        now: datetime = NOW,
        lease_until: datetime = LEASE,
    ) -> int:
        """Assign the task's next attempt; return its number."""
        attempt = self.job.tasks[task_id].attempt + 1
        self.job.assign(
            task_id, attempt=attempt, agent_id=agent_id, lease_until=lease_until, now=now
        )
        return attempt

    def complete(self, task_id: str, *, now: datetime = NOW, **outputs: object) -> None:
        """Start the task's next attempt and let it succeed."""
        attempt = self.start(task_id, now=now)
        self.job.succeed(task_id, attempt=attempt, outputs=outputs, now=now)

    def attempt_of(self, task_id: str) -> int:
        return self.job.tasks[task_id].attempt


def make_job(
    *todos: ToDo,
    max_parallelism: int = 10,
    default_retry_policy: RetryPolicy | None = None,
    now: datetime = NOW,
) -> Job:
    return Job.create(
        job_id=JOB_ID,
        tenant=TENANT,
        graph=TaskGraph.from_todos(todos),
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(
            max_parallelism=max_parallelism, default_retry_policy=default_retry_policy
        ),
        now=now,
        intent="demo",
        request_id="req-1",
        request_fingerprint="fp",
        conversation_id="conv-1",
    )


def new_run(
    *todos: ToDo, max_parallelism: int = 10, default_retry_policy: RetryPolicy | None = None
) -> Run:
    """A job created at NOW; its creation changes are taken (checked, then dropped)."""
    run = Run(
        make_job(*todos, max_parallelism=max_parallelism, default_retry_policy=default_retry_policy)
    )
    run.take()
    return run


def assert_refused(
    run: Run, call: Callable[[], object], error: type[DomainError], reason: Reason
) -> DomainError:
    """`call` raises `error` with `reason` and leaves the job exactly as it was."""
    assert not run.job.take_changes().events, "take changes before checking a refusal"
    before = copy.deepcopy(run.job)
    with pytest.raises(error) as raised:
        call()
    assert raised.value.reason is reason
    assert run.job == before
    changes = run.take()
    assert changes == JobChanges()
    return raised.value


# -- create ---------------------------------------------------------------------------------


def test_create_queues_the_roots_of_a_pending_job() -> None:
    run = Run(make_job(todo("a"), todo("b", "a"), todo("c")))
    job = run.job

    assert job.state is JobState.PENDING
    assert (job.job_id, job.tenant, job.intent, job.request_id, job.conversation_id) == (
        JOB_ID,
        TENANT,
        "demo",
        "req-1",
        "conv-1",
    )
    assert (job.create_time, job.update_time, job.start_time, job.end_time) == (
        NOW,
        NOW,
        None,
        None,
    )
    assert task_states(job) == {
        "a": TaskState.QUEUED,
        "b": TaskState.PENDING,
        "c": TaskState.QUEUED,
    }
    assert job.tasks["a"].queue_time == NOW
    assert job.tasks["b"].queue_time is None
    for task in job.tasks.values():
        assert (task.attempt, task.attempts, task.failures, task.losses) == (0, [], 0, 0)
    assert (job.error, job.dead_lettered, job.cancel_requested, job.retry_count) == (
        None,
        False,
        False,
        0,
    )

    changes = run.take()
    assert payloads(changes) == [
        JobStateChanged(from_state=None, to_state=JobState.PENDING),
        TaskStateChanged(task_id="a", from_state=TaskState.PENDING, to_state=TaskState.QUEUED),
        TaskStateChanged(task_id="c", from_state=TaskState.PENDING, to_state=TaskState.QUEUED),
    ]
    assert [event.create_time for event in changes.events] == [NOW] * 3
    assert [event.terminal for event in changes.events] == [False] * 3
    assert changes.queued == ["a", "c"]
    assert changes.dirty_tasks == {"a", "b", "c"}
    assert changes.cancels == []
    assert job.last_event_sequence == 3


def test_take_changes_hands_over_once() -> None:
    run = Run(make_job(todo("a")))
    run.take()

    assert run.take() == JobChanges()


def test_parallelism_bound_queues_only_as_many_as_allowed() -> None:
    run = Run(make_job(*(todo(f"t{i}") for i in range(5)), max_parallelism=2))
    changes = run.take()

    assert changes.queued == ["t0", "t1"]
    assert task_states(run.job) == {
        "t0": TaskState.QUEUED,
        "t1": TaskState.QUEUED,
        "t2": TaskState.PENDING,
        "t3": TaskState.PENDING,
        "t4": TaskState.PENDING,
    }

    # Running still holds a slot.
    run.start("t0")
    assert run.take().queued == []

    run.job.succeed("t0", attempt=1, outputs={}, now=at(1))
    changes = run.take()
    assert changes.queued == ["t2"]
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="t0",
            from_state=TaskState.RUNNING,
            to_state=TaskState.SUCCEEDED,
            attempt=1,
            outputs={},
        ),
        TaskStateChanged(task_id="t2", from_state=TaskState.PENDING, to_state=TaskState.QUEUED),
    ]

    # A failed task frees its slot too.
    run.start("t1")
    run.job.fail("t1", attempt=1, error=err(retryable=False), now=at(2))
    assert run.take().queued == ["t3"]
    assert task_states(run.job)["t4"] is TaskState.PENDING


def test_a_retry_keeps_its_slot() -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER), todo("b"), max_parallelism=1)

    run.start("a")
    run.job.fail("a", attempt=1, error=err(), now=NOW)

    assert run.take().queued == ["a"]
    assert run.job.tasks["b"].state is TaskState.PENDING


def test_an_approval_root_waits_and_the_job_stays_pending() -> None:
    # A job that never ran cannot be WAITING_APPROVAL (PENDING -> WAITING_APPROVAL is illegal).
    run = Run(make_job(todo("g", requires_approval=True), todo("h", "g")))
    changes = run.take()

    assert run.job.state is JobState.PENDING
    assert task_states(run.job) == {"g": TaskState.WAITING_APPROVAL, "h": TaskState.PENDING}
    assert changes.queued == []
    assert payloads(changes) == [
        JobStateChanged(from_state=None, to_state=JobState.PENDING),
        TaskStateChanged(
            task_id="g", from_state=TaskState.PENDING, to_state=TaskState.WAITING_APPROVAL
        ),
    ]


def test_an_approval_task_puts_the_job_in_waiting_approval_when_nothing_else_can_run() -> None:
    run = new_run(todo("a"), todo("g", "a", requires_approval=True))
    run.start("a")
    run.take()

    run.job.succeed("a", attempt=1, outputs={}, now=at(1))

    changes = run.take()
    assert run.job.state is JobState.WAITING_APPROVAL
    assert task_states(run.job) == {"a": TaskState.SUCCEEDED, "g": TaskState.WAITING_APPROVAL}
    assert changes.queued == []
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.RUNNING,
            to_state=TaskState.SUCCEEDED,
            attempt=1,
            outputs={},
        ),
        TaskStateChanged(
            task_id="g", from_state=TaskState.PENDING, to_state=TaskState.WAITING_APPROVAL
        ),
        JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.WAITING_APPROVAL),
    ]
    assert not any(event.terminal for event in changes.events)


def test_tasks_behind_an_approval_do_not_keep_the_job_running() -> None:
    # g needs approval and h waits for g: with `a` done, nothing can run until someone approves.
    run = new_run(todo("a"), todo("g", requires_approval=True), todo("h", "g"))
    assert task_states(run.job) == {
        "a": TaskState.QUEUED,
        "g": TaskState.WAITING_APPROVAL,
        "h": TaskState.PENDING,
    }
    run.start("a")
    assert state_of(run.job) is JobState.RUNNING  # `a` can still run
    run.take()

    run.job.succeed("a", attempt=1, outputs={}, now=at(1))

    assert run.job.state is JobState.WAITING_APPROVAL
    assert payloads(run.take())[-1] == JobStateChanged(
        from_state=JobState.RUNNING, to_state=JobState.WAITING_APPROVAL
    )
    assert task_states(run.job)["h"] is TaskState.PENDING


def test_cancel_of_a_job_waiting_for_approval() -> None:
    run = new_run(todo("a"), todo("g", "a", requires_approval=True), todo("h", "g"))
    run.complete("a")
    run.take()

    run.job.cancel(now=at(5))

    changes = run.take()
    assert run.job.state is JobState.CANCELLED
    assert payloads(changes) == [
        JobCancelRequested(reason=""),
        TaskStateChanged(
            task_id="g",
            from_state=TaskState.WAITING_APPROVAL,
            to_state=TaskState.CANCELLED,
            error=CANCELLED_BY_USER,
        ),
        TaskStateChanged(
            task_id="h",
            from_state=TaskState.PENDING,
            to_state=TaskState.CANCELLED,
            error=CANCELLED_BY_USER,
        ),
        JobStateChanged(from_state=JobState.WAITING_APPROVAL, to_state=JobState.CANCELLED),
    ]
    assert changes.events[-1].terminal


# -- assign ---------------------------------------------------------------------------------


def test_assign_runs_the_task_and_starts_the_job_once() -> None:
    run = new_run(todo("a"), todo("b"))

    run.job.assign("a", attempt=1, agent_id="agent-1", lease_until=LEASE, now=at(1))

    task = run.job.tasks["a"]
    assert task.state is TaskState.RUNNING
    assert (task.attempt, task.agent_id, task.lease_until, task.start_time) == (
        1,
        "agent-1",
        LEASE,
        at(1),
    )
    assert task.attempts == [
        Attempt(number=1, agent_id="agent-1", state=AttemptState.RUNNING, start_time=at(1))
    ]
    assert run.job.state is JobState.RUNNING
    assert (run.job.start_time, run.job.update_time) == (at(1), at(1))
    changes = run.take()
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.QUEUED,
            to_state=TaskState.RUNNING,
            attempt=1,
            agent_id="agent-1",
        ),
        JobStateChanged(from_state=JobState.PENDING, to_state=JobState.RUNNING),
    ]
    assert changes.dirty_tasks == {"a"}
    assert (changes.queued, changes.cancels) == ([], [])

    run.job.assign("b", attempt=1, agent_id="agent-2", lease_until=LEASE, now=at(2))

    assert payloads(run.take()) == [
        TaskStateChanged(
            task_id="b",
            from_state=TaskState.QUEUED,
            to_state=TaskState.RUNNING,
            attempt=1,
            agent_id="agent-2",
        )
    ]
    assert run.job.start_time == at(1)


@pytest.mark.parametrize("attempt", [0, 2, 7])
def test_assign_with_the_wrong_attempt_number_is_stale(attempt: int) -> None:
    run = new_run(todo("a"))

    assert_refused(
        run,
        lambda: run.job.assign(
            "a", attempt=attempt, agent_id="agent-1", lease_until=LEASE, now=NOW
        ),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


def test_stale_attempt_is_a_failed_precondition() -> None:
    run = new_run(todo("a"))

    error = assert_refused(
        run,
        lambda: run.job.assign("a", attempt=2, agent_id="x", lease_until=LEASE, now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )
    assert isinstance(error, FailedPrecondition)


def test_assign_of_a_pending_task_is_stale() -> None:
    run = new_run(todo("a"), todo("b", "a"))

    assert_refused(
        run,
        lambda: run.job.assign("b", attempt=1, agent_id="x", lease_until=LEASE, now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


def test_assign_twice_is_stale() -> None:
    run = new_run(todo("a"))
    run.start("a")
    run.take()

    for attempt in (1, 2):
        assert_refused(
            run,
            lambda attempt=attempt: run.job.assign(  # type: ignore[misc]
                "a", attempt=attempt, agent_id="agent-2", lease_until=LEASE, now=NOW
            ),
            StaleAttempt,
            Reason.STALE_ATTEMPT,
        )


def test_assign_after_cancel_is_stale() -> None:
    run = new_run(todo("a"), todo("b"))
    run.start("a")
    run.job.cancel(now=NOW)
    run.take()

    assert run.job.tasks["b"].state is TaskState.CANCELLED
    assert_refused(
        run,
        lambda: run.job.assign("b", attempt=1, agent_id="x", lease_until=LEASE, now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


def test_assign_is_refused_while_a_cancel_is_requested_even_for_a_queued_task() -> None:
    # As storage might load it: the cancel is recorded, the task not yet moved.
    run = new_run(todo("a"))
    run.job.cancel_requested = True

    assert_refused(
        run,
        lambda: run.job.assign("a", attempt=1, agent_id="x", lease_until=LEASE, now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


def test_assign_before_the_backoff_has_passed_is_refused() -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER))
    run.start("a")
    run.job.fail("a", attempt=1, error=err(), now=at(10))
    run.take()
    assert run.job.tasks["a"].next_attempt_time == at(12)

    assert_refused(
        run,
        lambda: run.job.assign(
            "a",
            attempt=2,
            agent_id="x",
            lease_until=LEASE,
            now=at(12) - timedelta(microseconds=1),
        ),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )

    run.job.assign("a", attempt=2, agent_id="x", lease_until=LEASE, now=at(12))
    task = run.job.tasks["a"]
    assert (task.state, task.attempt, task.next_attempt_time) == (TaskState.RUNNING, 2, None)
    assert task.start_time == NOW  # the first attempt's start


# -- succeed --------------------------------------------------------------------------------


def test_succeed_stores_outputs_and_ends_the_attempt() -> None:
    run = new_run(todo("a"), todo("b"))
    run.start("a")
    run.take()
    outputs: dict[str, object] = {"pdf": "artifact://1", "pages": 3}

    run.job.succeed("a", attempt=1, outputs=outputs, now=at(4))
    outputs["pages"] = 99  # the job keeps its own copy

    task = run.job.tasks["a"]
    assert task.state is TaskState.SUCCEEDED
    assert task.outputs == {"pdf": "artifact://1", "pages": 3}
    assert (task.error, task.lease_until, task.end_time) == (None, None, at(4))
    assert task.attempts == [
        Attempt(
            number=1,
            agent_id="agent-1",
            state=AttemptState.SUCCEEDED,
            start_time=NOW,
            end_time=at(4),
        )
    ]
    changes = run.take()
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.RUNNING,
            to_state=TaskState.SUCCEEDED,
            attempt=1,
            outputs={"pdf": "artifact://1", "pages": 3},
        )
    ]
    assert changes.dirty_tasks == {"a"}
    assert run.job.state is JobState.RUNNING  # b is still queued


def test_diamond_join_waits_for_both_branches_and_the_job_succeeds() -> None:
    run = Run(make_job(todo("a"), todo("b", "a"), todo("c", "a"), todo("d", "b", "c")))
    assert run.take().queued == ["a"]

    run.complete("a", now=at(1))
    assert run.take().queued == ["b", "c"]

    run.complete("b", now=at(2))
    changes = run.take()
    assert changes.queued == []
    assert run.job.tasks["d"].state is TaskState.PENDING

    run.complete("c", now=at(3))
    assert run.take().queued == ["d"]
    assert state_of(run.job) is JobState.RUNNING

    attempt = run.start("d", now=at(4))
    run.take()
    run.job.succeed("d", attempt=attempt, outputs={"done": True}, now=at(5))

    changes = run.take()
    assert run.job.state is JobState.SUCCEEDED
    assert (run.job.end_time, run.job.error, run.job.dead_lettered) == (at(5), None, False)
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="d",
            from_state=TaskState.RUNNING,
            to_state=TaskState.SUCCEEDED,
            attempt=1,
            outputs={"done": True},
        ),
        JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.SUCCEEDED),
    ]
    assert [event.terminal for event in changes.events] == [False, True]
    assert [event.sequence for event in run.log] == list(range(1, len(run.log) + 1))
    assert [event.terminal for event in run.log].count(True) == 1
    assert run.log[-1].terminal


def test_a_single_task_job_lifecycle_in_events() -> None:
    run = Run(make_job(todo("a")))
    run.complete("a", now=at(1), answer=42)
    run.take()

    assert [(event.sequence, event.payload, event.terminal) for event in run.log] == [
        (1, JobStateChanged(from_state=None, to_state=JobState.PENDING), False),
        (
            2,
            TaskStateChanged(task_id="a", from_state=TaskState.PENDING, to_state=TaskState.QUEUED),
            False,
        ),
        (
            3,
            TaskStateChanged(
                task_id="a",
                from_state=TaskState.QUEUED,
                to_state=TaskState.RUNNING,
                attempt=1,
                agent_id="agent-1",
            ),
            False,
        ),
        (4, JobStateChanged(from_state=JobState.PENDING, to_state=JobState.RUNNING), False),
        (
            5,
            TaskStateChanged(
                task_id="a",
                from_state=TaskState.RUNNING,
                to_state=TaskState.SUCCEEDED,
                attempt=1,
                outputs={"answer": 42},
            ),
            False,
        ),
        (6, JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.SUCCEEDED), True),
    ]
    assert all(event.create_time == at(1) for event in run.log[2:])


def test_a_result_for_an_old_attempt_is_refused() -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER))
    run.start("a")
    run.job.fail("a", attempt=1, error=err(), now=NOW)
    run.start("a", now=at(2))
    run.take()

    assert_refused(
        run,
        lambda: run.job.succeed("a", attempt=1, outputs={"late": True}, now=at(3)),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


@pytest.mark.parametrize("attempt", [0, 2])
def test_succeed_of_another_attempt_number_is_refused(attempt: int) -> None:
    run = new_run(todo("a"))
    run.start("a")
    run.take()

    assert_refused(
        run,
        lambda: run.job.succeed("a", attempt=attempt, outputs={}, now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


def test_succeed_of_a_queued_or_finished_task_is_refused() -> None:
    run = new_run(todo("a"), todo("b"))
    run.complete("a")
    run.take()

    for task_id in ("a", "b"):
        assert_refused(
            run,
            lambda task_id=task_id: run.job.succeed(  # type: ignore[misc]
                task_id, attempt=1, outputs={}, now=NOW
            ),
            StaleAttempt,
            Reason.STALE_ATTEMPT,
        )


# -- fail -----------------------------------------------------------------------------------


def test_a_retryable_failure_is_queued_again_after_the_backoff() -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER))
    run.start("a")
    run.take()
    error = err("HTTP_503", "portal down")

    run.job.fail("a", attempt=1, error=error, now=at(10))

    task = run.job.tasks["a"]
    assert task.state is TaskState.QUEUED
    assert (task.failures, task.losses, task.attempt) == (1, 0, 1)
    assert task.next_attempt_time == at(12)
    assert (task.lease_until, task.queue_time, task.error) == (None, at(10), None)
    assert task.attempts == [
        Attempt(
            number=1,
            agent_id="agent-1",
            state=AttemptState.FAILED,
            start_time=NOW,
            end_time=at(10),
            error=error,
        )
    ]
    changes = run.take()
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.RUNNING,
            to_state=TaskState.QUEUED,
            attempt=1,
            error=error,
        ),
        TaskRetryScheduled(
            task_id="a", failed_attempt=1, next_attempt_time=at(12), error=error, lost=False
        ),
    ]
    assert changes.queued == ["a"]
    assert changes.dirty_tasks == {"a"}
    assert run.job.state is JobState.RUNNING

    # The second failure waits initial * multiplier.
    run.start("a", now=at(12))
    run.job.fail("a", attempt=2, error=error, now=at(20))
    assert run.job.tasks["a"].next_attempt_time == at(26)
    assert payloads(run.take())[-1] == TaskRetryScheduled(
        task_id="a", failed_attempt=2, next_attempt_time=at(26), error=error
    )


def test_jitter_draws_from_the_given_random_source() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=10.0, max_backoff_s=100.0, jitter=0.5)
    run = new_run(todo("a", retry_policy=policy))
    run.start("a")

    run.job.fail("a", attempt=1, error=err(), now=NOW, rng=random.Random(1234))

    expected = policy.backoff_s(1, rng=random.Random(1234))
    assert 5.0 <= expected <= 15.0
    assert expected != 10.0
    assert run.job.tasks["a"].next_attempt_time == NOW + timedelta(seconds=expected)


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (
            RetryPolicy(max_attempts=5, jitter=0.0, non_retryable_codes=frozenset({"BAD_LOGIN"})),
            err("BAD_LOGIN", "wrong password", retryable=True),
        ),
        (RetryPolicy(max_attempts=5, jitter=0.0), err("BAD_INPUT", retryable=False)),
    ],
    ids=["non-retryable-code", "retryable-false"],
)
def test_a_non_retryable_failure_fails_the_task_at_once(
    policy: RetryPolicy, error: TaskError
) -> None:
    run = new_run(todo("a", retry_policy=policy))
    run.start("a")
    run.take()

    run.job.fail("a", attempt=1, error=error, now=at(3))

    task = run.job.tasks["a"]
    assert task.state is TaskState.FAILED
    assert (task.error, task.failures, task.end_time) == (error, 1, at(3))
    assert task.attempts[-1].state is AttemptState.FAILED
    assert run.job.state is JobState.FAILED
    assert (run.job.error, run.job.dead_lettered, run.job.end_time) == (error, True, at(3))
    changes = run.take()
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.RUNNING,
            to_state=TaskState.FAILED,
            attempt=1,
            error=error,
        ),
        JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.FAILED, error=error),
    ]
    assert [event.terminal for event in changes.events] == [False, True]
    assert changes.queued == []


def test_a_failed_task_skips_its_downstream_while_an_independent_branch_finishes() -> None:
    run = new_run(
        todo("a"), todo("b", "a"), todo("c", "b"), todo("x"), todo("y", "x"), todo("z", "a", "y")
    )
    run.start("a")
    run.start("x", agent_id="agent-2")
    run.take()
    error = err("CRASH", retryable=False)

    run.job.fail("a", attempt=1, error=error, now=at(1))

    changes = run.take()
    skipped = upstream_failed("a")
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.RUNNING,
            to_state=TaskState.FAILED,
            attempt=1,
            error=error,
        ),
        TaskStateChanged(
            task_id="b", from_state=TaskState.PENDING, to_state=TaskState.SKIPPED, error=skipped
        ),
        TaskStateChanged(
            task_id="c", from_state=TaskState.PENDING, to_state=TaskState.SKIPPED, error=skipped
        ),
        TaskStateChanged(
            task_id="z", from_state=TaskState.PENDING, to_state=TaskState.SKIPPED, error=skipped
        ),
    ]
    assert changes.dirty_tasks == {"a", "b", "c", "z"}
    for task_id in ("b", "c", "z"):
        task = run.job.tasks[task_id]
        assert (task.error, task.end_time, task.attempts) == (skipped, at(1), [])
    assert state_of(run.job) is JobState.RUNNING
    assert (run.job.dead_lettered, run.job.error) == (False, None)

    # The independent branch keeps going, and its dependents are still queued.
    run.job.succeed("x", attempt=1, outputs={}, now=at(2))
    assert run.take().queued == ["y"]
    assert state_of(run.job) is JobState.RUNNING

    run.complete("y", now=at(3))
    changes = run.take()
    assert task_states(run.job) == {
        "a": TaskState.FAILED,
        "b": TaskState.SKIPPED,
        "c": TaskState.SKIPPED,
        "x": TaskState.SUCCEEDED,
        "y": TaskState.SUCCEEDED,
        "z": TaskState.SKIPPED,
    }
    assert run.job.state is JobState.FAILED
    assert (run.job.dead_lettered, run.job.error, run.job.end_time) == (True, error, at(3))
    assert payloads(changes)[-1] == JobStateChanged(
        from_state=JobState.RUNNING, to_state=JobState.FAILED, error=error
    )
    assert changes.events[-1].terminal


def test_exhausted_retries_fail_the_task_with_retries_exhausted() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=1.0, jitter=0.0)
    run = new_run(todo("a", retry_policy=policy), todo("b", "a"))
    run.start("a")
    run.job.fail("a", attempt=1, error=err("HTTP_503", "portal down"), now=NOW)
    run.start("a", now=at(1))
    run.take()

    run.job.fail("a", attempt=2, error=err("HTTP_503", "portal down"), now=at(2))

    final = TaskError(
        code="HTTP_503",
        message="portal down (attempt 2 of 2)",
        retryable=False,
        reason=Reason.RETRIES_EXHAUSTED,
    )
    task = run.job.tasks["a"]
    assert (task.state, task.error, task.failures) == (TaskState.FAILED, final, 2)
    assert [a.state for a in task.attempts] == [AttemptState.FAILED, AttemptState.FAILED]
    assert task.attempts[-1].error == err("HTTP_503", "portal down")  # what the agent said
    assert run.job.state is JobState.FAILED
    assert (run.job.error, run.job.dead_lettered) == (final, True)
    assert payloads(run.take()) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.RUNNING,
            to_state=TaskState.FAILED,
            attempt=2,
            error=final,
        ),
        TaskStateChanged(
            task_id="b",
            from_state=TaskState.PENDING,
            to_state=TaskState.SKIPPED,
            error=upstream_failed("a"),
        ),
        JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.FAILED, error=final),
    ]


def test_a_timeout_ends_the_attempt_timed_out_and_is_retried() -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER))
    run.start("a")
    timeout = err("TIMEOUT", "took longer than 30 s", reason=Reason.TASK_TIMEOUT)

    run.job.fail("a", attempt=1, error=timeout, now=at(30))

    task = run.job.tasks["a"]
    assert task.attempts[-1].state is AttemptState.TIMED_OUT
    assert task.attempts[-1].error == timeout
    assert (task.state, task.failures, task.next_attempt_time) == (TaskState.QUEUED, 1, at(32))


def test_an_ordinary_failure_ends_the_attempt_failed_not_timed_out() -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER))
    run.start("a")

    run.job.fail("a", attempt=1, error=err(reason=Reason.EXECUTOR_ERROR), now=NOW)

    assert run.job.tasks["a"].attempts[-1].state is AttemptState.FAILED


def test_the_job_default_retry_policy_applies_to_tasks_without_one() -> None:
    once = RetryPolicy(max_attempts=1, jitter=0.0)
    run = new_run(todo("a"), todo("b", retry_policy=NO_JITTER), default_retry_policy=once)
    assert run.job.retry_policy_of(run.job.tasks["a"]) is once
    assert run.job.retry_policy_of(run.job.tasks["b"]) is NO_JITTER
    run.start("a")
    run.start("b")

    run.job.fail("a", attempt=1, error=err(), now=NOW)
    run.job.fail("b", attempt=1, error=err(), now=NOW)

    assert run.job.tasks["a"].state is TaskState.FAILED
    assert run.job.tasks["a"].error == TaskError(
        code="BOOM",
        message="boom (attempt 1 of 1)",
        retryable=False,
        reason=Reason.RETRIES_EXHAUSTED,
    )
    assert run.job.tasks["b"].state is TaskState.QUEUED  # its own policy: 3 attempts


def test_without_any_policy_the_default_retry_policy_applies() -> None:
    run = new_run(todo("a"))
    assert run.job.retry_policy_of(run.job.tasks["a"]) is DEFAULT_RETRY_POLICY
    run.start("a")

    run.job.fail("a", attempt=1, error=err(), now=NOW, rng=random.Random(7))

    delay = DEFAULT_RETRY_POLICY.backoff_s(1, rng=random.Random(7))
    assert run.job.tasks["a"].next_attempt_time == NOW + timedelta(seconds=delay)
    assert run.job.tasks["a"].state is TaskState.QUEUED


# -- lose -----------------------------------------------------------------------------------


def test_a_lost_attempt_is_queued_again_at_once() -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER))
    run.start("a", agent_id="agent-9")
    run.take()

    run.job.lose("a", attempt=1, max_redeliveries=3, now=at(40))

    lost = TaskError(
        code="LOST",
        message="agent 'agent-9' stopped renewing the lease of attempt 1",
        retryable=True,
    )
    task = run.job.tasks["a"]
    assert task.state is TaskState.QUEUED
    assert (task.losses, task.failures, task.next_attempt_time, task.lease_until) == (
        1,
        0,
        None,
        None,
    )
    assert task.attempts == [
        Attempt(
            number=1,
            agent_id="agent-9",
            state=AttemptState.LOST,
            start_time=NOW,
            end_time=at(40),
            error=lost,
        )
    ]
    changes = run.take()
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.RUNNING,
            to_state=TaskState.QUEUED,
            attempt=1,
            error=lost,
        ),
        TaskRetryScheduled(
            task_id="a", failed_attempt=1, next_attempt_time=at(40), error=lost, lost=True
        ),
    ]
    assert changes.queued == ["a"]

    # No backoff: another agent may take it right away.
    run.job.assign("a", attempt=2, agent_id="agent-2", lease_until=LEASE, now=at(40))
    assert run.job.tasks["a"].state is TaskState.RUNNING


def test_losses_do_not_use_up_the_retry_budget() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=1.0, jitter=0.0)
    run = new_run(todo("a", retry_policy=policy))
    for _ in range(2):
        attempt = run.start("a")
        run.job.lose("a", attempt=attempt, max_redeliveries=5, now=NOW)

    attempt = run.start("a")
    assert attempt == 3
    run.job.fail("a", attempt=attempt, error=err(), now=NOW)
    task = run.job.tasks["a"]
    assert (task.state, task.failures, task.losses) == (TaskState.QUEUED, 1, 2)

    attempt = run.start("a", now=at(1))
    run.job.fail("a", attempt=attempt, error=err(), now=at(1))
    assert task.state is TaskState.FAILED
    assert task.error is not None
    assert task.error.message == "boom (attempt 2 of 2)"
    assert [a.state for a in task.attempts] == [
        AttemptState.LOST,
        AttemptState.LOST,
        AttemptState.FAILED,
        AttemptState.FAILED,
    ]
    assert [a.number for a in task.attempts] == [1, 2, 3, 4]


def test_failures_do_not_use_up_the_redelivery_budget() -> None:
    run = new_run(todo("a", retry_policy=RetryPolicy(max_attempts=5, jitter=0.0)))
    for n in range(3):
        attempt = run.start("a", now=at(100 * n))
        run.job.fail("a", attempt=attempt, error=err(), now=at(100 * n))

    attempt = run.start("a", now=at(1000))
    run.job.lose("a", attempt=attempt, max_redeliveries=1, now=at(1000))

    task = run.job.tasks["a"]
    assert (task.state, task.failures, task.losses) == (TaskState.QUEUED, 3, 1)


def test_too_many_losses_fail_the_task_with_redelivery_exhausted() -> None:
    run = new_run(todo("a"), todo("b", "a"))
    for _ in range(2):
        attempt = run.start("a")
        run.job.lose("a", attempt=attempt, max_redeliveries=2, now=NOW)
        assert run.job.tasks["a"].state is TaskState.QUEUED
    attempt = run.start("a")
    run.take()

    run.job.lose("a", attempt=attempt, max_redeliveries=2, now=at(9))

    final = TaskError(
        code="LOST",
        message="task was lost 3 times (bound: 2 redeliveries); its agents keep disappearing",
        reason=Reason.REDELIVERY_EXHAUSTED,
    )
    task = run.job.tasks["a"]
    assert (task.state, task.error, task.losses, task.failures) == (TaskState.FAILED, final, 3, 0)
    assert task.attempts[-1].state is AttemptState.LOST
    assert run.job.state is JobState.FAILED
    assert (run.job.error, run.job.dead_lettered) == (final, True)
    changes = run.take()
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a",
            from_state=TaskState.RUNNING,
            to_state=TaskState.FAILED,
            attempt=3,
            error=final,
        ),
        TaskStateChanged(
            task_id="b",
            from_state=TaskState.PENDING,
            to_state=TaskState.SKIPPED,
            error=upstream_failed("a"),
        ),
        JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.FAILED, error=final),
    ]
    assert changes.events[-1].terminal


def test_with_no_redeliveries_the_first_loss_fails_the_task() -> None:
    run = new_run(todo("a"))
    run.start("a")

    run.job.lose("a", attempt=1, max_redeliveries=0, now=NOW)

    task = run.job.tasks["a"]
    assert task.state is TaskState.FAILED
    assert task.error is not None
    assert task.error.reason is Reason.REDELIVERY_EXHAUSTED


def test_lose_of_a_stale_attempt_is_refused() -> None:
    run = new_run(todo("a"))
    run.start("a")
    run.job.lose("a", attempt=1, max_redeliveries=3, now=NOW)
    run.start("a", agent_id="agent-2")
    run.take()

    assert_refused(
        run,
        lambda: run.job.lose("a", attempt=1, max_redeliveries=3, now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


# -- hand_back ------------------------------------------------------------------------------


def test_a_handed_back_task_is_requeued_free_of_charge() -> None:
    run = new_run(todo("a", retry_policy=RetryPolicy(max_attempts=1, jitter=0.0)))
    for n in range(1, 6):
        attempt = run.start("a", agent_id=f"agent-{n}")
        run.take()

        run.job.hand_back("a", attempt=attempt, reason="agent draining", now=at(n))

        handed_back = TaskError(code="HANDED_BACK", message="agent draining", retryable=True)
        task = run.job.tasks["a"]
        assert (task.state, task.failures, task.losses, task.next_attempt_time) == (
            TaskState.QUEUED,
            0,
            0,
            None,
        )
        assert task.attempts[-1] == Attempt(
            number=n,
            agent_id=f"agent-{n}",
            state=AttemptState.CANCELLED,
            start_time=NOW,
            end_time=at(n),
            error=handed_back,
        )
        changes = run.take()
        assert payloads(changes) == [
            TaskStateChanged(
                task_id="a",
                from_state=TaskState.RUNNING,
                to_state=TaskState.QUEUED,
                attempt=n,
                error=handed_back,
            ),
            # Not `lost`: no lease expired; the error code says it was handed back.
            TaskRetryScheduled(
                task_id="a",
                failed_attempt=n,
                next_attempt_time=at(n),
                error=handed_back,
                lost=False,
            ),
        ]
        assert changes.queued == ["a"]

    # max_attempts=1, yet one real failure is still its first.
    run.start("a")
    run.job.fail("a", attempt=6, error=err(), now=NOW)
    assert run.job.tasks["a"].error == TaskError(
        code="BOOM",
        message="boom (attempt 1 of 1)",
        retryable=False,
        reason=Reason.RETRIES_EXHAUSTED,
    )


def test_hand_back_after_cancel_ends_the_task_cancelled() -> None:
    run = new_run(todo("a"))
    run.start("a")
    run.job.cancel(now=at(1))
    run.take()

    run.job.hand_back("a", attempt=1, reason="stopped on request", now=at(2))

    task = run.job.tasks["a"]
    assert task.state is TaskState.CANCELLED
    assert task.attempts[-1] == Attempt(
        number=1,
        agent_id="agent-1",
        state=AttemptState.CANCELLED,
        start_time=NOW,
        end_time=at(2),
    )
    assert run.job.state is JobState.CANCELLED
    changes = run.take()
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a", from_state=TaskState.RUNNING, to_state=TaskState.CANCELLED, attempt=1
        ),
        JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.CANCELLED),
    ]
    assert changes.queued == []


def test_hand_back_of_a_stale_attempt_is_refused() -> None:
    run = new_run(todo("a"))
    run.start("a")
    run.take()

    assert_refused(
        run,
        lambda: run.job.hand_back("a", attempt=2, reason="x", now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_of_a_job_with_nothing_running_ends_it_at_once() -> None:
    run = new_run(todo("a"), todo("b", "a"), todo("c"))

    run.job.cancel(now=at(3))

    assert task_states(run.job) == {
        "a": TaskState.CANCELLED,
        "b": TaskState.CANCELLED,
        "c": TaskState.CANCELLED,
    }
    for task in run.job.tasks.values():
        assert task.end_time == at(3)
    assert run.job.state is JobState.CANCELLED
    assert (run.job.cancel_requested, run.job.end_time, run.job.error) == (True, at(3), None)
    assert run.job.dead_lettered is False
    changes = run.take()
    assert payloads(changes) == [
        JobCancelRequested(reason=""),
        *(
            TaskStateChanged(
                task_id=task_id,
                from_state=from_state,
                to_state=TaskState.CANCELLED,
                error=CANCELLED_BY_USER,
            )
            for task_id, from_state in (
                ("a", TaskState.QUEUED),
                ("b", TaskState.PENDING),
                ("c", TaskState.QUEUED),
            )
        ),
        JobStateChanged(from_state=JobState.PENDING, to_state=JobState.CANCELLED),
    ]
    assert [event.terminal for event in changes.events] == [False, False, False, False, True]
    assert (changes.cancels, changes.queued) == ([], [])
    assert changes.dirty_tasks == {"a", "b", "c"}


def _cancel_with_two_running() -> Run:
    run = new_run(todo("a"), todo("b"), todo("c"), todo("d", "a"), max_parallelism=2)
    run.start("a", agent_id="agent-1")
    run.start("b", agent_id="agent-2")
    run.take()
    assert task_states(run.job)["c"] is TaskState.PENDING  # beyond the parallelism bound

    run.job.cancel(now=at(1))
    return run


def test_cancel_tells_the_agents_of_running_attempts_and_waits_for_them() -> None:
    run = _cancel_with_two_running()

    changes = run.take()
    assert changes.cancels == [
        (AttemptRef(JOB_ID, "a", 1), "agent-1"),
        (AttemptRef(JOB_ID, "b", 1), "agent-2"),
    ]
    assert task_states(run.job) == {
        "a": TaskState.RUNNING,
        "b": TaskState.RUNNING,
        "c": TaskState.CANCELLED,
        "d": TaskState.CANCELLED,
    }
    assert payloads(changes) == [
        JobCancelRequested(reason=""),
        TaskStateChanged(
            task_id="c",
            from_state=TaskState.PENDING,
            to_state=TaskState.CANCELLED,
            error=CANCELLED_BY_USER,
        ),
        TaskStateChanged(
            task_id="d",
            from_state=TaskState.PENDING,
            to_state=TaskState.CANCELLED,
            error=CANCELLED_BY_USER,
        ),
    ]
    assert state_of(run.job) is JobState.RUNNING
    assert run.job.cancel_requested
    assert not run.job.is_terminal

    # A running attempt may still report progress until it stops.
    run.job.progress("a", attempt=1, percent=None, message="stopping", now=at(2))
    run.take()

    # The first result: a success stays a success, nothing new is queued, the job waits on.
    run.job.succeed("a", attempt=1, outputs={"k": "v"}, now=at(3))
    changes = run.take()
    assert run.job.tasks["a"].state is TaskState.SUCCEEDED
    assert changes.queued == []
    assert run.job.tasks["d"].state is TaskState.CANCELLED
    assert state_of(run.job) is JobState.RUNNING

    run.job.fail("b", attempt=1, error=err(), now=at(4))
    changes = run.take()
    assert run.job.tasks["b"].state is TaskState.CANCELLED
    assert run.job.tasks["b"].attempts[-1].state is AttemptState.FAILED
    assert run.job.state is JobState.CANCELLED
    assert run.job.end_time == at(4)
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="b",
            from_state=TaskState.RUNNING,
            to_state=TaskState.CANCELLED,
            attempt=1,
            error=err(),
        ),
        JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.CANCELLED),
    ]
    assert [event.terminal for event in changes.events] == [False, True]
    assert changes.queued == []


@pytest.mark.parametrize(
    ("report", "task_state", "attempt_state"),
    [
        (
            lambda job: job.succeed("a", attempt=1, outputs={}, now=at(5)),
            TaskState.SUCCEEDED,
            AttemptState.SUCCEEDED,
        ),
        (
            lambda job: job.fail("a", attempt=1, error=err(), now=at(5)),
            TaskState.CANCELLED,
            AttemptState.FAILED,
        ),
        (
            lambda job: job.hand_back("a", attempt=1, reason="stopped", now=at(5)),
            TaskState.CANCELLED,
            AttemptState.CANCELLED,
        ),
        (
            lambda job: job.lose("a", attempt=1, max_redeliveries=3, now=at(5)),
            TaskState.CANCELLED,
            AttemptState.LOST,
        ),
    ],
    ids=["succeed", "fail", "hand_back", "lose"],
)
def test_a_cancelled_job_ends_when_its_last_running_attempt_reports(
    report: Callable[[Job], None], task_state: TaskState, attempt_state: AttemptState
) -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER), todo("b", "a"))
    run.start("a")
    run.job.cancel(now=at(1))
    changes = run.take()
    assert changes.cancels == [(AttemptRef(JOB_ID, "a", 1), "agent-1")]
    assert not any(event.terminal for event in changes.events)

    report(run.job)

    task = run.job.tasks["a"]
    assert (task.state, task.attempts[-1].state) == (task_state, attempt_state)
    assert (task.failures, task.losses) == (0, 0)
    assert run.job.state is JobState.CANCELLED
    changes = run.take()
    assert changes.queued == []
    assert payloads(changes)[-1] == JobStateChanged(
        from_state=JobState.RUNNING, to_state=JobState.CANCELLED
    )
    assert changes.events[-1].terminal
    assert sum(event.terminal for event in run.log) == 1


def test_cancel_twice_is_a_no_op() -> None:
    run = _cancel_with_two_running()
    run.take()

    before = copy.deepcopy(run.job)
    run.job.cancel(now=at(9))

    assert run.job == before
    assert run.take() == JobChanges()


def test_cancel_of_a_cancelled_job_is_a_no_op() -> None:
    run = new_run(todo("a"))
    run.job.cancel(now=at(1))
    run.take()
    assert run.job.state is JobState.CANCELLED

    before = copy.deepcopy(run.job)
    run.job.cancel(now=at(2))

    assert run.job == before
    assert run.take() == JobChanges()


def test_cancel_during_a_retry_backoff_cancels_the_queued_task() -> None:
    run = new_run(todo("a", retry_policy=NO_JITTER))
    run.start("a")
    run.job.fail("a", attempt=1, error=err(), now=NOW)
    run.take()

    run.job.cancel(now=at(1))

    assert run.job.tasks["a"].state is TaskState.CANCELLED
    assert run.job.state is JobState.CANCELLED
    assert run.take().cancels == []


def _succeeded_job() -> Run:
    run = new_run(todo("a"))
    run.complete("a")
    run.take()
    assert run.job.state is JobState.SUCCEEDED
    return run


def _failed_job() -> Run:
    run = new_run(todo("a"))
    run.start("a")
    run.job.fail("a", attempt=1, error=err(retryable=False), now=NOW)
    run.take()
    assert run.job.state is JobState.FAILED
    return run


@pytest.mark.parametrize("finished", [_succeeded_job, _failed_job], ids=["succeeded", "failed"])
def test_cancel_of_a_finished_job_is_an_illegal_transition(finished: Callable[[], Run]) -> None:
    run = finished()

    assert_refused(
        run, lambda: run.job.cancel(now=at(1)), FailedPrecondition, Reason.ILLEGAL_TRANSITION
    )


# -- retry (RetryJob) -----------------------------------------------------------------------


def _dead_lettered() -> Run:
    """A FAILED job: s succeeded; a failed for good at attempt 3 (after a failure and a loss),
    so b was skipped; c failed on its own."""
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=1.0, jitter=0.0)
    run = new_run(
        todo("s"),
        todo("a", "s", retry_policy=policy),
        todo("b", "a"),
        todo("c", retry_policy=policy),
    )
    run.complete("s", pdf="artifact://s")
    run.start("a")
    run.job.fail("a", attempt=1, error=err(), now=NOW)
    run.start("a", now=at(1))
    run.job.lose("a", attempt=2, max_redeliveries=3, now=at(1))
    run.start("a", now=at(1))
    run.job.fail("a", attempt=3, error=err("FATAL", retryable=False), now=at(2))
    run.start("c")
    run.job.fail("c", attempt=1, error=err("FATAL", retryable=False), now=at(3))
    run.take()
    assert run.job.state is JobState.FAILED
    assert task_states(run.job) == {
        "s": TaskState.SUCCEEDED,
        "a": TaskState.FAILED,
        "b": TaskState.SKIPPED,
        "c": TaskState.FAILED,
    }
    assert (run.job.tasks["a"].failures, run.job.tasks["a"].losses) == (2, 1)
    assert run.job.dead_lettered
    return run


def test_retry_re_drives_what_did_not_succeed() -> None:
    run = _dead_lettered()
    s_before = copy.deepcopy(run.job.tasks["s"])

    run.job.retry(now=at(100))

    job = run.job
    assert job.state is JobState.PENDING
    assert (job.retry_count, job.dead_lettered, job.error, job.end_time) == (1, False, None, None)
    assert job.cancel_requested is False
    assert job.tasks["s"] == s_before
    assert job.tasks["s"].outputs == {"pdf": "artifact://s"}
    assert task_states(job) == {
        "s": TaskState.SUCCEEDED,
        "a": TaskState.QUEUED,
        "b": TaskState.PENDING,
        "c": TaskState.QUEUED,
    }
    for task_id in ("a", "b", "c"):
        task = job.tasks[task_id]
        assert (task.failures, task.losses, task.error) == (0, 0, None)
        assert (task.next_attempt_time, task.end_time) == (None, None)
    assert job.tasks["a"].attempt == 3  # attempt numbers never restart
    assert len(job.tasks["a"].attempts) == 3

    changes = run.take()
    assert payloads(changes) == [
        TaskStateChanged(
            task_id="a", from_state=TaskState.FAILED, to_state=TaskState.PENDING, attempt=3
        ),
        TaskStateChanged(task_id="b", from_state=TaskState.SKIPPED, to_state=TaskState.PENDING),
        TaskStateChanged(
            task_id="c", from_state=TaskState.FAILED, to_state=TaskState.PENDING, attempt=1
        ),
        JobStateChanged(from_state=JobState.FAILED, to_state=JobState.PENDING),
        TaskStateChanged(
            task_id="a", from_state=TaskState.PENDING, to_state=TaskState.QUEUED, attempt=3
        ),
        TaskStateChanged(
            task_id="c", from_state=TaskState.PENDING, to_state=TaskState.QUEUED, attempt=1
        ),
    ]
    assert not any(event.terminal for event in changes.events)
    assert changes.queued == ["a", "c"]
    assert changes.dirty_tasks == {"a", "b", "c"}
    assert changes.events[0].sequence > 1


def test_after_retry_the_next_attempt_number_continues() -> None:
    run = _dead_lettered()
    run.job.retry(now=at(100))
    run.take()

    for attempt in (1, 3, 5):
        assert_refused(
            run,
            lambda attempt=attempt: run.job.assign(  # type: ignore[misc]
                "a", attempt=attempt, agent_id="x", lease_until=LEASE, now=at(100)
            ),
            StaleAttempt,
            Reason.STALE_ATTEMPT,
        )

    run.job.assign("a", attempt=4, agent_id="agent-7", lease_until=LEASE, now=at(101))

    assert [a.number for a in run.job.tasks["a"].attempts] == [1, 2, 3, 4]
    assert run.job.state is JobState.RUNNING
    assert payloads(run.take())[-1] == JobStateChanged(
        from_state=JobState.PENDING, to_state=JobState.RUNNING
    )


def test_after_retry_the_budgets_start_afresh() -> None:
    run = _dead_lettered()
    run.job.retry(now=at(100))
    run.start("a", now=at(100))

    # max_attempts=2 and two failures before: after the re-drive this is the first again.
    run.job.fail("a", attempt=4, error=err(), now=at(101))

    assert run.job.tasks["a"].state is TaskState.QUEUED
    assert run.job.tasks["a"].failures == 1


def test_a_re_driven_job_can_succeed_and_ends_with_one_more_terminal_event() -> None:
    run = _dead_lettered()
    run.job.retry(now=at(100))
    run.complete("a", now=at(100))
    run.complete("c", now=at(100))
    run.complete("b", now=at(100))
    run.take()

    assert run.job.state is JobState.SUCCEEDED
    assert run.job.end_time == at(100)
    terminal = [event for event in run.log if event.terminal]
    assert [event.payload for event in terminal] == [
        JobStateChanged(
            from_state=JobState.RUNNING,
            to_state=JobState.FAILED,
            error=TaskError(code="FATAL", message="boom"),
        ),
        JobStateChanged(from_state=JobState.RUNNING, to_state=JobState.SUCCEEDED),
    ]
    assert run.log[-1] is terminal[-1]
    assert [event.sequence for event in run.log] == list(range(1, len(run.log) + 1))


def test_retry_of_a_cancelled_job() -> None:
    run = new_run(todo("a"), todo("b", "a"))
    run.start("a")
    run.job.cancel(now=at(1))
    run.job.hand_back("a", attempt=1, reason="stopped", now=at(2))
    run.take()

    run.job.retry(now=at(3))

    assert run.job.state is JobState.PENDING
    assert run.job.cancel_requested is False
    assert task_states(run.job) == {"a": TaskState.QUEUED, "b": TaskState.PENDING}
    assert run.take().queued == ["a"]
    run.job.assign("a", attempt=2, agent_id="agent-1", lease_until=LEASE, now=at(3))


@pytest.mark.parametrize(
    "setup",
    [
        lambda: new_run(todo("a")),
        lambda: _started(new_run(todo("a"))),
        _succeeded_job,
    ],
    ids=["pending", "running", "succeeded"],
)
def test_retry_of_a_job_that_did_not_fail_is_an_illegal_transition(
    setup: Callable[[], Run],
) -> None:
    run = setup()

    assert_refused(
        run, lambda: run.job.retry(now=at(1)), FailedPrecondition, Reason.ILLEGAL_TRANSITION
    )


def _started(run: Run) -> Run:
    run.start("a")
    run.take()
    assert run.job.state is JobState.RUNNING
    return run


# -- progress --------------------------------------------------------------


def test_progress_is_an_event_of_the_running_attempt() -> None:
    run = new_run(todo("a"))
    run.start("a")
    run.take()
    before = copy.deepcopy(run.job.tasks)

    run.job.progress("a", attempt=1, percent=42.5, message="page 3 of 7", now=at(7))
    run.job.progress("a", attempt=1, percent=None, message="still typing", now=at(8))

    changes = run.take()
    assert payloads(changes) == [
        TaskProgress(task_id="a", attempt=1, percent=42.5, message="page 3 of 7"),
        TaskProgress(task_id="a", attempt=1, percent=None, message="still typing"),
    ]
    assert [event.create_time for event in changes.events] == [at(7), at(8)]
    assert (changes.dirty_tasks, changes.queued, changes.cancels) == (set(), [], [])
    assert run.job.tasks == before


def test_progress_of_a_stale_attempt_is_refused() -> None:
    run = new_run(todo("a"), todo("b"))
    run.start("a")
    run.take()

    assert_refused(
        run,
        lambda: run.job.progress("a", attempt=2, percent=1.0, message="", now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )
    assert_refused(
        run,
        lambda: run.job.progress("b", attempt=1, percent=1.0, message="", now=NOW),
        StaleAttempt,
        Reason.STALE_ATTEMPT,
    )


# -- unknown tasks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda job: job.task("nope"),
        lambda job: job.assign("nope", attempt=1, agent_id="x", lease_until=LEASE, now=NOW),
        lambda job: job.progress("nope", attempt=1, percent=None, message="", now=NOW),
        lambda job: job.succeed("nope", attempt=1, outputs={}, now=NOW),
        lambda job: job.fail("nope", attempt=1, error=err(), now=NOW),
        lambda job: job.lose("nope", attempt=1, max_redeliveries=3, now=NOW),
        lambda job: job.hand_back("nope", attempt=1, reason="", now=NOW),
    ],
    ids=["task", "assign", "progress", "succeed", "fail", "lose", "hand_back"],
)
def test_an_unknown_task_is_not_found(call: Callable[[Job], object]) -> None:
    run = new_run(todo("a"))
    run.start("a")
    run.take()

    error = assert_refused(run, lambda: call(run.job), NotFound, Reason.TASK_NOT_FOUND)
    assert error.field == "task_id"
    assert "nope" in error.message


# -- invariants under random schedules -----------------------------------------------------


def _random_todos(rng: random.Random, size: int) -> list[ToDo]:
    policy = RetryPolicy(
        max_attempts=rng.randint(1, 3), initial_backoff_s=1.0, multiplier=2.0, jitter=0.0
    )
    todos = []
    for i in range(size):
        deps = rng.sample(range(i), k=min(i, rng.randint(0, 2)))
        todos.append(
            todo(
                f"t{i}",
                *(f"t{d}" for d in deps),
                retry_policy=policy if rng.random() < 0.5 else None,
            )
        )
    return todos


def _check_invariants(job: Job) -> None:
    active = [t for t in job.tasks.values() if t.state in (TaskState.QUEUED, TaskState.RUNNING)]
    assert len(active) <= job.options.max_parallelism
    for task in job.tasks.values():
        assert [a.number for a in task.attempts] == list(range(1, len(task.attempts) + 1))
        assert task.attempt == len(task.attempts)
        running = [a for a in task.attempts if a.state is AttemptState.RUNNING]
        if task.state is TaskState.RUNNING:
            assert running == [task.attempts[-1]]
            assert task.lease_until is not None
        else:
            assert running == []
            assert task.lease_until is None
        if task.state is TaskState.SKIPPED:
            assert task.error is not None
            assert task.error.reason is Reason.UPSTREAM_FAILED
        if task.state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.SUCCEEDED):
            for dependency in task.todo.depends_on:
                assert job.tasks[dependency].state is TaskState.SUCCEEDED
    if job.state is JobState.SUCCEEDED:
        assert all(t.state is TaskState.SUCCEEDED for t in job.tasks.values())
    if job.state is JobState.FAILED:
        assert job.dead_lettered
        assert any(t.state is TaskState.FAILED for t in job.tasks.values())
    if job.is_terminal:
        assert job.end_time is not None
        assert not active


@pytest.mark.parametrize("seed", range(40))
def test_random_schedules_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    job = make_job(*_random_todos(rng, rng.randint(1, 12)), max_parallelism=rng.randint(1, 4))
    run = Run(job)
    clock = NOW
    run.take()

    for _ in range(500):
        if job.is_terminal:
            if job.state is JobState.SUCCEEDED or rng.random() < 0.5:
                break
            job.retry(now=clock)
            run.take()
            continue
        clock += timedelta(seconds=1)
        queued = [t for t in job.tasks.values() if t.state is TaskState.QUEUED]
        running = [t for t in job.tasks.values() if t.state is TaskState.RUNNING]
        ready = [t for t in queued if t.next_attempt_time is None or t.next_attempt_time <= clock]
        if not running and not ready:
            if queued:  # only backoffs left: let time pass
                clock = min(t.next_attempt_time or clock for t in queued)
                continue
            raise AssertionError(f"job stuck in {job.state}: {task_states(job)}")
        if ready and (not running or rng.random() < 0.5):
            task = rng.choice(ready)
            run.start(task.id, agent_id=f"agent-{rng.randint(1, 3)}", now=clock)
        else:
            task = rng.choice(running)
            choice = rng.random()
            if choice < 0.5:
                job.succeed(task.id, attempt=task.attempt, outputs={"n": task.attempt}, now=clock)
            elif choice < 0.7:
                error = err(retryable=rng.random() < 0.8)
                job.fail(task.id, attempt=task.attempt, error=error, now=clock)
            elif choice < 0.8:
                job.lose(task.id, attempt=task.attempt, max_redeliveries=2, now=clock)
            elif choice < 0.85:
                job.hand_back(task.id, attempt=task.attempt, reason="drain", now=clock)
            elif choice < 0.95:
                job.progress(task.id, attempt=task.attempt, percent=None, message="", now=clock)
            else:
                already = job.cancel_requested
                job.cancel(now=clock)
                told = {ref.task_id for ref, _ in job.changes.cancels}
                assert told == (set() if already else {t.id for t in running})
        changes = run.take()
        for task_id in changes.queued:
            assert job.tasks[task_id].state is TaskState.QUEUED
        _check_invariants(job)
    else:
        raise AssertionError("the job did not end within 500 steps")

    assert job.is_terminal
    assert [event.sequence for event in run.log] == list(range(1, len(run.log) + 1))


def test_a_task_started_in_the_change_that_queued_it_is_not_queued() -> None:
    job = make_job(todo("a"), todo("b"))
    job.assign("a", attempt=1, agent_id="ag", lease_until=at(15), now=NOW)
    changes = job.take_changes()
    assert changes.queued == ["b"]
    assert job.tasks["a"].state is TaskState.RUNNING
    # Its events tell the whole story in order: queued, then running.
    moves = [(p.task_id, p.to_state) for p in payloads(changes) if isinstance(p, TaskStateChanged)]
    assert moves == [
        ("a", TaskState.QUEUED),
        ("b", TaskState.QUEUED),
        ("a", TaskState.RUNNING),
    ]
