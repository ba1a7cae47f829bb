"""A replica stopped with SIGTERM (distributed): it drains its agent, which finishes what it can
there, moves to the other replica with the rest still running (adopted, not run again), and the
replica exits 0 within its drain deadline plus a small grace."""

from __future__ import annotations

import asyncio
import signal
import time

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import collect_events, first_event, task_reached, todo, todos_spec
from tests.fixtures.cluster import Cluster

TIMEOUT_S = 60.0
DRAIN_S = 3.0
# Past the drain deadline: closing the streams, stopping gRPC and the background tasks, closing
# the store and the Redis client, and the interpreter's exit.
EXIT_GRACE_S = 4.0


async def _agent_on(client: SchedulerClient, agent_id: str, replica_id: str) -> None:
    """Until the agent directory says `agent_id` is connected to `replica_id`."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            replicas = {a.agent_id: a.replica_id async for a in client.list_agents()}
            if replicas.get(agent_id) == replica_id:
                return


def _attempts(job: job_pb2.Job, task_id: str) -> list[tuple[str, str]]:
    (task,) = [t for t in job.tasks if t.todo.id == task_id]
    return [(a.agent_id, job_pb2.AttemptState.Name(a.state)) for a in task.attempts]


async def test_sigterm_drains_the_replica_and_its_agent_moves_on(cluster: Cluster) -> None:
    cluster.settings["CPA_SHUTDOWN_DRAIN_S"] = str(DRAIN_S)
    stopping, staying = cluster.replica("stopping"), cluster.replica("staying")
    cluster.agent("worker", stopping, staying)  # connects to `stopping` first
    async with SchedulerClient(staying.target, timeout_s=TIMEOUT_S) as client:
        await _agent_on(client, "worker", "stopping")
        # One attempt ends within the drain (its result goes to the stopping replica), one
        # outlasts it (the agent takes it along to the other replica).
        short = (
            await client.schedule_job(todos_spec(todo("short", "wait", params={"seconds": 1.0})))
        ).job.job_id
        long = (
            await client.schedule_job(todos_spec(todo("long", "wait", params={"seconds": 6.0})))
        ).job.job_id
        for job_id, task_id in ((short, "short"), (long, "long")):
            running = await first_event(
                client, job_id, task_reached(task_id, job_pb2.TASK_STATE_RUNNING)
            )
            assert running.task_state_changed.agent_id == "worker"

        signalled = time.monotonic()
        stopping.process.send_signal(signal.SIGTERM)
        during = (await client.schedule_job(todos_spec(todo("during", "echo")))).job.job_id

        # Watched on the replica that stays: the events come through Redis.
        await asyncio.wait_for(collect_events(client, short), TIMEOUT_S)
        # Committed during the drain: the stopping replica still runs (its deadline is ahead).
        assert stopping.process.poll() is None

        code = await asyncio.to_thread(stopping.process.wait, DRAIN_S + EXIT_GRACE_S + 30)
        exited_s = time.monotonic() - signalled
        assert code == 0
        # It waited for the long attempt until the deadline, then closed the stream and exited.
        assert DRAIN_S - 0.25 <= exited_s <= DRAIN_S + EXIT_GRACE_S, exited_s

        await _agent_on(client, "worker", "staying")
        after = (await client.schedule_job(todos_spec(todo("after", "echo")))).job.job_id
        jobs = {}
        for job_id in (short, long, during, after):
            await asyncio.wait_for(collect_events(client, job_id), TIMEOUT_S)
            jobs[job_id] = await client.get_job(job_id)
            assert jobs[job_id].state == job_pb2.JOB_STATE_SUCCEEDED, jobs[job_id]
        assert _attempts(jobs[short], "short") == [("worker", "ATTEMPT_STATE_SUCCEEDED")]
        # Adopted by the other replica, not lost and run again.
        assert _attempts(jobs[long], "long") == [("worker", "ATTEMPT_STATE_SUCCEEDED")]
        assert _attempts(jobs[during], "during") == [("worker", "ATTEMPT_STATE_SUCCEEDED")]
        assert _attempts(jobs[after], "after") == [("worker", "ATTEMPT_STATE_SUCCEEDED")]
