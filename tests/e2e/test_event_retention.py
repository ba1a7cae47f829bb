"""Event retention over real sockets: once a finished job's events are older than the retention,
the sweeper deletes all but the terminal one, and WatchJob answers that one event only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import (
    EVENT_TIMEOUT_S,
    HEARTBEAT_S,
    LEASE_S,
    Agents,
    collect_events,
    todo,
    todos_spec,
)


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=LEASE_S,
        heartbeat_interval_s=HEARTBEAT_S,
        event_retention_s=0.001,  # the sweeper (every LEASE_S / 4) prunes a job once it ends
    )


async def test_watching_a_pruned_job_answers_its_terminal_event_only(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    job_id = (
        await client.schedule_job(
            todos_spec(todo("a", "noop"), todo("b", "noop", depends_on=["a"]))
        )
    ).job.job_id
    history = await collect_events(client, job_id)
    assert len(history) > 1

    async def pruned() -> list[int]:
        # Nothing announces a sweep: read again until it has run (bounded by the caller).
        while len(events := await collect_events(client, job_id)) > 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return [e.sequence for e in events]

    assert await asyncio.wait_for(pruned(), EVENT_TIMEOUT_S) == [history[-1].sequence]
    [kept] = await collect_events(client, job_id)
    assert kept.terminal
    assert kept.job_state_changed.to_state == job_pb2.JOB_STATE_SUCCEEDED
    # From the job's end it answers nothing and ends at once; the job itself is unchanged.
    assert await collect_events(client, job_id, after_sequence=kept.sequence) == []
    job = await client.get_job(job_id)
    assert (job.state, job.last_event_sequence) == (job_pb2.JOB_STATE_SUCCEEDED, kept.sequence)
