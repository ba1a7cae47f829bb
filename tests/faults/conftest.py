"""The fault-injection suite: real replicas (`cpa serve` on PostgreSQL + Redis) and real agents
as processes (the `cluster` fixture of tests/fixtures/services.py), one fault per module, and
every test ends with `assert_sound_history` (tests/fixtures/history.py): terminal state, attempt
numbers and counts, a contiguous event log with one terminal event, no result committed twice.

Leases are 2 s and heartbeats 0.3 s (tests/fixtures/cluster.py), so a fault is noticed quickly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cpa.scheduler.v1 import job_event_pb2, job_pb2
from cpa_client import SchedulerClient
from tests.fixtures.tcp_proxy import TcpProxy

StartProxy = Callable[[str], Awaitable[TcpProxy]]


@pytest.fixture
async def proxies() -> AsyncIterator[StartProxy]:
    """Starts TCP proxies in front of host:port targets (on this event loop); closes them after."""
    started: list[TcpProxy] = []

    async def start(target: str) -> TcpProxy:
        host, port = target.rsplit(":", 1)
        proxy = TcpProxy(target_host=host, target_port=int(port))
        started.append(proxy)
        await proxy.start()
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.heal()
            await proxy.close()


async def submit(client: SchedulerClient, spec: job_pb2.JobSpec, count: int = 1) -> list[str]:
    """Schedules `count` jobs of `spec`; returns their ids in order."""
    return [(await client.schedule_job(spec)).job.job_id for _ in range(count)]


def agent_reported(task_id: str, attempt: int = 1) -> Callable[[job_event_pb2.JobEvent], bool]:
    """An event predicate: the agent running this attempt reported progress, so it has the
    assignment (a RUNNING event only says the assignment was committed)."""

    def predicate(event: job_event_pb2.JobEvent) -> bool:
        progress = event.task_progress
        return (
            event.WhichOneof("kind") == "task_progress"
            and progress.task_id == task_id
            and progress.attempt == attempt
        )

    return predicate
