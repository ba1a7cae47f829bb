"""The ToDo's JSON form (storage/codec.py): inputs and credential references round-trip; rows
from before them still read."""

from __future__ import annotations

import json

from cpa_scheduler.domain import OutputRef, SessionRestarted, ToDo
from cpa_scheduler.storage.codec import (
    payload_from_data,
    payload_to_data,
    queued_task,
    queued_task_from_data,
    queued_task_to_data,
    todo_from_data,
    todo_to_data,
)

# A task row's todo_json as servers wrote it before ToDos had inputs.
ROW_BEFORE_INPUTS = {
    "id": "b",
    "action": "click",
    "description": "",
    "selector": None,
    "text": "",
    "params": {"n": 1},
    "timeout_s": None,
    "schedule_to_start_s": None,
    "depends_on": ["a"],
    "retry_policy": None,
    "required_capabilities": [],
    "required_labels": {},
    "requires_approval": False,
}


def test_inputs_round_trip_through_json() -> None:
    todo = ToDo(
        id="b",
        action="click",
        depends_on=("a",),
        inputs={
            "value": OutputRef(task_id="a", output_key="x"),
            "name": OutputRef(task_id="a", output_key="label"),
        },
    )

    data = json.loads(json.dumps(todo_to_data(todo)))

    assert data["inputs"] == {
        "value": {"task_id": "a", "output_key": "x"},
        "name": {"task_id": "a", "output_key": "label"},
    }
    assert todo_from_data(data) == todo


def test_a_row_written_before_inputs_reads_as_no_inputs() -> None:
    todo = todo_from_data(dict(ROW_BEFORE_INPUTS))

    assert todo == ToDo(id="b", action="click", params={"n": 1}, depends_on=("a",))
    assert todo.inputs == {}


def test_credential_refs_round_trip_and_older_rows_have_none() -> None:
    todo = ToDo(id="b", action="click", credential_refs={"portal": "env:P", "api": "api.key"})

    data = json.loads(json.dumps(todo_to_data(todo)))

    assert data["credential_refs"] == {"portal": "env:P", "api": "api.key"}
    assert todo_from_data(data) == todo
    assert todo_from_data(dict(ROW_BEFORE_INPUTS)).credential_refs == {}


def test_a_session_and_a_pin_round_trip_and_rows_without_them_read_as_none() -> None:
    todo = ToDo(id="b", action="playwright", session="portal")
    data = json.loads(json.dumps(todo_to_data(todo)))
    assert data["session"] == "portal"
    assert todo_from_data(data) == todo
    assert "session" not in todo_to_data(ToDo(id="b", action="echo"))  # rows stay as they were
    assert todo_from_data(dict(ROW_BEFORE_INPUTS)).session == ""

    pinned = queued_task(
        tenant="t", job_id="j", todo=todo, attempt=1, not_before=None, agent_id="agent-1"
    )
    assert pinned.agent_id == "agent-1"
    assert queued_task_from_data(json.loads(json.dumps(queued_task_to_data(pinned)))) == pinned
    # A task without a session is never pinned by the agent of its last attempt.
    loose = queued_task(
        tenant="t",
        job_id="j",
        todo=ToDo(id="c", action="echo"),
        attempt=1,
        not_before=None,
        agent_id="agent-1",
    )
    assert loose.agent_id == ""


def test_a_session_restart_event_round_trips() -> None:
    payload = SessionRestarted(session="s", reason="gone", from_agent="a1", task_ids=("x", "y"))
    assert payload_from_data(json.loads(json.dumps(payload_to_data(payload)))) == payload
