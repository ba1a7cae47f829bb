"""An agent's stream cut by the network without a FIN or RST (a TCP proxy black-holes it): the
server learns of it only through the missing heartbeats, so the lease expires and the task runs
on another agent; when the partition heals, the first agent's late result is refused."""

from __future__ import annotations

from cpa.scheduler.v1 import agent_pb2, job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import first_event, todo, todos_spec
from tests.fixtures.cluster import LEASE_S, Cluster
from tests.fixtures.history import (
    ONCE,
    agents_connected,
    assert_sound_history,
    eventually,
    log_line,
)

from .conftest import StartProxy, agent_reported, submit


async def test_agent_stream_blackholed_mid_task(cluster: Cluster, proxies: StartProxy) -> None:
    replica = cluster.replica("r1")
    proxy = await proxies(replica.target)
    # One slot: while cut off it has no credit for a second assignment (that a silent agent
    # still gets new work is test_a_partitioned_agent_gets_no_new_work below).
    cut_off = cluster.agent("cut-off", proxy.address, slots=1)
    async with SchedulerClient(replica.target) as client:
        await agents_connected(client, "cut-off")
        (job_id,) = await submit(client, todos_spec(todo("work", "wait", params={"seconds": 4.0})))
        await first_event(client, job_id, agent_reported("work"))
        # A second agent, connected directly, is there before the partition: the task has
        # somewhere to go once the first one's lease expires.
        cluster.agent("direct", replica)
        await agents_connected(client, "direct")
        proxy.blackhole()

        attempts = {"work": [("LOST", "SUCCEEDED")]}
        job = (await assert_sound_history(client, [job_id], attempts=attempts))[job_id]
        (task,) = job.tasks
        assert [a.agent_id for a in task.attempts] == ["cut-off", "direct"]
        assert task.attempts[0].error.code == "LOST"
        assert proxy.blackholed  # the job ended while the first agent was still cut off

        # The partition heals: the first agent, done meanwhile, delivers its result of attempt 1.
        proxy.heal()
        refusal = await log_line(cut_off.log, "refused the result", f"{job_id}/work#1")
        assert "STALE_ATTEMPT" in refusal
        after = (await assert_sound_history(client, [job_id], attempts=attempts))[job_id]
        assert after.last_event_sequence == job.last_event_sequence
        assert after.state == job_pb2.JOB_STATE_SUCCEEDED
        assert after.tasks[0].outputs == task.outputs


async def test_a_partitioned_agent_gets_no_new_work(cluster: Cluster, proxies: StartProxy) -> None:
    """A silent agent must not keep receiving assignments: each one is lost for a whole lease
    and charged a redelivery. The server may learn of the partition only from the missing
    heartbeats; once a lease has passed without any, the agent is gone."""
    replica = cluster.replica("r1")
    proxy = await proxies(replica.target)
    cluster.agent("cut-off", proxy.address)
    cluster.agent("direct", replica)
    async with SchedulerClient(replica.target) as client:
        await agents_connected(client, "cut-off", "direct")
        proxy.blackhole()

        async def given_up() -> bool:
            states = {agent.agent_id: agent.state async for agent in client.list_agents()}
            return states.get("cut-off") != agent_pb2.AGENT_STATE_CONNECTED

        await eventually(
            given_up,
            what="the scheduler to stop counting the silent agent as connected",
            timeout_s=3 * float(LEASE_S),
        )
        job_ids = await submit(
            client, todos_spec(todo("work", "wait", params={"seconds": 0.1})), count=4
        )
        jobs = await assert_sound_history(client, job_ids, attempts={"work": ONCE})
    assert {job.tasks[0].attempts[0].agent_id for job in jobs.values()} == {"direct"}
