"""State machines: every pair of states is either an allowed transition or ILLEGAL_TRANSITION."""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Any

import pytest

from cpa_scheduler.domain import (
    ATTEMPT_STATE_MACHINE,
    JOB_STATE_MACHINE,
    TASK_STATE_MACHINE,
    AttemptState,
    FailedPrecondition,
    JobState,
    Reason,
    TaskState,
    can_transition,
    is_terminal,
    state_machine,
    transition,
)

# Written out from the design, independently of the tables in states.py.
LEGAL_JOB = {
    "PENDING -> RUNNING",
    "PENDING -> FAILED",
    "PENDING -> CANCELLED",
    "RUNNING -> WAITING_APPROVAL",
    "RUNNING -> SUCCEEDED",
    "RUNNING -> FAILED",
    "RUNNING -> CANCELLED",
    "WAITING_APPROVAL -> RUNNING",
    "WAITING_APPROVAL -> FAILED",
    "WAITING_APPROVAL -> CANCELLED",
    "FAILED -> PENDING",
    "CANCELLED -> PENDING",
}
LEGAL_TASK = {
    "PENDING -> QUEUED",
    "PENDING -> WAITING_APPROVAL",
    "PENDING -> SKIPPED",
    "PENDING -> CANCELLED",
    "PENDING -> FAILED",
    "WAITING_APPROVAL -> QUEUED",
    "WAITING_APPROVAL -> FAILED",
    "WAITING_APPROVAL -> CANCELLED",
    "QUEUED -> RUNNING",
    "QUEUED -> FAILED",
    "QUEUED -> CANCELLED",
    "QUEUED -> PENDING",
    "RUNNING -> SUCCEEDED",
    "RUNNING -> FAILED",
    "RUNNING -> QUEUED",
    "RUNNING -> CANCELLED",
    "RUNNING -> PENDING",
    "SUCCEEDED -> PENDING",
    "FAILED -> PENDING",
    "SKIPPED -> PENDING",
    "CANCELLED -> PENDING",
}
LEGAL_ATTEMPT = {
    "RUNNING -> SUCCEEDED",
    "RUNNING -> FAILED",
    "RUNNING -> LOST",
    "RUNNING -> CANCELLED",
    "RUNNING -> TIMED_OUT",
}

TERMINAL_JOB = {"SUCCEEDED", "FAILED", "CANCELLED"}
TERMINAL_TASK = {"SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"}
TERMINAL_ATTEMPT = {"SUCCEEDED", "FAILED", "LOST", "CANCELLED", "TIMED_OUT"}

KINDS: list[tuple[type[StrEnum], str, set[str]]] = [
    (JobState, "job", LEGAL_JOB),
    (TaskState, "task", LEGAL_TASK),
    (AttemptState, "attempt", LEGAL_ATTEMPT),
]

ALL_PAIRS = [
    pytest.param(
        current, target, noun, f"{current} -> {target}" in legal, id=f"{noun}:{current}>{target}"
    )
    for enum, noun, legal in KINDS
    for current, target in itertools.product(list(enum), repeat=2)
]


def test_the_legal_sets_name_only_real_states() -> None:
    # Guards the tables above against typos, which would silently make a transition "illegal".
    for enum, _, legal in KINDS:
        names = {state.value for state in enum}
        for pair in legal:
            current, target = pair.split(" -> ")
            assert {current, target} <= names, pair


def test_the_product_covers_every_pair() -> None:
    assert len(ALL_PAIRS) == 6 * 6 + 8 * 8 + 6 * 6


@pytest.mark.parametrize(("current", "target", "noun", "legal"), ALL_PAIRS)
def test_transition(current: Any, target: Any, noun: str, legal: bool) -> None:
    assert can_transition(current, target) is legal
    if legal:
        assert transition(current, target) is target
        return
    with pytest.raises(FailedPrecondition) as caught:
        transition(current, target)
    assert caught.value.reason is Reason.ILLEGAL_TRANSITION
    assert caught.value.message == f"{noun} cannot go from {current} to {target}"
    assert caught.value.field == ""


@pytest.mark.parametrize(
    ("current", "target", "message"),
    [
        (JobState.SUCCEEDED, JobState.RUNNING, "job cannot go from SUCCEEDED to RUNNING"),
        (TaskState.SUCCEEDED, TaskState.QUEUED, "task cannot go from SUCCEEDED to QUEUED"),
        (TaskState.QUEUED, TaskState.SUCCEEDED, "task cannot go from QUEUED to SUCCEEDED"),
        (AttemptState.LOST, AttemptState.RUNNING, "attempt cannot go from LOST to RUNNING"),
    ],
)
def test_machine_method_raises_the_same_error(current: Any, target: Any, message: str) -> None:
    machine = state_machine(current)
    with pytest.raises(FailedPrecondition, match=f"^{message}$") as caught:
        machine.transition(current, target)
    assert caught.value.reason is Reason.ILLEGAL_TRANSITION


@pytest.mark.parametrize(
    ("enum", "terminal"),
    [(JobState, TERMINAL_JOB), (TaskState, TERMINAL_TASK), (AttemptState, TERMINAL_ATTEMPT)],
)
def test_is_terminal(enum: Any, terminal: set[str]) -> None:
    for state in enum:
        assert is_terminal(state) is (state.value in terminal), state


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED])
def test_failed_and_cancelled_jobs_are_terminal_yet_re_drivable(state: JobState) -> None:
    assert is_terminal(state)
    assert transition(state, JobState.PENDING) is JobState.PENDING


def test_succeeded_is_final_for_jobs_and_for_tasks_but_a_session_restart() -> None:
    assert JOB_STATE_MACHINE.allowed_targets(JobState.SUCCEEDED) == frozenset()
    # A session restart (domain/sessions.py) sends a succeeded task back to PENDING, only.
    assert TASK_STATE_MACHINE.allowed_targets(TaskState.SUCCEEDED) == {TaskState.PENDING}


@pytest.mark.parametrize(
    ("enum", "machine"),
    [
        (JobState, JOB_STATE_MACHINE),
        (TaskState, TASK_STATE_MACHINE),
        (AttemptState, ATTEMPT_STATE_MACHINE),
    ],
)
def test_every_state_has_an_entry_and_values_are_upper_case(enum: Any, machine: Any) -> None:
    assert state_machine(next(iter(enum))) is machine
    assert set(machine.transitions) == set(enum)
    for state in enum:
        assert state.value == state.name
        assert state.value == state.value.upper()


def test_states_of_different_kinds_do_not_mix() -> None:
    with pytest.raises(TypeError, match="JobState cannot move to a TaskState"):
        transition(JobState.PENDING, TaskState.QUEUED)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="not a job, task or attempt state"):
        transition("PENDING", "RUNNING")  # type: ignore[type-var]


def test_transition_tables_are_read_only() -> None:
    table: Any = JOB_STATE_MACHINE.transitions
    with pytest.raises(TypeError):
        table[JobState.SUCCEEDED] = frozenset({JobState.PENDING})
