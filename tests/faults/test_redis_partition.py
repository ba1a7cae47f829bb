"""Redis cut off by a network partition (black-holed: no byte passes, no FIN, no RST): calls to it
fail after CPA_REDIS_TIMEOUT_S instead of hanging, ScheduleJob still answers for the jobs it
stored, and once the partition heals every job runs, each result committed once."""

from __future__ import annotations

import asyncio

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import first_event, task_reached, todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import agents_connected, assert_sound_history

from .conftest import StartProxy, submit

REDIS_TIMEOUT_S = 0.5


async def test_jobs_submitted_while_redis_is_partitioned_are_created_and_run_after(
    cluster: Cluster, proxies: StartProxy
) -> None:
    redis_url = cluster.redis_url
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    proxy = await proxies(host_port)
    cluster.redis_url = redis_url.replace(f"//{host_port}/", f"//{proxy.address}/")
    cluster.settings["CPA_REDIS_TIMEOUT_S"] = str(REDIS_TIMEOUT_S)
    try:
        # In a thread: the proxy runs on this event loop and must serve the replica's start.
        replica = await asyncio.to_thread(cluster.replica, "r1")
    finally:
        cluster.redis_url = redis_url  # the cluster's clean-up reaches Redis itself
    cluster.agent("worker", replica, slots=1)
    # The client gives up long after the Redis timeout: an answer must come from the server.
    async with SchedulerClient(replica.target, timeout_s=15) as client:
        await agents_connected(client, "worker")
        # The only slot is busy, so the jobs below go through the queue (Redis).
        [busy] = await submit(client, todos_spec(todo("a", "wait", params={"seconds": 1})))
        await first_event(client, busy, task_reached("a", job_pb2.TASK_STATE_RUNNING))

        proxy.blackhole()
        waiting = [
            await client.schedule_job(todos_spec(todo("b", "echo", params={"n": n})))
            for n in range(3)
        ]
        assert all(answer.created for answer in waiting)
        assert {answer.job.state for answer in waiting} == {job_pb2.JOB_STATE_PENDING}
        proxy.heal()

        job_ids = [busy, *(answer.job.job_id for answer in waiting)]
        await assert_sound_history(client, job_ids)
