"""ToDo inputs over real sockets: resolved from upstream outputs into the agent's assignment,
shown by GetJob, and a reference to an output that was never produced fails the task."""

from __future__ import annotations

from google.protobuf import json_format

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa_client import SchedulerClient

from .conftest import Agents, collect_events, finished, todo, todos_spec


def output(task_id: str, key: str) -> todo_pb2.OutputReference:
    return todo_pb2.OutputReference(task_id=task_id, output_key=key)


async def test_inputs_reach_the_executor_resolved_from_upstream_outputs(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    response = await client.schedule_job(
        todos_spec(
            todo("a", "echo", params={"x": 41, "label": "hi"}),
            todo(
                "b",
                "echo",
                depends_on=["a"],
                inputs={"value": output("a", "x"), "name": output("a", "label")},
            ),
            # Upstream through b only: a transitive dependency is upstream too.
            todo("c", "echo", depends_on=["b"], inputs={"greeting": output("a", "label")}),
        )
    )

    job = await finished(client, response.job.job_id)

    assert job.state == S.JOB_STATE_SUCCEEDED
    tasks = {task.todo.id: task for task in job.tasks}
    # The echo action returns its params plus the inputs the assignment carried.
    assert json_format.MessageToDict(tasks["b"].outputs) == {"inputs": {"value": 41, "name": "hi"}}
    assert json_format.MessageToDict(tasks["c"].outputs) == {"inputs": {"greeting": "hi"}}
    # GetJob shows the references on the tasks (the spec does not repeat the ToDos).
    assert dict(tasks["b"].todo.inputs) == {
        "value": output("a", "x"),
        "name": output("a", "label"),
    }
    assert dict(tasks["c"].todo.inputs) == {"greeting": output("a", "label")}
    assert not job.spec.todos.todos
    assert dict(tasks["a"].todo.inputs) == {}


async def test_an_output_the_upstream_did_not_produce_fails_the_task_unrun(
    client: SchedulerClient, agents: Agents
) -> None:
    # One slot: the next job only runs if the slot taken for the failed assignment came back.
    await agents.start("agent-1", slots=1)
    retrying = todo_pb2.RetryPolicy(max_attempts=5)
    response = await client.schedule_job(
        todos_spec(
            todo("a", "echo", params={"x": 41, "label": "hi"}),
            todo(
                "b",
                "echo",
                depends_on=["a"],
                inputs={"value": output("a", "x"), "missing": output("a", "nope")},
                retry_policy=retrying,
            ),
            todo("c", "noop", depends_on=["b"]),
        )
    )
    job_id = response.job.job_id

    events = await collect_events(client, job_id)
    job = await client.get_job(job_id)

    assert job.state == S.JOB_STATE_FAILED
    assert job.dead_lettered
    tasks = {task.todo.id: task for task in job.tasks}
    assert {task_id: S.TaskState.Name(task.state) for task_id, task in tasks.items()} == {
        "a": "TASK_STATE_SUCCEEDED",
        "b": "TASK_STATE_FAILED",
        "c": "TASK_STATE_SKIPPED",
    }
    b = tasks["b"]
    assert (b.error.code, b.error.reason, b.error.retryable) == (
        "UNRESOLVED_INPUT",
        error_pb2.ERROR_REASON_UNRESOLVED_INPUT,
        False,
    )
    assert b.error.message == (
        "task 'b': input 'missing' takes output 'nope' of task 'a', which did not produce it "
        "(its outputs: 'label', 'x')"
    )
    # It never ran: no attempt, despite a retry policy that allows five.
    assert (b.attempt, len(b.attempts)) == (0, 0)
    assert job.error == b.error
    b_moves = [
        (
            S.TaskState.Name(e.task_state_changed.from_state),
            S.TaskState.Name(e.task_state_changed.to_state),
        )
        for e in events
        if e.WhichOneof("kind") == "task_state_changed" and e.task_state_changed.task_id == "b"
    ]
    assert b_moves == [
        ("TASK_STATE_PENDING", "TASK_STATE_QUEUED"),
        ("TASK_STATE_QUEUED", "TASK_STATE_FAILED"),
    ]

    after = await client.schedule_job(todos_spec(todo("next", "noop")))
    assert (await finished(client, after.job.job_id)).state == S.JOB_STATE_SUCCEEDED
