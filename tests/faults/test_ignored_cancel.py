"""A task whose action ignores cancel past its timeout (stuck in a call it cannot interrupt).

The agent stops it at the timeout but the action goes on; the agent is configured to wait long
for it (a long stop grace), so only the server's enforcement can end the attempt: at timeout +
CPA_TASK_TIMEOUT_GRACE_S the attempt is TIMED_OUT (the lease is never renewed past that point),
the agent is told the attempt is no longer current, the retry policy runs the next attempt, and
when the stubborn action finally returns, its outcome is dropped and changes nothing."""

from __future__ import annotations

from google.protobuf import duration_pb2

from cpa.common.v1 import error_pb2, todo_pb2
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import agents_connected, assert_sound_history, log_line

from .conftest import submit

TIMEOUT_S = 1.0
ACTION_S = 5.0


async def test_a_task_that_ignores_cancel_past_its_timeout(cluster: Cluster) -> None:
    cluster.settings["CPA_TASK_TIMEOUT_GRACE_S"] = "0.5"
    replica = cluster.replica("r1")
    stubborn = cluster.agent("stubborn", replica, log_level="INFO", CPA_AGENT_STOP_GRACE_S="30")
    timeout = duration_pb2.Duration()
    timeout.FromNanoseconds(int(TIMEOUT_S * 1e9))
    spec = todos_spec(
        todo(
            "hang",
            "wait",
            params={"seconds": ACTION_S, "ignore_cancel": True},
            timeout=timeout,
            retry_policy=todo_pb2.RetryPolicy(max_attempts=2),
        )
    )
    async with SchedulerClient(replica.target) as client:
        await agents_connected(client, "stubborn")
        (job_id,) = await submit(client, spec)
        attempts = {"hang": [("TIMED_OUT", "TIMED_OUT")]}
        job = (
            await assert_sound_history(
                client, [job_id], expected_state=job_pb2.JOB_STATE_FAILED, attempts=attempts
            )
        )[job_id]
        # Both attempts were ended by the server, well before the action returned.
        (task,) = job.tasks
        for attempt in task.attempts:
            assert attempt.error.reason == error_pb2.ERROR_REASON_TASK_TIMEOUT
            assert "the server stopped waiting" in attempt.error.message
            ran_s = (attempt.end_time.ToNanoseconds() - attempt.start_time.ToNanoseconds()) / 1e9
            assert TIMEOUT_S <= ran_s < ACTION_S
        assert job.error.code == "TASK_TIMEOUT"
        assert job.error.reason == error_pb2.ERROR_REASON_RETRIES_EXHAUSTED
        assert job.dead_lettered

        # The agent learnt from its heartbeats that the attempts are over; when the action
        # finally returns, nothing is reported (a report would be refused as stale).
        for number in (1, 2):
            await log_line(stubborn.log, f"{job_id}/hang#{number}", "no longer current")
            await log_line(stubborn.log, f"{job_id}/hang#{number}", "not reported")
        after = await client.get_job(job_id)
        assert (after.state, after.last_event_sequence) == (job.state, job.last_event_sequence)
