"""WatchJob: replay from a sequence, live follow, end at the terminal event."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient

from .conftest import Agents, collect_events, first_event, task_reached, todo, todos_spec


async def test_resuming_from_a_sequence_yields_exactly_the_missing_events(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1", slots=2)
    response = await client.schedule_job(
        todos_spec(
            todo("a", "wait", params={"seconds": 0.2}),
            todo("b", "echo", params={"n": 1}, depends_on=["a"]),
            todo("c", "echo", params={"n": 2}, depends_on=["a"]),
        )
    )
    job_id = response.job.job_id
    full = await collect_events(client, job_id)
    sequences = [e.sequence for e in full]
    assert sequences == list(range(1, len(full) + 1))
    assert [e.terminal for e in full] == [False] * (len(full) - 1) + [True]
    for resume_after in (0, 1, len(full) // 2, len(full) - 1):
        resumed = await collect_events(client, job_id, after_sequence=resume_after)
        assert resumed == full[resume_after:]


async def test_a_watcher_that_joins_mid_run_sees_history_then_live_events(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    response = await client.schedule_job(
        todos_spec(
            todo("slow", "wait", params={"seconds": 0.5}), todo("next", "noop", depends_on=["slow"])
        )
    )
    job_id = response.job.job_id
    seen = await first_event(client, job_id, task_reached("slow", job_pb2.TASK_STATE_RUNNING))
    # Joins after `seen` was stored: the rest arrives live, without gap or repeat.
    rest = await collect_events(client, job_id, after_sequence=seen.sequence)
    assert [e.sequence for e in rest] == list(range(seen.sequence + 1, rest[-1].sequence + 1))
    assert rest[-1].job_state_changed.to_state == job_pb2.JOB_STATE_SUCCEEDED


async def test_watching_a_finished_job_from_its_end_returns_at_once(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    response = await client.schedule_job(todos_spec(todo("only", "noop")))
    events = await collect_events(client, response.job.job_id)
    nothing = await asyncio.wait_for(
        collect_events(client, response.job.job_id, after_sequence=events[-1].sequence), 5
    )
    assert nothing == []


async def test_watch_of_an_unknown_job_is_not_found(client: SchedulerClient) -> None:
    with pytest.raises(CpaError) as caught:
        await collect_events(client, "no-such-job")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "JOB_NOT_FOUND"


async def test_negative_after_sequence_is_invalid(client: SchedulerClient) -> None:
    with pytest.raises(CpaError) as caught:
        await collect_events(client, "any", after_sequence=-1)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["after_sequence"]
