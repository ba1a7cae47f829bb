"""A cancel's reason in the distributed mode (PostgreSQL, Redis, two replicas): recorded on the job
and in its event, sent to the agent on the other replica, kept by a repeated cancel."""

from __future__ import annotations

from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import todo, todos_spec
from tests.e2e.raw_agent import RawAgentStream
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import TIMEOUT_S

REASON = "customer withdrew — ticket #7 ✓"


async def test_the_reason_reaches_the_agent_on_another_replica_and_is_stored(
    cluster: Cluster,
) -> None:
    first, second = cluster.replica("r1"), cluster.replica("r2")
    agent = RawAgentStream(second.target)
    try:
        await agent.hello("agent-1")
        agent.send(ex.ConnectRequest(credit=ex.Credit(slots=1)))
        async with (
            SchedulerClient(first.target, timeout_s=TIMEOUT_S) as client,
            SchedulerClient(second.target, timeout_s=TIMEOUT_S) as other,
        ):
            job_id = (await client.schedule_job(todos_spec(todo("a", "noop")))).job.job_id
            assignment = (await agent.read_until("assignment")).assignment

            answered = await client.cancel_job(job_id, reason=REASON)
            assert (answered.cancel_requested, answered.cancel_reason) == (True, REASON)
            cancel = (await agent.read_until("cancel")).cancel
            assert (cancel.job_id, cancel.attempt, cancel.reason) == (
                job_id,
                assignment.attempt,
                REASON,
            )
            stopped = ex.Result(job_id=job_id, task_id="a", attempt=cancel.attempt, cancelled=True)
            agent.send(ex.ConnectRequest(report_id=1, result=stopped))
            assert (await agent.read_until("report_ack")).report_ack.accepted

            events = [e async for e in other.watch_job(job_id)]
            # Idempotent across replicas: the second cancel keeps the first reason, adds nothing.
            again = await other.cancel_job(job_id, reason="second thoughts")
            assert (again.state, again.cancel_reason) == (job_pb2.JOB_STATE_CANCELLED, REASON)
            assert [e async for e in client.watch_job(job_id)] == events
    finally:
        await agent.close()
    requested = [
        e.job_cancel_requested.reason for e in events if e.HasField("job_cancel_requested")
    ]
    assert requested == [REASON]
    assert events[-1].job_state_changed.to_state == job_pb2.JOB_STATE_CANCELLED
