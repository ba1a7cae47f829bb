"""Every PostgreSQL connection of a replica cut (TCP RST) mid-run: calls in flight fail, the pool
opens new connections, agents send unacknowledged results again, and every job still ends
SUCCEEDED with each result committed once."""

from __future__ import annotations

import asyncio

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import first_event, task_reached, todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import ONCE_OR_AFTER_A_LOSS, agents_connected, assert_sound_history

from .conftest import StartProxy, submit


async def test_postgres_connections_cut_mid_run(cluster: Cluster, proxies: StartProxy) -> None:
    host_port = cluster.database_url.split("@", 1)[1].split("/", 1)[0]
    proxy = await proxies(host_port)
    cluster.database_url = cluster.database_url.replace(f"@{host_port}/", f"@{proxy.address}/")
    # In a thread: the proxy runs on this event loop and must serve the replica's start.
    replica = await asyncio.to_thread(cluster.replica, "r1")
    cluster.agent("worker", replica)
    async with SchedulerClient(replica.target) as client:
        await agents_connected(client, "worker")
        spec = todos_spec(
            todo("a", "wait", params={"seconds": 0.3}),
            todo("b", "echo", params={"n": 1}, depends_on=["a"]),
        )
        job_ids = await submit(client, spec, count=6)
        await first_event(client, job_ids[0], task_reached("a", job_pb2.TASK_STATE_RUNNING))
        connections = proxy.connections
        assert connections > 0
        proxy.cut()
        # A commit whose answer was cut off may have happened: an assignment the agent never
        # received is lost once, then runs again.
        attempts = {"a": ONCE_OR_AFTER_A_LOSS, "b": ONCE_OR_AFTER_A_LOSS}
        await assert_sound_history(client, job_ids, attempts=attempts)
    assert proxy.connections > 0  # the replica reconnected through the proxy
