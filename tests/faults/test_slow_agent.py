"""A live agent that overruns its lease: it stalls (SIGSTOP, as in a long GC pause or a frozen
VM) while its task runs, so no heartbeat renews the lease. The task runs again on another agent;
when the stalled agent wakes up and reports its result, the result is refused as stale, and
exactly one success is committed."""

from __future__ import annotations

from cpa_client import SchedulerClient
from tests.e2e.conftest import first_event, todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import agents_connected, assert_sound_history, log_line

from .conftest import agent_reported, submit


async def test_stalled_agent_overruns_its_lease(cluster: Cluster) -> None:
    first, second = cluster.replica("r1"), cluster.replica("r2")
    # One slot: while it stalls it has no credit for a second assignment (that a silent agent
    # still gets new work is test_agent_partition.py::test_a_partitioned_agent_gets_no_new_work).
    stalled = cluster.agent("stalled", first, slots=1)
    async with SchedulerClient(second.target) as client:
        await agents_connected(client, "stalled")
        (job_id,) = await submit(client, todos_spec(todo("work", "wait", params={"seconds": 4.0})))
        await first_event(client, job_id, agent_reported("work"))
        cluster.agent("healthy", second)
        await agents_connected(client, "healthy")
        stalled.pause()
        try:
            attempts = {"work": [("LOST", "SUCCEEDED")]}
            job = (await assert_sound_history(client, [job_id], attempts=attempts))[job_id]
        finally:
            stalled.resume()
        (task,) = job.tasks
        assert [a.agent_id for a in task.attempts] == ["stalled", "healthy"]

        # Awake, the stalled agent finds its attempt done (its time has passed) and reports it.
        refusal = await log_line(stalled.log, "refused the result", f"{job_id}/work#1")
        assert "STALE_ATTEMPT" in refusal
        after = (await assert_sound_history(client, [job_id], attempts=attempts))[job_id]
        assert after.last_event_sequence == job.last_event_sequence
        assert after.tasks[0].outputs == task.outputs
