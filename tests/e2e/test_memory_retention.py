"""Retention and deletion of long-term memory over real gRPC, in both stores (embedded
sqlite-vec, and PostgreSQL with Redis): DeleteMemories takes one record, a job's, or all of the
caller's tenant and never another's; the per-tenant cap and the expiry sweep as a server runs
them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa.scheduler.v1 import memory_pb2
from cpa.scheduler.v1 import scheduler_service_pb2_grpc as grpc_stubs
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.memory.interface import MemoryRecord
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import migrate

from .conftest import EVENT_TIMEOUT_S, Scheduler
from .test_memory import _as

Stub = Any
CAP = 3


@pytest.fixture(params=["embedded", "distributed"])
def scheduler_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "memory_retention_days": 1.0,
        "memory_max_per_tenant": CAP,
    }
    if request.param == "distributed":
        url = request.getfixturevalue("postgres_database")
        migrate(url)
        settings |= {
            "database_url": url,
            "redis_url": request.getfixturevalue("redis_server_url"),
            "redis_key_prefix": request.getfixturevalue("redis_prefix"),
            "page_token_secrets": "0" * 64,
        }
    return Settings(**settings)


@pytest.fixture
async def stub(scheduler: Scheduler) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        yield grpc_stubs.SchedulerServiceStub(channel)


async def _put(stub: Stub, tenant: str, text: str, job_id: str = "") -> str:
    put = await stub.PutMemory(
        memory_pb2.PutMemoryRequest(text=text, job_id=job_id), metadata=_as(tenant)
    )
    return str(put.record.memory_id)


async def _ids(stub: Stub, tenant: str) -> set[str]:
    found = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(text="invoice report archive agent", k=100),
        metadata=_as(tenant),
    )
    return {hit.record.memory_id for hit in found.hits}


async def _delete(stub: Stub, tenant: str, **selection: Any) -> int:
    response = await stub.DeleteMemories(
        memory_pb2.DeleteMemoriesRequest(**selection), metadata=_as(tenant)
    )
    return int(response.deleted_count)


async def test_delete_memories_takes_only_the_callers_records(stub: Stub) -> None:
    invoice = await _put(stub, "t1", "download the invoice", job_id="job-7")
    mail = await _put(stub, "t1", "mail the invoice report", job_id="job-7")
    archive = await _put(stub, "t1", "archive the weekly report")
    theirs = await _put(stub, "t2", "download the invoice agent", job_id="job-7")

    # t2 names t1's record, and t1's job: only its own record of that job id goes.
    assert await _delete(stub, "t2", memory_id=invoice) == 0
    assert await _delete(stub, "t2", job_id="job-7") == 1
    assert await _ids(stub, "t1") == {invoice, mail, archive}
    assert await _ids(stub, "t2") == set()
    assert theirs not in await _ids(stub, "t1")

    assert await _delete(stub, "t1", job_id="job-7") == 2
    assert await _delete(stub, "t1", memory_id=archive) == 1
    assert await _delete(stub, "t1", memory_id=archive) == 0  # idempotent
    assert await _ids(stub, "t1") == set()


async def test_delete_all_forgets_the_tenant_and_nothing_else(stub: Stub) -> None:
    mine = {await _put(stub, "t1", f"archive report {n}") for n in range(2)}
    theirs = await _put(stub, "t2", "archive report")

    assert await _ids(stub, "t1") == mine
    assert await _delete(stub, "t1", all=True) == 2
    assert await _ids(stub, "t1") == set()
    assert await _ids(stub, "t2") == {theirs}


@pytest.mark.parametrize(
    ("selection", "reason", "field"),
    [
        ({}, "MISSING_FIELD", "memory_id"),
        ({"all": False}, "MISSING_FIELD", "memory_id"),
        ({"memory_id": "m", "all": True}, "INVALID_FIELD", "all"),
        ({"memory_id": "m", "job_id": "j"}, "INVALID_FIELD", "job_id"),
        ({"job_id": "j" * 129}, "INVALID_FIELD", "job_id"),
        ({"memory_id": "m" * 129}, "INVALID_FIELD", "memory_id"),
    ],
)
async def test_a_delete_that_names_nothing_or_too_much_is_refused_and_deletes_nothing(
    scheduler: Scheduler, stub: Stub, selection: dict[str, Any], reason: str, field: str
) -> None:
    kept = await _put(stub, "t1", "archive the report")
    # Through the SDK (its delete_memories), as t1.
    async with SchedulerClient(
        scheduler.target, timeout_s=EVENT_TIMEOUT_S, metadata={"x-cpa-tenant": "t1"}
    ) as client:
        with pytest.raises(CpaError) as raised:
            await client.delete_memories(memory_pb2.DeleteMemoriesRequest(**selection))
    error = raised.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert [violation.field for violation in error.field_violations] == [field]
    assert await _ids(stub, "t1") == {kept}


async def test_a_tenant_keeps_its_newest_records_up_to_the_cap(stub: Stub) -> None:
    made = [await _put(stub, "t1", f"archive report {n}") for n in range(CAP + 2)]
    theirs = await _put(stub, "t2", "archive report")

    assert await _ids(stub, "t1") == set(made[2:])
    assert await _ids(stub, "t2") == {theirs}


async def test_expired_records_are_not_searched_and_the_sweep_deletes_them(
    scheduler: Scheduler, stub: Stub
) -> None:
    memory = scheduler.server.memory
    assert memory is not None
    fresh = await _put(stub, "t1", "archive report")
    # Two days old (CPA_MEMORY_RETENTION_DAYS=1), put as the recorder would.
    await memory.semantic.put(
        MemoryRecord(
            memory_id="old",
            tenant="t1",
            text="archive report",
            created_unix_s=time.time() - 2 * 86_400,
        )
    )

    assert await _ids(stub, "t1") == {fresh}
    assert await memory.sweeper.sweep() == 1
    assert await _delete(stub, "t1", memory_id="old") == 0  # deleted, not merely hidden
    assert await _ids(stub, "t1") == {fresh}
