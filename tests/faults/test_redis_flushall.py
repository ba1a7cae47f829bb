"""Redis wiped mid-run: queues, consumer groups and the agent directory are gone; the
reconcilers publish again what PostgreSQL holds as QUEUED, duplicates are fenced, and every task
runs exactly once.

The cluster runs on a Redis database of its own and the test wipes it with FLUSHDB: for the
cluster that is a FLUSHALL, and other users of the shared Redis server keep their keys."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import first_event, task_reached, todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import ONCE, agents_connected, assert_sound_history

from .conftest import submit

# A logical database nothing else of the test suite uses.
OWN_DATABASE = 13


async def test_redis_flushall_mid_run(cluster: Cluster) -> None:
    cluster.redis_url = urlsplit(cluster.redis_url)._replace(path=f"/{OWN_DATABASE}").geturl()
    first, second = cluster.replica("r1"), cluster.replica("r2")
    cluster.agent("worker-1", first)
    cluster.agent("worker-2", second)
    async with SchedulerClient(first.target) as client:
        await agents_connected(client, "worker-1", "worker-2")
        spec = todos_spec(
            todo("a", "wait", params={"seconds": 0.3}),
            todo("b", "noop", depends_on=["a"]),
            todo("c", "noop", depends_on=["b"]),
        )
        job_ids = await submit(client, spec, count=12)
        await first_event(client, job_ids[0], task_reached("a", job_pb2.TASK_STATE_RUNNING))
        wipe = aioredis.Redis.from_url(cluster.redis_url)
        try:
            assert await wipe.dbsize() > 0
            await wipe.flushdb()
        finally:
            await wipe.aclose()
        await assert_sound_history(client, job_ids, attempts={"a": ONCE, "b": ONCE, "c": ONCE})
        # The directory is rebuilt too: both agents are listed again.
        await agents_connected(client, "worker-1", "worker-2")
