"""Several scheduler replicas on PostgreSQL + Redis, as real processes: work submitted on one
replica runs on agents of others and is watched on a third. (What happens when a replica, Redis
or PostgreSQL fails is the fault suite's business: tests/faults/.)"""

from __future__ import annotations

import asyncio

from google.protobuf import duration_pb2

from cpa.common.v1 import error_pb2
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import collect_events, todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import ONCE, agents_connected, assert_sound_history

TIMEOUT_S = 60.0


async def test_submit_on_one_replica_run_on_others_watch_on_a_third(cluster: Cluster) -> None:
    first, second, third = (cluster.replica(n) for n in ("r1", "r2", "r3"))
    cluster.agent("agent-a", first, labels='{"pool": "a"}')
    cluster.agent("agent-b", second, labels='{"pool": "b"}')
    async with (
        SchedulerClient(third.target, timeout_s=TIMEOUT_S) as submitter,
        SchedulerClient(second.target, timeout_s=TIMEOUT_S) as watcher,
    ):
        await agents_connected(submitter, "agent-a", "agent-b")
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
        # Live, through the watcher's replica: every event in order, the terminal one last.
        events = await asyncio.wait_for(collect_events(watcher, job_id), TIMEOUT_S)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        job = (
            await assert_sound_history(watcher, [job_id], attempts={"on_a": ONCE, "on_b": ONCE})
        )[job_id]
        assert {t.todo.id: t.attempts[0].agent_id for t in job.tasks} == {
            "on_a": "agent-a",
            "on_b": "agent-b",
        }


async def test_a_task_no_agent_of_any_replica_can_take_names_what_they_lack(
    cluster: Cluster,
) -> None:
    first, second = cluster.replica("r1"), cluster.replica("r2")
    cluster.agent("cpu-only", first, CPA_AGENT_CAPABILITIES='["browser"]')
    seconds = duration_pb2.Duration(seconds=1)
    async with SchedulerClient(second.target, timeout_s=TIMEOUT_S) as client:
        await agents_connected(client, "cpu-only")
        spec = todos_spec(
            todo("render", "noop", required_capabilities=["gpu"], schedule_to_start_timeout=seconds)
        )
        job_id = (await client.schedule_job(spec)).job.job_id
        job = (
            await assert_sound_history(
                client, [job_id], expected_state=job_pb2.JOB_STATE_FAILED, attempts={"render": [()]}
            )
        )[job_id]
        (task,) = job.tasks
        assert task.error.reason == error_pb2.ERROR_REASON_SCHEDULE_TO_START_TIMEOUT
        # The agent is on the other replica: the explanation comes from the shared directory.
        assert "agent 'cpu-only' lacks capabilities gpu" in task.error.message


async def test_a_batch_repeated_on_another_replica_returns_the_jobs_of_the_first(
    cluster: Cluster,
) -> None:
    first, second = cluster.replica("r1"), cluster.replica("r2")
    cluster.agent("agent-a", first)
    requests = [
        scheduler_service_pb2.ScheduleJobRequest(
            request_id=f"req-{n}", spec=todos_spec(todo("a", "echo", params={"n": n}))
        )
        for n in range(10)
    ]
    async with (
        SchedulerClient(first.target, timeout_s=TIMEOUT_S) as on_first,
        SchedulerClient(second.target, timeout_s=TIMEOUT_S) as on_second,
    ):
        await agents_connected(on_first, "agent-a")
        created = await on_first.batch_schedule_jobs(requests)
        # The same batch on another replica, e.g. a client retrying after a lost answer.
        repeated = await on_second.batch_schedule_jobs(requests)

        assert [r.created for r in created] == [True] * 10
        assert [r.created for r in repeated] == [False] * 10
        job_ids = [r.job.job_id for r in created]
        assert [r.job.job_id for r in repeated] == job_ids
        jobs = await assert_sound_history(on_second, job_ids, attempts={"a": ONCE})
        assert [jobs[job_id].tasks[0].outputs["n"] for job_id in job_ids] == list(range(10))
