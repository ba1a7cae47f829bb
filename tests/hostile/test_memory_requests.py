"""Hostile SearchMemory/PutMemory/DeleteMemories requests against a real server: huge, nested,
malformed and out-of-range input is refused naming the field (nothing stored or deleted), and a
tenant never reads or deletes another's records however it asks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2

from cpa.scheduler.v1 import memory_pb2, scheduler_service_pb2_grpc
from cpa_scheduler.server import SchedulerServer
from cpa_scheduler.settings import Settings

Stub = Any
WAIT_S = 20.0
A = (("x-cpa-tenant", "tenant-a"),)
B = (("x-cpa-tenant", "tenant-b"),)


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    scheduler = SchedulerServer(Settings(data_dir=tmp_path / "data"))
    port = await scheduler.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await scheduler.stop(grace_s=1.0)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return scheduler_service_pb2_grpc.SchedulerServiceStub(channel)


def _nested(depth: int) -> struct_pb2.Struct:
    step = struct_pb2.Struct()
    inner = step
    for _ in range(depth):
        inner = inner.fields["x"].struct_value
    return step


def _reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, str]:
    """The status code, ErrorInfo reason and first BadRequest field of a refusal."""
    trailers: Any = error.trailing_metadata() or ()
    details = next((v for k, v in trailers if k == "grpc-status-details-bin"), None)
    assert isinstance(details, bytes), error
    reason = field = ""
    for detail in status_pb2.Status.FromString(details).details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad) and bad.field_violations:
            field = bad.field_violations[0].field
    return error.code(), reason, field


HOSTILE_SEARCHES = [
    (memory_pb2.SearchMemoryRequest(text="x " * 10_000), "TEXT_TOO_LONG", "text"),
    (memory_pb2.SearchMemoryRequest(text=""), "MISSING_FIELD", "text"),
    (memory_pb2.SearchMemoryRequest(text=" \n\t "), "MISSING_FIELD", "text"),
    (memory_pb2.SearchMemoryRequest(text="a", k=101), "INVALID_FIELD", "k"),
    (memory_pb2.SearchMemoryRequest(text="a", k=-1), "INVALID_FIELD", "k"),
    (memory_pb2.SearchMemoryRequest(text="a", outcome=77), "INVALID_FIELD", "outcome"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("request_", "reason", "field"), HOSTILE_SEARCHES)
async def test_hostile_searches_are_refused_naming_the_field(
    stub: Stub, request_: memory_pb2.SearchMemoryRequest, reason: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.SearchMemory(request_, metadata=A, timeout=WAIT_S)
    assert _reason(raised.value) == (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    assert len((raised.value.details() or "").encode()) <= 1024


HOSTILE_PUTS = [
    (memory_pb2.PutMemoryRequest(text="é" * 5000), "TEXT_TOO_LONG", "text"),
    (memory_pb2.PutMemoryRequest(text="a", plan=[_nested(30)]), "NESTING_TOO_DEEP", "plan[0]"),
    (
        memory_pb2.PutMemoryRequest(text="a", plan=[struct_pb2.Struct()] * 101),
        "INVALID_FIELD",
        "plan",
    ),
    (memory_pb2.PutMemoryRequest(text="a", failure_reason="f"), "INVALID_FIELD", "failure_reason"),
    (
        memory_pb2.PutMemoryRequest(
            text="a", outcome=memory_pb2.MEMORY_OUTCOME_FAILED, failure_reason="f" * 1025
        ),
        "INVALID_FIELD",
        "failure_reason",
    ),
    (memory_pb2.PutMemoryRequest(text="a", job_id="j" * 129), "INVALID_FIELD", "job_id"),
]


@pytest.mark.parametrize(("request_", "reason", "field"), HOSTILE_PUTS)
async def test_hostile_puts_are_refused_naming_the_field_and_store_nothing(
    stub: Stub, request_: memory_pb2.PutMemoryRequest, reason: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PutMemory(request_, metadata=A, timeout=WAIT_S)
    code, got_reason, got_field = _reason(raised.value)
    assert (code, got_reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert got_field.startswith(field)
    found = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(text="a é j f", k=100), metadata=A, timeout=WAIT_S
    )
    assert list(found.hits) == []


async def test_a_malformed_body_is_refused_and_the_server_keeps_answering(
    channel: grpc.aio.Channel, stub: Stub
) -> None:
    raw = channel.unary_unary("/cpa.scheduler.v1.SchedulerService/SearchMemory", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw(b"\xff\xff\xff\xff\x0f", metadata=A, timeout=WAIT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = await stub.SearchMemory(memory_pb2.SearchMemoryRequest(text="fine"), metadata=A)
    assert list(ok.hits) == []


async def test_another_tenant_never_reads_the_records_however_it_asks(stub: Stub) -> None:
    secret = "payroll export for the board members of acme"
    await stub.PutMemory(memory_pb2.PutMemoryRequest(text=secret), metadata=A, timeout=WAIT_S)
    for metadata in (B, (("x-cpa-tenant", "TENANT-A"),), (("x-cpa-tenant", "tenant-a "),)):
        for outcome in (0, 1, 2):
            found = await stub.SearchMemory(
                memory_pb2.SearchMemoryRequest(text=secret, k=100, outcome=outcome),  # type: ignore[arg-type]
                metadata=metadata,
                timeout=WAIT_S,
            )
            assert list(found.hits) == [], metadata


HOSTILE_DELETES = [
    (memory_pb2.DeleteMemoriesRequest(), "MISSING_FIELD", "memory_id"),
    (memory_pb2.DeleteMemoriesRequest(memory_id="x", job_id="y"), "INVALID_FIELD", "job_id"),
    (memory_pb2.DeleteMemoriesRequest(job_id="y", all=True), "INVALID_FIELD", "all"),
    (memory_pb2.DeleteMemoriesRequest(memory_id="m" * 100_000), "INVALID_FIELD", "memory_id"),
    (memory_pb2.DeleteMemoriesRequest(job_id="é" * 129), "INVALID_FIELD", "job_id"),
]


@pytest.mark.parametrize(("request_", "reason", "field"), HOSTILE_DELETES)
async def test_hostile_deletes_are_refused_naming_the_field_and_delete_nothing(
    stub: Stub, request_: memory_pb2.DeleteMemoriesRequest, reason: str, field: str
) -> None:
    await stub.PutMemory(memory_pb2.PutMemoryRequest(text="keep me"), metadata=A, timeout=WAIT_S)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.DeleteMemories(request_, metadata=A, timeout=WAIT_S)
    assert _reason(raised.value) == (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    assert len((raised.value.details() or "").encode()) <= 1024
    found = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(text="keep me", k=100), metadata=A, timeout=WAIT_S
    )
    assert [hit.record.text for hit in found.hits] == ["keep me"]


async def test_another_tenant_never_deletes_the_records_however_it_asks(stub: Stub) -> None:
    secret = "payroll export for the board members of acme"
    put = await stub.PutMemory(
        memory_pb2.PutMemoryRequest(text=secret, job_id="job-1"), metadata=A, timeout=WAIT_S
    )
    record = put.record
    for metadata in (B, (("x-cpa-tenant", "TENANT-A"),), (("x-cpa-tenant", "tenant-a "),)):
        for request in (
            memory_pb2.DeleteMemoriesRequest(memory_id=record.memory_id),
            memory_pb2.DeleteMemoriesRequest(memory_id=record.memory_id.upper()),
            memory_pb2.DeleteMemoriesRequest(memory_id=f"{record.memory_id}%"),
            memory_pb2.DeleteMemoriesRequest(job_id="job-1"),
            memory_pb2.DeleteMemoriesRequest(job_id="%"),
            memory_pb2.DeleteMemoriesRequest(all=True),
        ):
            deleted = await stub.DeleteMemories(request, metadata=metadata, timeout=WAIT_S)
            assert deleted.deleted_count == 0, (metadata, request)
    found = await stub.SearchMemory(
        memory_pb2.SearchMemoryRequest(text=secret), metadata=A, timeout=WAIT_S
    )
    assert [hit.record.memory_id for hit in found.hits] == [record.memory_id]
