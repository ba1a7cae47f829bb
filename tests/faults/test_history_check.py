"""The history check of the fault suite and the soak finds what it is meant to find (no I/O)."""

from __future__ import annotations

from cpa.scheduler.v1 import job_event_pb2, job_pb2
from tests.e2e.conftest import todo
from tests.fixtures.history import ONCE, ONCE_OR_AFTER_A_LOSS, history_problems

S = job_pb2


def _change(
    sequence: int, to_state: job_pb2.TaskState.ValueType, attempt: int = 0
) -> job_event_pb2.JobEvent:
    return job_event_pb2.JobEvent(
        sequence=sequence,
        task_state_changed=job_event_pb2.TaskStateChanged(
            task_id="t", to_state=to_state, attempt=attempt
        ),
    )


def _sound() -> tuple[job_pb2.Job, list[job_event_pb2.JobEvent]]:
    """A job whose one task was lost once, then succeeded."""
    task = job_pb2.Task(
        todo=todo("t", "noop"),
        state=S.TASK_STATE_SUCCEEDED,
        attempt=2,
        attempts=[
            job_pb2.Attempt(number=1, agent_id="a", state=S.ATTEMPT_STATE_LOST),
            job_pb2.Attempt(number=2, agent_id="b", state=S.ATTEMPT_STATE_SUCCEEDED),
        ],
    )
    job = job_pb2.Job(job_id="j", state=S.JOB_STATE_SUCCEEDED, tasks=[task], last_event_sequence=6)
    events = [
        _change(1, S.TASK_STATE_QUEUED),
        _change(2, S.TASK_STATE_RUNNING, 1),
        job_event_pb2.JobEvent(
            sequence=3,
            task_retry_scheduled=job_event_pb2.TaskRetryScheduled(
                task_id="t", failed_attempt=1, lost=True
            ),
        ),
        _change(4, S.TASK_STATE_RUNNING, 2),
        _change(5, S.TASK_STATE_SUCCEEDED, 2),
        job_event_pb2.JobEvent(
            sequence=6,
            terminal=True,
            job_state_changed=job_event_pb2.JobStateChanged(
                from_state=S.JOB_STATE_RUNNING, to_state=S.JOB_STATE_SUCCEEDED
            ),
        ),
    ]
    return job, events


def test_a_sound_history_has_no_problems() -> None:
    job, events = _sound()
    assert history_problems(job, events, attempts={"t": ONCE_OR_AFTER_A_LOSS}) == []


def test_unexpected_attempts_and_state() -> None:
    job, events = _sound()
    assert history_problems(job, events, attempts={"t": ONCE}) == [
        "task t: attempts ('LOST', 'SUCCEEDED'), expected one of {('SUCCEEDED',)}"
    ]
    assert history_problems(job, events, expected_state=S.JOB_STATE_FAILED) == [
        "state JOB_STATE_SUCCEEDED, expected JOB_STATE_FAILED"
    ]


def test_a_result_committed_twice() -> None:
    job, events = _sound()
    job.tasks[0].attempts[0].state = S.ATTEMPT_STATE_SUCCEEDED
    events[2:3] = [_change(3, S.TASK_STATE_SUCCEEDED, 1)]
    problems = history_problems(job, events)
    assert "task t: attempts [1, 2] all SUCCEEDED" in problems
    assert "task t: 2 TaskStateChanged -> SUCCEEDED events" in problems


def test_a_gap_or_a_repeat_in_the_event_log() -> None:
    job, events = _sound()
    assert "event sequences not 1..N: repeated [], missing [3]" in history_problems(
        job, events[:2] + events[3:]
    )
    assert "event sequences not 1..N: repeated [3], missing []" in history_problems(
        job, [*events[:3], events[2], *events[3:]]
    )


def test_no_terminal_event_or_two() -> None:
    job, events = _sound()
    job.last_event_sequence = 5
    assert "terminal events at [], expected exactly one, the last" in history_problems(
        job, events[:-1]
    )
    job, events = _sound()
    events[4].terminal = True
    assert "terminal events at [5, 6], expected exactly one, the last" in history_problems(
        job, events
    )


def test_events_past_the_job_record() -> None:
    job, events = _sound()
    job.last_event_sequence = 7
    assert "last event 6 but the job's last_event_sequence is 7" in history_problems(job, events)


def test_attempts_not_numbered_one_to_n() -> None:
    job, events = _sound()
    job.tasks[0].attempts[1].number = 3
    assert history_problems(job, events) == [
        "task t: attempt numbers [1, 3], expected 1..n",
        "task t: RUNNING events for attempts [1, 2], the task records attempts [1, 3]",
    ]
