"""Context memory end to end in the embedded server: free-text jobs that ran on a real agent are
remembered when they end, and SearchMemory/PutMemory serve the caller's tenant only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2, memory_pb2
from cpa.scheduler.v1 import scheduler_service_pb2_grpc as grpc_stubs
from cpa_client import SchedulerClient
from cpa_scheduler.memory.sqlite_vec_memory import SqliteVecMemory
from cpa_scheduler.settings import Settings

from .conftest import EVENT_TIMEOUT_S, Agents, Scheduler, finished

# The generated stub's annotations are the synchronous ones; on an aio channel it awaits.
Stub = Any

_CATALOG = """
intents:
  - name: archive_reports
    description: Archive the weekly reports.
    patterns:
      - keywords: [archive, reports]
    tasks:
      - id: collect
        action: noop
      - id: store
        action: noop
        depends_on: [collect]
  - name: sync_ledger
    description: Sync the ledger with the bank.
    patterns:
      - keywords: [sync, ledger]
    tasks:
      - id: sync
        action: fail
        params: {code: BANK_DOWN, message: the bank refused the login}
"""


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    catalog = tmp_path / "intents.yaml"
    catalog.write_text(_CATALOG)
    return Settings(data_dir=tmp_path / "data", intents_path=catalog)


@pytest.fixture
async def stub(scheduler: Scheduler) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        yield grpc_stubs.SchedulerServiceStub(channel)


def _as(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-cpa-tenant", tenant),)


async def test_finished_free_text_jobs_are_remembered_and_found_by_a_paraphrase(
    scheduler: Scheduler,
    client: SchedulerClient,
    agents: Agents,
    stub: Stub,
) -> None:
    await agents.start("worker")
    ok = await client.schedule_job(job_pb2.JobSpec(text="archive the weekly sales reports"))
    bad = await client.schedule_job(job_pb2.JobSpec(text="sync the ledger with the bank"))
    assert (await finished(client, ok.job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED
    assert (await finished(client, bad.job.job_id)).state == job_pb2.JOB_STATE_FAILED
    memory = scheduler.server.memory
    assert memory is not None
    await asyncio.wait_for(memory.recorder.drained(), EVENT_TIMEOUT_S)

    found = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(text="reports of the week: archive them", k=2),
        metadata=_as(scheduler.server.settings.default_tenant),
    )

    first = found.hits[0].record
    assert first.memory_id == f"job:{ok.job.job_id}"
    assert first.outcome == memory_pb2.MEMORY_OUTCOME_SUCCEEDED
    assert [json_format.MessageToDict(step)["id"] for step in first.plan] == ["collect", "store"]
    failures = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(
            text="ledger sync", outcome=memory_pb2.MEMORY_OUTCOME_FAILED
        ),
        metadata=_as(scheduler.server.settings.default_tenant),
    )
    assert [h.record.job_id for h in failures.hits] == [bad.job.job_id]
    assert failures.hits[0].record.failure_reason.startswith("BANK_DOWN")
    other = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(text="archive the weekly sales reports"),
        metadata=_as("someone-else"),
    )
    assert list(other.hits) == []


async def test_put_memory_stores_for_the_callers_tenant_only(
    stub: Stub,
) -> None:
    plan = [json_format.ParseDict({"id": "a", "action": "noop"}, struct_pb2.Struct())]
    put = await stub.PutMemory(
        memory_pb2.PutMemoryRequest(text="rotate the api keys", plan=plan), metadata=_as("t1")
    )
    assert put.record.memory_id
    assert put.record.outcome == memory_pb2.MEMORY_OUTCOME_SUCCEEDED

    mine = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(text="api keys rotation"), metadata=_as("t1")
    )
    theirs = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(text="api keys rotation"), metadata=_as("t2")
    )

    assert [h.record.memory_id for h in mine.hits] == [put.record.memory_id]
    assert json.loads(json_format.MessageToJson(mine.hits[0].record.plan[0])) == {
        "id": "a",
        "action": "noop",
    }
    assert list(theirs.hits) == []


async def test_a_lam_conversation_and_its_jobs_result_are_in_short_term_memory(
    scheduler: Scheduler, client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("worker")
    request = lam.LamMessage(
        id="m-1",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        correlation=lam.Correlation(conversation_id="conv-7"),
        request=lam.RequestBody(text="archive the weekly reports please"),
    )
    reply = await client.send_message(request)
    assert reply.performative == lam.PERFORMATIVE_AGREE, reply
    job_id = reply.agree.job_id
    await finished(client, job_id)
    memory = scheduler.server.memory
    assert memory is not None
    await asyncio.wait_for(memory.recorder.drained(), EVENT_TIMEOUT_S)

    tenant = scheduler.server.settings.default_tenant
    entries = await memory.conversations.recent(tenant, "conv-7")

    assert [(e.role, e.text) for e in entries] == [
        ("user", "archive the weekly reports please"),
        ("scheduler", "agree"),
        ("result", f"job {job_id} SUCCEEDED"),
    ]
    assert entries[1].data["job_id"] == job_id
    assert await memory.conversations.recent("someone-else", "conv-7") == []


async def test_a_failing_memory_never_fails_the_job(
    scheduler: Scheduler, client: SchedulerClient, agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    memory = scheduler.server.memory
    assert memory is not None
    assert isinstance(memory.semantic, SqliteVecMemory)
    await memory.semantic.close()  # every put now fails: the database is closed
    await agents.start("worker")

    ok = await client.schedule_job(job_pb2.JobSpec(text="archive the weekly sales reports"))
    job = await finished(client, ok.job.job_id)
    await asyncio.wait_for(memory.recorder.drained(), EVENT_TIMEOUT_S)

    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert memory.recorder.recorded == 0
    assert f"remembering job {ok.job.job_id} failed" in caplog.text
