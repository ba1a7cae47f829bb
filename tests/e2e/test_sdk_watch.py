"""The SDK's watch() across killed connections, and gRPC's retries from the service config,
over real gRPC through a TCP proxy that resets connections (tests/fixtures/tcp_proxy.py)."""

from __future__ import annotations

import asyncio

import pytest

from cpa.scheduler.v1 import job_event_pb2
from cpa_client import NotFoundError, Reconnect, SchedulerClient, UnavailableError
from tests.fixtures.tcp_proxy import TcpProxy

from .conftest import EVENT_TIMEOUT_S, Agents, collect_events, todo, todos_spec

# Quick reconnects: the test waits for them.
QUICK = Reconnect(initial_s=0.01, max_s=0.2, give_up_s=EVENT_TIMEOUT_S)


async def test_a_killed_connection_mid_watch_resumes_with_no_gap_or_duplicate(
    client: SchedulerClient, agents: Agents, proxy: TcpProxy
) -> None:
    await agents.start("agent-1", slots=2)
    response = await client.schedule_job(
        todos_spec(
            todo("a", "wait", params={"seconds": 1.0}),
            todo("b", "echo", params={"n": 1}, depends_on=["a"]),
            todo("c", "echo", params={"n": 2}, depends_on=["a"]),
            todo("d", "noop", depends_on=["b", "c"]),
        )
    )
    job_id = response.job.job_id
    async with SchedulerClient(proxy.address, reconnect=QUICK) as watcher:
        events = watcher.watch(job_id)
        first = await asyncio.wait_for(anext(events), EVENT_TIMEOUT_S)
        assert not first.terminal
        # The connection dies and stays down while the job runs to its end: every later
        # event, the terminal one included, can reach the watcher only through a resume.
        proxy.refusing = True
        proxy.cut()
        full = await collect_events(client, job_id)

        async def rest() -> list[job_event_pb2.JobEvent]:
            return [event async for event in events]

        # Read on: the watcher finds its stream broken and tries again while refused...
        rest_read = asyncio.create_task(asyncio.wait_for(rest(), EVENT_TIMEOUT_S))
        await asyncio.wait_for(proxy.refused_one.wait(), EVENT_TIMEOUT_S)
        # ...until the scheduler is reachable again.
        proxy.refusing = False
        seen = [first, *await rest_read]
    assert seen == full
    assert [e.sequence for e in seen] == list(range(1, len(full) + 1))
    assert proxy.accepted >= 2  # it did connect again


async def test_watch_raises_what_a_reconnect_cannot_mend(client: SchedulerClient) -> None:
    with pytest.raises(NotFoundError):
        await asyncio.wait_for(anext(client.watch("no-such-job")), EVENT_TIMEOUT_S)


async def test_reads_are_retried_by_the_service_config_after_unavailable(
    client: SchedulerClient, proxy: TcpProxy
) -> None:
    job_id = (await client.schedule_job(todos_spec(todo("t", "noop")))).job.job_id
    # Without retries, a call while the scheduler looks down fails at once.
    async with SchedulerClient(proxy.address, retries=False) as plain:
        proxy.refusing = True
        with pytest.raises(UnavailableError):
            await plain.get_job(job_id)
    proxy.refusing = False
    proxy.refused_one.clear()
    async with SchedulerClient(proxy.address, timeout_s=EVENT_TIMEOUT_S) as retrying:
        proxy.refusing = True
        call = asyncio.create_task(retrying.get_job(job_id))
        await asyncio.wait_for(proxy.refused_one.wait(), EVENT_TIMEOUT_S)
        # The first attempt was refused; gRPC tries again (backing off) and gets through.
        proxy.refusing = False
        job = await call
    assert job.job_id == job_id
