"""A replica killed with SIGKILL mid-dispatch (a burst of work queued, its agent busy): the agent
reconnects to another replica, which adopts the attempt it runs, takes over the stream entries
the dead one had read, and re-runs (once) what was assigned but never delivered."""

from __future__ import annotations

from datetime import UTC, datetime

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import first_event, task_reached, todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import (
    ONCE_OR_AFTER_A_LOSS,
    agents_connected,
    assert_sound_history,
    attempt_states,
)

from .conftest import submit

SLOTS = 8
JOBS = 3 * SLOTS


async def test_replica_kill_9_mid_dispatch(cluster: Cluster) -> None:
    doomed, survivor = cluster.replica("doomed"), cluster.replica("survivor")
    cluster.agent("worker", doomed, survivor, slots=SLOTS)  # connects to `doomed` first
    async with SchedulerClient(survivor.target) as client:
        await agents_connected(client, "worker")
        spec = todos_spec(
            todo("slow", "wait", params={"seconds": 1.0}),
            todo("after", "noop", depends_on=["slow"]),
        )
        job_ids = await submit(client, spec, count=JOBS)
        running = await first_event(
            client, job_ids[0], task_reached("slow", job_pb2.TASK_STATE_RUNNING)
        )
        assert running.task_state_changed.agent_id == "worker"
        doomed.kill()
        killed = datetime.now(UTC)

        attempts = {"slow": ONCE_OR_AFTER_A_LOSS, "after": ONCE_OR_AFTER_A_LOSS}
        jobs = await assert_sound_history(client, job_ids, attempts=attempts)
        replicas = {a.agent_id: a.replica_id async for a in client.list_agents()}
    assert replicas == {"worker": "survivor"}
    slow = [job.tasks[0] for job in jobs.values()]
    # Attempts running on the agent when its replica died were adopted, not run again ...
    adopted = [
        t
        for t in slow
        if attempt_states(t) == ("SUCCEEDED",)
        and t.attempts[0].start_time.ToDatetime(tzinfo=UTC) < killed
    ]
    assert adopted
    # ... and the rest of the burst, still queued at the kill, was dispatched by the survivor.
    assert slow[-1].attempts[-1].start_time.ToDatetime(tzinfo=UTC) > killed
