"""Several scheduler replicas on PostgreSQL + Redis, as real processes: work submitted on one
replica runs on agents of others, is watched on a third, and survives a replica's SIGKILL, a
Redis FLUSHALL and cut PostgreSQL connections with every job SUCCEEDED exactly once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import grpc
import redis.asyncio as aioredis

from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient
from tests.e2e.conftest import collect_events, first_event, task_reached, todo, todos_spec
from tests.fixtures.tcp_proxy import TcpProxy

from .conftest import Cluster

TIMEOUT_S = 60.0


def _succeeded_once(job: job_pb2.Job) -> None:
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
    for task in job.tasks:
        wins = [a for a in task.attempts if a.state == job_pb2.ATTEMPT_STATE_SUCCEEDED]
        assert len(wins) == 1, task


async def _watch_to_the_end(client: SchedulerClient, job_id: str) -> None:
    """Follow a job to its terminal event, resuming after UNAVAILABLE as a real client would."""
    last = 0
    while True:
        try:
            async for event in client.watch_job(job_id, after_sequence=last):
                last = event.sequence
            return
        except CpaError as error:
            if error.code != grpc.StatusCode.UNAVAILABLE:
                raise


async def _all_succeed(client: SchedulerClient, job_ids: Sequence[str]) -> None:
    for job_id in job_ids:
        await asyncio.wait_for(_watch_to_the_end(client, job_id), TIMEOUT_S)
        _succeeded_once(await client.get_job(job_id))


async def test_submit_on_one_replica_run_on_others_watch_on_a_third(cluster: Cluster) -> None:
    first, second, third = (cluster.replica(n) for n in ("r1", "r2", "r3"))
    cluster.agent("agent-a", first, labels='{"pool": "a"}')
    cluster.agent("agent-b", second, labels='{"pool": "b"}')
    async with (
        SchedulerClient(third.target, timeout_s=TIMEOUT_S) as submitter,
        SchedulerClient(second.target, timeout_s=TIMEOUT_S) as watcher,
    ):
        agents: list[str] = []
        async with asyncio.timeout(TIMEOUT_S):
            while len(agents) < 2:
                agents = [a.agent_id async for a in submitter.list_agents()]
        assert agents == ["agent-a", "agent-b"]
        replicas = {a.agent_id: a.replica_id async for a in submitter.list_agents()}
        assert replicas == {"agent-a": "r1", "agent-b": "r2"}

        spec = todos_spec(
            todo("on_a", "echo", params={"x": 1}, required_labels={"pool": "a"}),
            todo(
                "on_b", "echo", params={"y": 2}, required_labels={"pool": "b"}, depends_on=["on_a"]
            ),
        )
        job_id = (await submitter.schedule_job(spec)).job.job_id
        events = await asyncio.wait_for(collect_events(watcher, job_id), TIMEOUT_S)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        job = await watcher.get_job(job_id)
        _succeeded_once(job)
        assert {t.todo.id: t.attempts[0].agent_id for t in job.tasks} == {
            "on_a": "agent-a",
            "on_b": "agent-b",
        }


async def test_kill_9_of_the_replica_holding_a_busy_agent(cluster: Cluster) -> None:
    doomed, survivor = cluster.replica("doomed"), cluster.replica("survivor")
    cluster.agent("worker", doomed, survivor)  # connects to `doomed` first
    async with SchedulerClient(survivor.target, timeout_s=TIMEOUT_S) as client:
        job_ids = [
            (
                await client.schedule_job(
                    todos_spec(
                        todo("slow", "wait", params={"seconds": 1.0}),
                        todo("after", "noop", depends_on=["slow"]),
                    )
                )
            ).job.job_id
            for _ in range(4)
        ]
        running = await first_event(
            client, job_ids[0], task_reached("slow", job_pb2.TASK_STATE_RUNNING)
        )
        assert running.task_state_changed.agent_id == "worker"
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(timeout=10)
        await _all_succeed(client, job_ids)
        agents = {a.agent_id: a.replica_id async for a in client.list_agents()}
        assert agents == {"worker": "survivor"}


async def test_redis_flushall_mid_run_loses_no_job(cluster: Cluster) -> None:
    replica = cluster.replica("r1")
    cluster.agent("worker", replica)
    async with SchedulerClient(replica.target, timeout_s=TIMEOUT_S) as client:
        job_ids = [
            (
                await client.schedule_job(
                    todos_spec(
                        todo("a", "wait", params={"seconds": 0.3}),
                        todo("b", "noop", depends_on=["a"]),
                        todo("c", "noop", depends_on=["b"]),
                    )
                )
            ).job.job_id
            for _ in range(8)
        ]
        await first_event(client, job_ids[0], task_reached("a", job_pb2.TASK_STATE_RUNNING))
        wipe = aioredis.Redis.from_url(cluster.redis_url)
        try:
            await wipe.flushall()
        finally:
            await wipe.aclose()
        await _all_succeed(client, job_ids)


async def test_cut_postgresql_connections_mid_run(cluster: Cluster) -> None:
    host, port = cluster.database_url.split("@", 1)[1].split("/", 1)[0].split(":")
    proxy = TcpProxy(target_host=host, target_port=int(port))
    proxy_port = await proxy.start()
    try:
        cluster.database_url = cluster.database_url.replace(
            f"@{host}:{port}/", f"@127.0.0.1:{proxy_port}/"
        )
        # In a thread: the proxy runs on this event loop and must serve the replica's start.
        replica = await asyncio.to_thread(cluster.replica, "r1")
        cluster.agent("worker", replica)
        async with SchedulerClient(replica.target, timeout_s=TIMEOUT_S) as client:
            spec = todos_spec(
                todo("a", "wait", params={"seconds": 0.3}),
                todo("b", "echo", params={"n": 1}, depends_on=["a"]),
            )
            job_ids = [(await client.schedule_job(spec)).job.job_id for _ in range(6)]
            await first_event(client, job_ids[0], task_reached("a", job_pb2.TASK_STATE_RUNNING))
            assert proxy.connections > 0
            proxy.cut()
            # Calls in flight may fail (UNAVAILABLE); agents re-send unacked results.
            await _all_succeed(client, job_ids)
    finally:
        await proxy.close()
