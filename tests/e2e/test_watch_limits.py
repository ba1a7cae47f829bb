"""WatchJob under pressure, over real sockets: a watcher that does not read costs the server a
bounded amount and still gets every state change and the terminal event, in order, once it
reads; the number of open streams is bounded per tenant and per replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa.scheduler.v1 import job_event_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from cpa_agent import Agent, AgentSettings, ExecutionContext, builtin_registry
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import (
    EVENT_TIMEOUT_S,
    HEARTBEAT_S,
    LEASE_S,
    Scheduler,
    collect_events,
    todo,
    todos_spec,
)

BUFFER = 16
PROGRESS_EVENTS = 300


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=LEASE_S,
        heartbeat_interval_s=HEARTBEAT_S,
        watch_buffer_events=BUFFER,
        max_watchers_per_tenant=3,
        max_watchers_per_replica=4,
    )


class Chatty:
    """Once the test says go, reports PROGRESS_EVENTS progress events, then waits until the test
    releases it."""

    action = "chatty"

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        await self.go.wait()
        for n in range(1, PROGRESS_EVENTS + 1):
            await ctx.progress(100.0 * n / PROGRESS_EVENTS, f"step {n}")
        await self.release.wait()
        return {}


@pytest.fixture
async def chatty(scheduler: Scheduler) -> AsyncIterator[Chatty]:
    executor = Chatty()
    registry = builtin_registry()
    registry.register(executor)
    agent = Agent(
        settings=AgentSettings(server=scheduler.target, agent_id="chatty-agent", slots=2),
        registry=registry,
    )
    task = asyncio.create_task(agent.async_run())
    await asyncio.wait_for(agent.connected.wait(), EVENT_TIMEOUT_S)
    try:
        yield executor
    finally:
        executor.go.set()
        executor.release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def stalled_watch(
    target: str, job_id: str
) -> tuple[grpc.aio.Channel, grpc.aio.UnaryStreamCall[Any, Any]]:
    """A WatchJob call nobody reads yet; a small receive window makes the server's writes wait
    for the reader, as a slow client's would."""
    channel = grpc.aio.insecure_channel(
        target, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    )
    stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
    call = stub.WatchJob(scheduler_service_pb2.WatchJobRequest(job_id=job_id))
    return channel, call


async def wait_for_progress(client: SchedulerClient, job_id: str, message: str) -> int:
    """The sequence of the job's progress event with `message` (stored, so published)."""

    async def run() -> int:
        async for event in client.watch_job(job_id):
            if event.task_progress.message == message:
                return event.sequence
        raise AssertionError("the job ended first")

    return await asyncio.wait_for(run(), EVENT_TIMEOUT_S)


def kinds(events: list[job_event_pb2.JobEvent]) -> list[tuple[int, str]]:
    return [(e.sequence, e.WhichOneof("kind") or "") for e in events]


async def test_a_watcher_that_does_not_read_is_bounded_and_gets_every_state_change_in_order(
    scheduler: Scheduler, client: SchedulerClient, chatty: Chatty
) -> None:
    response = await client.schedule_job(
        todos_spec(todo("talk", "chatty"), todo("after", "noop", depends_on=["talk"]))
    )
    job_id = response.job.job_id
    channel, stalled = stalled_watch(scheduler.target, job_id)
    watchers = scheduler.server.watchers
    try:
        # The events come once the stalled watcher follows the live feed.
        await asyncio.wait_for(_until(lambda: watchers.count == 1), EVENT_TIMEOUT_S)
        chatty.go.set()
        await wait_for_progress(client, job_id, f"step {PROGRESS_EVENTS}")
        # Hundreds of events went by: the stalled watcher holds a position in a log of at
        # most BUFFER entries, nothing more.
        assert watchers.buffered() <= BUFFER
        assert all(s.behind <= BUFFER for s in watchers.subscriptions())
        # It fell behind that log (its writes wait for a reader): it goes back to the store.
        assert max(s.rereads for s in watchers.subscriptions()) >= 1

        chatty.release.set()
        stored = await collect_events(client, job_id)  # the whole history, to the end
        received = []
        async for response in stalled:
            received.append(response.event)
    finally:
        await channel.close(grace=None)

    sequences = [e.sequence for e in received]
    assert sequences == sorted(set(sequences)), "in order, no repeats"
    state_changes = [e for e in stored if e.WhichOneof("kind") != "task_progress"]
    assert kinds([e for e in received if e.WhichOneof("kind") != "task_progress"]) == kinds(
        state_changes
    )
    assert received[-1].terminal
    assert received[-1].sequence == stored[-1].sequence
    # Served from the store again while following live, progress is coalesced as in the live
    # log: the latest of the task arrives, not the hundreds it fell behind by.
    progress = [e.task_progress.message for e in received if e.HasField("task_progress")]
    assert f"step {PROGRESS_EVENTS}" in progress
    assert len(progress) < PROGRESS_EVENTS // 2, f"{len(progress)} progress events delivered"


async def test_watch_streams_are_bounded_per_tenant_and_per_replica(
    scheduler: Scheduler, client: SchedulerClient, chatty: Chatty
) -> None:
    job_id = (await client.schedule_job(todos_spec(todo("talk", "chatty")))).job.job_id
    tenant_b = (("x-cpa-tenant", "tenant-b"),)
    async with SchedulerClient(scheduler.target, metadata=dict(tenant_b)) as other_tenant:
        other_job = (await other_tenant.schedule_job(todos_spec(todo("x", "chatty")))).job.job_id
    channel = grpc.aio.insecure_channel(scheduler.target)
    stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)

    async def open_watch(job: str, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
        call = stub.WatchJob(scheduler_service_pb2.WatchJobRequest(job_id=job), metadata=metadata)
        try:
            await asyncio.wait_for(call.read(), EVENT_TIMEOUT_S)  # open: its first event came
        except grpc.aio.AioRpcError as error:
            raise CpaError.from_rpc_error(error) from None
        return call

    try:
        first = await open_watch(job_id)
        others = [await open_watch(job_id), await open_watch(job_id)]
        with pytest.raises(CpaError) as tenant_full:
            await open_watch(job_id)
        assert tenant_full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert tenant_full.value.reason == "TOO_MANY_WATCHERS"

        # Another tenant still has room, until the replica's bound.
        others.append(await open_watch(other_job, tenant_b))
        with pytest.raises(CpaError) as replica_full:
            await open_watch(other_job, tenant_b)
        assert replica_full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert replica_full.value.reason == "TOO_MANY_WATCHERS"

        # A closed stream frees its place.
        first.cancel()
        await asyncio.wait_for(_until(lambda: scheduler.server.watchers.count == 3), 10)
        others.append(await open_watch(job_id))
        for call in others:
            call.cancel()
    finally:
        await channel.close(grace=None)


async def _until(condition: Any) -> None:
    """Polls a condition the server changes without telling anyone (bounded by the caller)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
