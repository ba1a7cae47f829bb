"""WatchJob heartbeats over real gRPC: a watch that has nothing to send for CPA_WATCH_HEARTBEAT_S
gets a WatchJobResponse without event (the server's time instead), the SDK skips them, and 0
turns them off. Through a real Envoy with a short idle timeout:
tests/cli/test_gateway_heartbeats.py.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import grpc
import pytest

from cpa.scheduler.v1 import (
    job_event_pb2,
    job_pb2,
    scheduler_service_pb2,
    scheduler_service_pb2_grpc,
)
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import EVENT_TIMEOUT_S, HEARTBEAT_S, LEASE_S, Agents, Scheduler, todo, todos_spec

HEARTBEAT_INTERVAL_S = 0.2
# A task that reports nothing for this long (`wait` with ignore_cancel sends no progress).
QUIET_S = 1.5


@pytest.fixture
def scheduler_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=LEASE_S,
        heartbeat_interval_s=HEARTBEAT_S,
        watch_heartbeat_s=request.param,
    )


async def _raw_watch(target: str, job_id: str) -> list[scheduler_service_pb2.WatchJobResponse]:
    """Every WatchJobResponse of the job, heartbeats included, until the server ends the stream."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        call = stub.WatchJob(scheduler_service_pb2.WatchJobRequest(job_id=job_id))

        async def read() -> list[scheduler_service_pb2.WatchJobResponse]:
            return [response async for response in call]

        return await asyncio.wait_for(read(), EVENT_TIMEOUT_S)


async def _quiet_job(client: SchedulerClient) -> str:
    spec = todos_spec(todo("quiet", "wait", params={"seconds": QUIET_S, "ignore_cancel": True}))
    return (await client.schedule_job(spec)).job.job_id


@pytest.mark.parametrize("scheduler_settings", [HEARTBEAT_INTERVAL_S], indirect=True)
async def test_a_quiet_watch_gets_heartbeats_between_its_events(
    scheduler: Scheduler, client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    job_id = await _quiet_job(client)
    raw, sdk = await asyncio.gather(
        _raw_watch(scheduler.target, job_id),
        asyncio.wait_for(_collect(client, job_id), EVENT_TIMEOUT_S),
    )
    heartbeats = [r for r in raw if r.HasField("heartbeat")]
    events = [r.event for r in raw if r.HasField("event")]
    # Exactly one of the two in every message.
    assert len(heartbeats) + len(events) == len(raw)
    # The task ran QUIET_S without a word: several heartbeats came, each after a quiet interval
    # (the server's clock), so none is sent while events flow.
    assert len(heartbeats) >= 2, raw
    times = [h.heartbeat.ToNanoseconds() / 1e9 for h in heartbeats]
    assert all(b - a >= 0.9 * HEARTBEAT_INTERVAL_S for a, b in itertools.pairwise(times))
    # Events are untouched: every one, in order, the terminal one last.
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].terminal
    assert events[-1].job_state_changed.to_state == job_pb2.JOB_STATE_SUCCEEDED
    assert raw[-1].HasField("event")  # the stream ends with the terminal event
    # The SDK's watch_job yields the events only.
    assert sdk == events


@pytest.mark.parametrize("scheduler_settings", [0.0], indirect=True)
async def test_a_heartbeat_interval_of_zero_sends_none(
    scheduler: Scheduler, client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("agent-1")
    job_id = await _quiet_job(client)
    raw = await _raw_watch(scheduler.target, job_id)
    assert all(r.HasField("event") and not r.HasField("heartbeat") for r in raw)
    assert raw[-1].event.terminal


async def _collect(client: SchedulerClient, job_id: str) -> list[job_event_pb2.JobEvent]:
    return [event async for event in client.watch_job(job_id)]
