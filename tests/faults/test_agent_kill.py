"""An agent killed with SIGKILL mid-task: its leases expire, its attempts end LOST and run again on
an agent of another replica; the tasks after them run once."""

from __future__ import annotations

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import first_event, todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import ONCE, agents_connected, assert_sound_history

from .conftest import agent_reported, submit


async def test_agent_kill_9_mid_task(cluster: Cluster) -> None:
    first, second = cluster.replica("r1"), cluster.replica("r2")
    doomed = cluster.agent("doomed", first)
    async with SchedulerClient(second.target) as client:
        await agents_connected(client, "doomed")
        spec = todos_spec(
            todo("slow", "wait", params={"seconds": 3.0}),
            todo("after", "echo", params={"n": 1}, depends_on=["slow"]),
        )
        job_ids = await submit(client, spec, count=3)
        for job_id in job_ids:  # all three run on `doomed` (4 slots)
            await first_event(client, job_id, agent_reported("slow"))
        doomed.kill()
        cluster.agent("survivor", second)

        jobs = await assert_sound_history(
            client, job_ids, attempts={"slow": [("LOST", "SUCCEEDED")], "after": ONCE}
        )
    for job in jobs.values():
        slow, after = job.tasks
        assert [a.agent_id for a in slow.attempts] == ["doomed", "survivor"]
        assert slow.attempts[0].error.code == "LOST"
        assert [a.agent_id for a in after.attempts] == ["survivor"]
        assert slow.outputs["waited_s"] == 3.0
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
