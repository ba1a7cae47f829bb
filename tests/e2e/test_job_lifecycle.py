"""A job over real sockets: outputs, parallel branches, failure, retry, cancel."""

from __future__ import annotations

import asyncio

from google.protobuf import duration_pb2

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa_client import SchedulerClient

from .conftest import (
    Agents,
    collect_events,
    finished,
    first_event,
    task_reached,
    todo,
    todos_spec,
)


async def test_job_runs_on_an_agent_and_outputs_are_visible(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    response = await client.schedule_job(
        todos_spec(
            todo("fetch", "echo", params={"invoice": "42"}),
            todo("mail", "echo", params={"to": "ap@example.com"}, depends_on=["fetch"]),
        )
    )
    assert response.created
    job = await finished(client, response.job.job_id)
    assert job.state == S.JOB_STATE_SUCCEEDED
    outputs = {task.todo.id: dict(task.outputs) for task in job.tasks}
    assert outputs == {"fetch": {"invoice": "42"}, "mail": {"to": "ap@example.com"}}
    assert [len(task.attempts) for task in job.tasks] == [1, 1]
    assert all(t.attempts[0].agent_id == "agent-1" for t in job.tasks)


async def test_parallel_branches_run_at_the_same_time(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1", slots=4)
    response = await client.schedule_job(
        todos_spec(
            todo("left", "wait", params={"seconds": 0.4}),
            todo("right", "wait", params={"seconds": 0.4}),
            todo("join", "noop", depends_on=["left", "right"]),
        )
    )
    events = await collect_events(client, response.job.job_id)
    running: set[str] = set()
    both_running = False
    order = []
    for event in events:
        if event.WhichOneof("kind") != "task_state_changed":
            continue
        change = event.task_state_changed
        order.append((change.task_id, S.TaskState.Name(change.to_state)))
        if change.to_state == S.TASK_STATE_RUNNING:
            running.add(change.task_id)
        elif change.task_id in running:
            running.discard(change.task_id)
        both_running = both_running or {"left", "right"} <= running
    assert both_running, order
    # The join is queued only after both branches succeeded.
    join_queued = order.index(("join", "TASK_STATE_QUEUED"))
    assert order.index(("left", "TASK_STATE_SUCCEEDED")) < join_queued
    assert order.index(("right", "TASK_STATE_SUCCEEDED")) < join_queued


async def test_failure_skips_dependents_and_fails_the_job(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    response = await client.schedule_job(
        todos_spec(
            todo("login", "fail", params={"code": "LOGIN_FAILED", "message": "wrong password"}),
            todo("download", "noop", depends_on=["login"]),
            todo("mail", "noop", depends_on=["download"]),
            todo("audit", "echo", params={"note": "independent"}),
        )
    )
    job = await finished(client, response.job.job_id)
    states = {task.todo.id: S.TaskState.Name(task.state) for task in job.tasks}
    assert states == {
        "login": "TASK_STATE_FAILED",
        "download": "TASK_STATE_SKIPPED",
        "mail": "TASK_STATE_SKIPPED",
        "audit": "TASK_STATE_SUCCEEDED",
    }
    assert job.state == S.JOB_STATE_FAILED
    assert (job.error.code, job.error.message) == ("LOGIN_FAILED", "wrong password")
    assert job.dead_lettered
    skipped = next(t for t in job.tasks if t.todo.id == "download")
    assert skipped.error.code == "UPSTREAM_FAILED"


async def test_a_new_job_starts_on_an_idle_agent_in_its_creating_transaction(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("idle", slots=1)
    response = await client.schedule_job(todos_spec(todo("now", "wait", params={"seconds": 1})))
    # Already RUNNING in the answer: assigned with the creation, no trip through the queue.
    (task,) = response.job.tasks
    assert (task.state, [a.agent_id for a in task.attempts]) == (S.TASK_STATE_RUNNING, ["idle"])
    # The agent's only slot is taken: the next job waits QUEUED, then runs after the first.
    second = await client.schedule_job(todos_spec(todo("later", "noop")))
    assert second.job.tasks[0].state == S.TASK_STATE_QUEUED
    for job_id in (response.job.job_id, second.job.job_id):
        assert (await finished(client, job_id)).state == S.JOB_STATE_SUCCEEDED


async def test_an_attempt_past_its_timeout_is_stopped_by_the_agent_and_retried(
    client: SchedulerClient, agents: Agents
) -> None:
    agent = await agents.start("agent-1")
    half_a_second = duration_pb2.Duration(nanos=500_000_000)
    policy = todo_pb2.RetryPolicy(max_attempts=2, initial_backoff=half_a_second)
    response = await client.schedule_job(
        todos_spec(
            todo("slow", "wait", params={"seconds": 60}, timeout=half_a_second, retry_policy=policy)
        )
    )
    job = await finished(client, response.job.job_id)
    assert job.state == S.JOB_STATE_FAILED
    (task,) = job.tasks
    assert [S.AttemptState.Name(a.state) for a in task.attempts] == [
        "ATTEMPT_STATE_TIMED_OUT",
        "ATTEMPT_STATE_TIMED_OUT",
    ]
    for attempt in task.attempts:
        # Stopped and reported by the agent (the server would say it stopped waiting).
        assert attempt.error.reason == error_pb2.ERROR_REASON_TASK_TIMEOUT
        assert attempt.error.message == "attempt ran longer than its timeout of 0.5s"
    assert (job.error.code, job.error.reason) == (
        "TASK_TIMEOUT",
        error_pb2.ERROR_REASON_RETRIES_EXHAUSTED,
    )
    assert not agent.running_attempts


async def test_retry_job_reruns_only_what_did_not_succeed(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    response = await client.schedule_job(
        todos_spec(
            todo("fetch", "echo", params={"document": "invoice-42.pdf"}),
            # Fails (not retryable) on attempt 1 only: the re-drive's attempt 2 succeeds.
            todo("upload", "fail", params={"until_attempt": 1}, depends_on=["fetch"]),
            todo("notify", "echo", params={"to": "ap"}, depends_on=["upload"]),
        )
    )
    job_id = response.job.job_id
    first = await finished(client, job_id)
    assert first.state == S.JOB_STATE_FAILED
    last_sequence = first.last_event_sequence

    retried = await client.retry_job(job_id)
    assert retried.retry_count == 1
    assert not retried.dead_lettered
    await collect_events(client, job_id, after_sequence=last_sequence)
    job = await client.get_job(job_id)
    assert job.state == S.JOB_STATE_SUCCEEDED
    tasks = {task.todo.id: task for task in job.tasks}
    # The succeeded task did not run again and kept its outputs.
    assert len(tasks["fetch"].attempts) == 1
    assert dict(tasks["fetch"].outputs) == {"document": "invoice-42.pdf"}
    assert [a.number for a in tasks["upload"].attempts] == [1, 2]
    assert [S.AttemptState.Name(a.state) for a in tasks["upload"].attempts] == [
        "ATTEMPT_STATE_FAILED",
        "ATTEMPT_STATE_SUCCEEDED",
    ]
    assert dict(tasks["upload"].outputs) == {"attempt": 2.0}
    assert len(tasks["notify"].attempts) == 1


async def test_cancel_reaches_the_running_task_and_the_job_ends_cancelled(
    client: SchedulerClient, agents: Agents
) -> None:
    agent = await agents.start("agent-1")
    response = await client.schedule_job(
        todos_spec(
            todo("long", "wait", params={"seconds": 60}),
            todo("after", "noop", depends_on=["long"]),
        )
    )
    job_id = response.job.job_id
    await first_event(client, job_id, task_reached("long", S.TASK_STATE_RUNNING))
    cancelling = await client.cancel_job(job_id)
    assert cancelling.cancel_requested
    job = await asyncio.wait_for(finished(client, job_id), 10)
    assert job.state == S.JOB_STATE_CANCELLED
    tasks = {task.todo.id: task for task in job.tasks}
    assert tasks["long"].state == S.TASK_STATE_CANCELLED
    assert tasks["long"].attempts[0].state == S.ATTEMPT_STATE_CANCELLED
    assert tasks["after"].state == S.TASK_STATE_CANCELLED
    # The agent really stopped the action: nothing runs there any more.
    assert not agent.running_attempts
