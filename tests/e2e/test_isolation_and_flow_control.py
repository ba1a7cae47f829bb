"""Tenants see only their own jobs; an agent never gets more attempts than it has credits for;
list filters on intent and creation time."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import struct_pb2

from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient

from .conftest import Agents, Scheduler, collect_events, todo, todos_spec


async def test_a_tenant_cannot_see_or_touch_another_tenants_job(scheduler: Scheduler) -> None:
    async with (
        SchedulerClient(scheduler.target, metadata={"x-cpa-tenant": "acme"}) as acme,
        SchedulerClient(scheduler.target, metadata={"x-cpa-tenant": "globex"}) as globex,
    ):
        job = (await acme.schedule_job(todos_spec(todo("a", "noop")))).job
        assert job.tenant == "acme"
        for call in (globex.get_job, globex.cancel_job, globex.retry_job):
            with pytest.raises(CpaError) as caught:
                await call(job.job_id)
            assert (caught.value.code, caught.value.reason) == (
                grpc.StatusCode.NOT_FOUND,
                "JOB_NOT_FOUND",
            )
        assert [j.job_id async for j in globex.list_jobs()] == []
        assert [j.job_id async for j in acme.list_jobs()] == [job.job_id]


async def test_an_agent_with_one_slot_runs_one_attempt_at_a_time(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("single", slots=1)
    response = await client.schedule_job(
        todos_spec(*(todo(f"t{n}", "wait", params={"seconds": 0.1}) for n in range(4)))
    )
    events = await collect_events(client, response.job.job_id)
    running: set[str] = set()
    most = 0
    for event in events:
        if event.WhichOneof("kind") != "task_state_changed":
            continue
        change = event.task_state_changed
        if change.to_state == job_pb2.TASK_STATE_RUNNING:
            running.add(change.task_id)
        elif change.from_state == job_pb2.TASK_STATE_RUNNING:
            running.discard(change.task_id)
        most = max(most, len(running))
    assert most == 1
    assert events[-1].job_state_changed.to_state == job_pb2.JOB_STATE_SUCCEEDED


async def test_list_filters_on_intent_and_creation_time(client: SchedulerClient) -> None:
    before = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    by_intent = (
        await client.schedule_job(
            job_pb2.JobSpec(
                intent=job_pb2.IntentInvocation(
                    name="send_mail",
                    parameters=struct_pb2.Struct(
                        fields={"recipient": struct_pb2.Value(string_value="bob@example.com")}
                    ),
                )
            )
        )
    ).job
    explicit = (await client.schedule_job(todos_spec(todo("a", "noop")))).job
    assert [j.job_id async for j in client.list_jobs(filter='intent = "send_mail"')] == [
        by_intent.job_id
    ]
    recent = [j.job_id async for j in client.list_jobs(filter=f'create_time >= "{before}"')]
    assert recent == [explicit.job_id, by_intent.job_id]
    assert [j async for j in client.list_jobs(filter=f'create_time < "{before}"')] == []
