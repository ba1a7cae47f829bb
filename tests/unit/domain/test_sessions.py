"""Task sessions (domain/sessions.py): default, affinity, one task at a time, restart, end.

Each test drives a Job through its public methods with a fixed clock and checks states, the
pin of queued tasks (their agent_id), events and the SessionEnd effects of take_changes().
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cpa_scheduler.domain import (
    DEFAULT_SESSION,
    InvalidArgument,
    Job,
    JobOptions,
    JobSource,
    JobState,
    Reason,
    SessionEnd,
    SessionRestarted,
    SourceKind,
    StaleAttempt,
    TaskGraph,
    TaskState,
    TaskStateChanged,
    ToDo,
    with_default_sessions,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=30)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def step(task_id: str, *depends_on: str, session: str = "s", action: str = "echo") -> ToDo:
    return ToDo(id=task_id, action=action, depends_on=depends_on, session=session)


def make_job(*todos: ToDo, max_parallelism: int = 10) -> Job:
    job = Job.create(
        job_id="job-1",
        tenant="t",
        graph=TaskGraph.from_todos(todos),
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=max_parallelism),
        now=NOW,
    )
    job.take_changes()
    return job


def run(job: Job, task_id: str, agent: str, *, now: datetime = NOW) -> None:
    """Assign the next attempt of the QUEUED task to `agent`."""
    job.assign(
        task_id,
        attempt=job.tasks[task_id].attempt + 1,
        agent_id=agent,
        lease_until=now + timedelta(seconds=30),
        now=now,
    )


def finish(job: Job, task_id: str, *, now: datetime = NOW) -> None:
    job.succeed(task_id, attempt=job.tasks[task_id].attempt, outputs={"v": task_id}, now=now)


def states(job: Job) -> dict[str, TaskState]:
    return {task_id: task.state for task_id, task in job.tasks.items()}


# -- default and validation --------------------------------------------------------------------


def test_browser_actions_without_a_session_get_the_default_one() -> None:
    todos = with_default_sessions(
        [
            ToDo(id="a", action="playwright"),
            ToDo(id="b", action="click"),
            ToDo(id="c", action="type"),
            ToDo(id="d", action="wait_for"),
            ToDo(id="e", action="playwright", session="other"),
            ToDo(id="f", action="send_mail"),
            ToDo(id="g", action="echo"),
        ]
    )
    assert [t.session for t in todos] == [DEFAULT_SESSION] * 4 + ["other", "", ""]
    assert DEFAULT_SESSION == "browser"


@pytest.mark.parametrize(
    "session",
    ["-x", "a b", "a/b", "x" * 64, "tab\t", "line\n", "ü", "a:b", "a\x00b", "' OR 1=1"],
)
def test_a_session_outside_the_id_alphabet_is_refused_naming_the_field(session: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ToDo(id="a", action="echo", session=session).validate("todos[0]")
    assert caught.value.field == "todos[0].session"
    assert caught.value.reason is Reason.INVALID_FIELD
    assert "session" in caught.value.message


@pytest.mark.parametrize("session", ["", "s", "browser", "Login-1.a_b", "x" * 63])
def test_a_session_in_the_id_alphabet_is_accepted(session: str) -> None:
    ToDo(id="a", action="echo", session=session).validate()


# -- affinity and one task at a time ---------------------------------------------------------


def test_the_first_task_binds_the_session_and_the_next_ones_wait_for_that_agent() -> None:
    job = make_job(step("a"), step("b", "a"), step("c", "b"))
    assert job.tasks["a"].state is TaskState.QUEUED
    assert job.tasks["a"].agent_id == ""  # unbound: any agent
    run(job, "a", "agent-1")
    finish(job, "a")
    changes = job.take_changes()
    assert changes.queued == ["b"]
    assert job.tasks["b"].agent_id == "agent-1"  # pinned
    with pytest.raises(StaleAttempt, match="waits for agent 'agent-1'"):
        run(job, "b", "agent-2")
    assert job.tasks["b"].state is TaskState.QUEUED
    run(job, "b", "agent-1")
    finish(job, "b")
    assert job.tasks["c"].agent_id == "agent-1"


def test_independent_tasks_of_one_session_run_one_at_a_time_in_order() -> None:
    job = make_job(step("a"), step("b"), step("c"), step("x", session=""))
    # x is in no session and runs at once; b and c wait PENDING behind a.
    assert states(job) == {
        "a": TaskState.QUEUED,
        "b": TaskState.PENDING,
        "c": TaskState.PENDING,
        "x": TaskState.QUEUED,
    }
    run(job, "a", "agent-1")
    assert states(job)["b"] is TaskState.PENDING
    finish(job, "a")
    assert states(job)["b"] is TaskState.QUEUED
    assert states(job)["c"] is TaskState.PENDING
    assert job.tasks["b"].agent_id == "agent-1"


def test_two_sessions_of_one_job_bind_independently() -> None:
    job = make_job(step("a", session="s1"), step("b", session="s2"))
    run(job, "a", "agent-1")
    run(job, "b", "agent-2")
    assert job.tasks["b"].agent_id == "agent-2"


def test_a_failed_task_of_a_bound_session_retries_on_the_same_agent() -> None:
    from cpa_scheduler.domain import TaskError

    job = make_job(step("a"), step("b", "a"))
    run(job, "a", "agent-1")
    finish(job, "a")
    run(job, "b", "agent-1")
    job.fail("b", attempt=1, error=TaskError(code="X", message="x", retryable=True), now=at(1))
    assert job.tasks["b"].state is TaskState.QUEUED
    assert job.tasks["b"].agent_id == "agent-1"


# -- recovery ------------------------------------------------------------------------------------


def test_a_lost_attempt_restarts_the_session_from_its_first_task() -> None:
    job = make_job(step("a"), step("b", "a"), step("c", "b"), step("d", "c"))
    run(job, "a", "agent-1")
    finish(job, "a")
    run(job, "b", "agent-1")
    finish(job, "b")
    run(job, "c", "agent-1")
    job.take_changes()

    job.lose("c", attempt=1, max_redeliveries=3, now=at(40))

    changes = job.take_changes()
    restarted = [e.payload for e in changes.events if isinstance(e.payload, SessionRestarted)]
    assert restarted == [
        SessionRestarted(
            session="s",
            reason="agent 'agent-1' stopped renewing the lease of task 'c' attempt 1",
            from_agent="agent-1",
            task_ids=("a", "b", "c"),
        )
    ]
    # The restart event comes before the task changes it causes.
    kinds = [type(e.payload).__name__ for e in changes.events]
    assert kinds.index("SessionRestarted") < kinds.index("TaskStateChanged")
    moves = [
        (e.payload.task_id, e.payload.from_state, e.payload.to_state)
        for e in changes.events
        if isinstance(e.payload, TaskStateChanged)
    ]
    assert moves[:3] == [
        ("a", TaskState.SUCCEEDED, TaskState.PENDING),
        ("b", TaskState.SUCCEEDED, TaskState.PENDING),
        ("c", TaskState.RUNNING, TaskState.PENDING),
    ]
    assert moves[3] == ("a", TaskState.PENDING, TaskState.QUEUED)
    restart_errors = {
        e.payload.error.reason
        for e in changes.events
        if isinstance(e.payload, TaskStateChanged) and e.payload.to_state is TaskState.PENDING
        if e.payload.error is not None
    }
    assert restart_errors == {Reason.SESSION_RESTARTED}
    assert changes.queued == ["a"]
    assert changes.sessions_ended == [SessionEnd("s", "agent-1", "restarted")]
    assert job.tasks["a"].agent_id == ""  # unbound again: any agent takes it
    assert job.tasks["a"].outputs is None
    # Re-runs cost no retry budget; the lost task was charged one loss.
    assert [job.tasks[t].failures for t in "abcd"] == [0, 0, 0, 0]
    assert [job.tasks[t].losses for t in "abcd"] == [0, 0, 1, 0]

    # The session runs again, on another agent, from a, and the job succeeds.
    for task_id in "abcd":
        run(job, task_id, "agent-2", now=at(50))
        finish(job, task_id, now=at(51))
    assert job.state is JobState.SUCCEEDED
    assert job.tasks["a"].attempts[-1].agent_id == "agent-2"
    assert len(job.tasks["a"].attempts) == 2


def test_a_task_queued_behind_a_restarted_one_waits_for_the_rerun_and_done_tasks_stay() -> None:
    # a (session) -> x (no session, ran) ; a -> y (no session, queued, not started)
    job = make_job(
        step("a"),
        step("x", "a", session=""),
        step("y", "a", session=""),
        step("b", "a"),
        max_parallelism=2,
    )
    run(job, "a", "agent-1")
    finish(job, "a")
    # x and b queued (parallelism 2); y waits PENDING for a slot
    run(job, "x", "agent-9")
    finish(job, "x")
    assert job.tasks["y"].state is TaskState.QUEUED
    run(job, "b", "agent-1")
    job.take_changes()

    job.lose("b", attempt=1, max_redeliveries=3, now=at(40))

    assert job.tasks["x"].state is TaskState.SUCCEEDED  # already ran: not run again
    assert states(job)["y"] is TaskState.PENDING  # waits for a's re-run
    changes = job.take_changes()
    assert "y" in changes.withdrawn
    assert changes.queued == ["a"]
    run(job, "a", "agent-2", now=at(50))
    finish(job, "a", now=at(51))
    assert job.tasks["y"].state is TaskState.QUEUED
    assert job.tasks["b"].state is TaskState.QUEUED
    assert job.tasks["b"].agent_id == "agent-2"


def test_restarts_are_bounded_by_the_redeliveries_of_the_task_that_was_lost() -> None:
    job = make_job(step("a"), step("b", "a"))
    for round_ in range(3):
        run(job, "a", f"agent-{round_}", now=at(round_ * 100))
        finish(job, "a", now=at(round_ * 100 + 1))
        run(job, "b", f"agent-{round_}", now=at(round_ * 100 + 2))
        job.lose("b", attempt=job.tasks["b"].attempt, max_redeliveries=2, now=at(round_ * 100 + 50))
        if round_ < 2:
            assert job.tasks["b"].state is TaskState.PENDING
    assert job.tasks["b"].state is TaskState.FAILED
    assert job.tasks["b"].error is not None
    assert job.tasks["b"].error.reason is Reason.REDELIVERY_EXHAUSTED
    assert job.state is JobState.FAILED
    # a's re-runs were never charged.
    assert job.tasks["a"].losses == 0
    assert job.tasks["a"].failures == 0


def test_a_session_waiting_for_a_gone_agent_is_released_and_restarts() -> None:
    job = make_job(step("a"), step("b", "a"))
    run(job, "a", "agent-1")
    finish(job, "a")
    job.take_changes()
    assert job.tasks["b"].agent_id == "agent-1"
    # Fenced: another agent id, or another attempt, changes nothing.
    assert not job.release_session(
        "b", attempt=0, agent_id="agent-2", max_redeliveries=3, now=at(40)
    )
    assert not job.release_session(
        "b", attempt=5, agent_id="agent-1", max_redeliveries=3, now=at(40)
    )
    assert job.release_session("b", attempt=0, agent_id="agent-1", max_redeliveries=3, now=at(40))
    changes = job.take_changes()
    assert changes.withdrawn == ["b"]
    assert changes.withdrawn_pins == {"b": "agent-1"}  # its entry waits in agent-1's queue
    assert changes.queued == ["a"]
    assert changes.sessions_ended == [SessionEnd("s", "agent-1", "restarted")]
    assert job.tasks["b"].losses == 1
    assert states(job) == {"a": TaskState.QUEUED, "b": TaskState.PENDING}


def test_a_lost_task_of_a_cancelled_job_does_not_restart_its_session() -> None:
    job = make_job(step("a"), step("b", "a"))
    run(job, "a", "agent-1")
    job.cancel(now=at(1))
    job.take_changes()
    job.lose("a", attempt=1, max_redeliveries=3, now=at(40))
    changes = job.take_changes()
    assert not any(isinstance(e.payload, SessionRestarted) for e in changes.events)
    assert job.state is JobState.CANCELLED
    assert changes.sessions_ended == [SessionEnd("s", "agent-1", "job_ended")]


# -- the end of a session ---------------------------------------------------------------------


def test_the_session_ends_with_its_last_task_and_every_agent_that_ran_it_is_told() -> None:
    job = make_job(step("a"), step("b", "a"), step("z", "b", session=""))
    run(job, "a", "agent-1")
    finish(job, "a")
    assert job.take_changes().sessions_ended == []
    run(job, "b", "agent-1")
    finish(job, "b")
    changes = job.take_changes()
    # The job still runs z: the session ended with its own last task.
    assert job.state is JobState.RUNNING
    assert changes.sessions_ended == [SessionEnd("s", "agent-1", "completed")]


def test_a_cancelled_job_ends_its_sessions_once_the_running_attempt_stopped() -> None:
    job = make_job(step("a"), step("b", "a"))
    run(job, "a", "agent-1")
    job.cancel(now=at(1), reason="stop")
    changes = job.take_changes()
    assert changes.sessions_ended == []  # a still runs on agent-1 until it reports
    job.hand_back("a", attempt=1, reason="cancelled", now=at(2))
    assert job.take_changes().sessions_ended == [SessionEnd("s", "agent-1", "job_ended")]


def test_jobs_without_sessions_never_produce_session_effects() -> None:
    job = make_job(step("a", session=""), step("b", "a", session=""))
    run(job, "a", "agent-1")
    finish(job, "a")
    changes = job.take_changes()
    assert changes.sessions_touched == set()
    assert changes.sessions_ended == []
    run(job, "b", "agent-2")  # no affinity
    job.lose("b", attempt=1, max_redeliveries=3, now=at(40))
    assert job.tasks["b"].state is TaskState.QUEUED  # a plain re-queue
    assert job.tasks["a"].state is TaskState.SUCCEEDED
