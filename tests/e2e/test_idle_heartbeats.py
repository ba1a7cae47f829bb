"""CPA_IDLE_HEARTBEAT_INTERVAL_S over real gRPC: the welcome carries it (absent by default), a
value outside its bounds is refused at start, an idle session may stay silent for two idle
intervals (longer than a lease) and no more, and an agent idle when its task arrives keeps the
task's lease: the task outlives several leases on its first attempt.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import HEARTBEAT_S, LEASE_S, Agents, finished, todo, todos_spec
from .raw_agent import RawAgentStream

# Longer than a lease: an idle agent renews no lease.
IDLE_S = 2 * LEASE_S


@pytest.fixture
def scheduler_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=LEASE_S,
        heartbeat_interval_s=HEARTBEAT_S,
        idle_heartbeat_interval_s=request.param,
    )


@pytest.mark.parametrize("scheduler_settings", [IDLE_S], indirect=True)
async def test_the_welcome_tells_the_idle_interval(raw_stream: RawAgentStream) -> None:
    welcome = await raw_stream.hello("agent-1")
    assert welcome.idle_heartbeat_interval.ToTimedelta().total_seconds() == IDLE_S
    assert welcome.heartbeat_interval.ToTimedelta().total_seconds() == HEARTBEAT_S


@pytest.mark.parametrize("scheduler_settings", [0.0], indirect=True)
async def test_by_default_the_welcome_has_no_idle_interval(raw_stream: RawAgentStream) -> None:
    welcome = await raw_stream.hello("agent-1")
    assert not welcome.HasField("idle_heartbeat_interval")


@pytest.mark.parametrize("idle_s", [HEARTBEAT_S / 2, 300.5])
def test_an_idle_interval_outside_its_bounds_is_refused(idle_s: float) -> None:
    with pytest.raises(ValidationError, match="idle_heartbeat_interval_s"):
        Settings(
            lease_duration_s=LEASE_S,
            heartbeat_interval_s=HEARTBEAT_S,
            idle_heartbeat_interval_s=idle_s,
        )


@pytest.mark.parametrize("scheduler_settings", [IDLE_S], indirect=True)
async def test_a_task_given_to_an_idle_agent_outlives_several_leases(
    agents: Agents, client: SchedulerClient
) -> None:
    agent = await agents.start("agent-1", slots=1)
    spec = todos_spec(todo("a", "wait", params={"seconds": 3 * LEASE_S}))
    job = await finished(client, (await client.schedule_job(spec)).job.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.number for a in job.tasks[0].attempts] == [1]
    assert agent.sessions_started == 1


@pytest.mark.parametrize("scheduler_settings", [IDLE_S], indirect=True)
async def test_an_idle_session_is_closed_after_two_idle_intervals_of_silence(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    loop = asyncio.get_running_loop()
    await raw_stream.hello("agent-1")
    welcomed_at = loop.time()
    # Silent from here on, holding no attempt: the server's watchdog ends the stream (the old
    # rule, a lease of silence, ended it after LEASE_S).
    async with asyncio.timeout(2 * IDLE_S + 10):
        while await raw_stream.read() is not None:
            pass
    assert loop.time() - welcomed_at >= 2 * IDLE_S - 0.1
    assert [a.agent_id async for a in client.list_agents()] == []


@pytest.mark.parametrize("scheduler_settings", [IDLE_S], indirect=True)
async def test_an_idle_session_given_an_attempt_is_closed_after_a_lease_of_silence(
    raw_stream: RawAgentStream, client: SchedulerClient
) -> None:
    # Idle, the session may be silent for two idle intervals (four leases here); once it holds
    # an attempt, a lease of silence ends it, although its watch was armed for the idle limit.
    loop = asyncio.get_running_loop()
    await raw_stream.hello("agent-1", actions=("wait",))
    await raw_stream.assigned(client, todo("a", "wait", params={"seconds": 60}))
    assigned_at = loop.time()
    async with asyncio.timeout(2 * IDLE_S + 10):
        while await raw_stream.read() is not None:
            pass
    assert loop.time() - assigned_at < 2 * LEASE_S
