"""Hostile ListAuditEntries requests against a real server: huge and malformed filters, times
out of range, forged, altered and other tenants' or other lists' page tokens are refused naming
the field; hostile metadata (request ids, traceparents) is recorded bounded or not at all; and
the server keeps answering."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa.scheduler.v1 import audit_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from cpa_scheduler.server import SchedulerServer
from cpa_scheduler.settings import Settings

# The generated stub's annotations are the synchronous ones; on an aio channel it awaits.
Stub = Any
WAIT_S = 20.0
TENANT = (("x-cpa-tenant", "tenant-a"),)


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    scheduler = SchedulerServer(Settings(data_dir=tmp_path / "data"))
    port = await scheduler.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
    finally:
        await scheduler.stop(grace_s=1.0)


async def _refusal(
    stub: Stub,
    request: audit_pb2.ListAuditEntriesRequest,
    metadata: tuple[tuple[str, str], ...] = TENANT,
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListAuditEntries(request, metadata=metadata, timeout=WAIT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len((raised.value.details() or "").encode()) <= 1024
    return raised.value


HOSTILE_FILTERS = [
    audit_pb2.ListAuditEntriesRequest(job_id="j" * 100_000),
    audit_pb2.ListAuditEntriesRequest(principal="\x00" * 300),
    audit_pb2.ListAuditEntriesRequest(action="' OR 1=1 --" * 10),
    audit_pb2.ListAuditEntriesRequest(result="R" * 129),
    audit_pb2.ListAuditEntriesRequest(page_size=-2_000_000_000),
    # NUL: PostgreSQL's text cannot hold it (it answered INTERNAL there, an empty page in
    # SQLite); refused in both stores alike.
    audit_pb2.ListAuditEntriesRequest(result="OK\x00"),
]


@pytest.mark.parametrize("request_", HOSTILE_FILTERS)
async def test_huge_and_malformed_filters_are_refused(
    stub: Stub,
    request_: audit_pb2.ListAuditEntriesRequest,
) -> None:
    await _refusal(stub, request_)


async def test_injection_like_values_within_bounds_just_match_nothing(
    stub: Stub,
) -> None:
    for request in (
        audit_pb2.ListAuditEntriesRequest(action="' OR '1'='1"),
        audit_pb2.ListAuditEntriesRequest(principal="%", job_id="_"),
    ):
        response = await stub.ListAuditEntries(request, metadata=TENANT, timeout=WAIT_S)
        assert list(response.entries) == []


async def test_times_out_of_range_and_inverted_ranges_name_their_field(
    stub: Stub,
) -> None:
    bad_seconds = audit_pb2.ListAuditEntriesRequest()
    bad_seconds.start_time.seconds = 2**62
    assert "start_time.seconds" in str((await _refusal(stub, bad_seconds)).trailing_metadata())
    bad_nanos = audit_pb2.ListAuditEntriesRequest()
    bad_nanos.end_time.nanos = -1
    assert "end_time.nanos" in str((await _refusal(stub, bad_nanos)).trailing_metadata())
    inverted = audit_pb2.ListAuditEntriesRequest()
    inverted.start_time.seconds = 2_000_000_000
    inverted.end_time.seconds = 1_000_000_000
    refused = await _refusal(stub, inverted)
    trailers: Any = refused.trailing_metadata() or ()
    [details] = [value for key, value in trailers if key == "grpc-status-details-bin"]
    assert b"INVALID_TIME_RANGE" in details


def _token(payload: dict[str, object]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_forged_altered_and_foreign_page_tokens_are_refused(
    stub: Stub,
) -> None:
    # Enough entries for a second page: refused cancels of unknown jobs.
    for index in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.CancelJob(
                scheduler_service_pb2.CancelJobRequest(job_id=f"no-such-{index}"),
                metadata=TENANT,
                timeout=WAIT_S,
            )
    first = await stub.ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(page_size=1), metadata=TENANT, timeout=WAIT_S
    )
    token = first.next_page_token
    assert token
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    altered = dict(payload, t=payload["t"] + 1)
    for forged in (
        "not-a-token!",
        "A" * 5000,
        _token({"v": 2, "k": "audit", "q": "x", "n": "y", "t": 0, "id": "", "m": "0" * 32}),
        _token(altered),
        _token({"v": 99}),
        _token([1, 2, 3]),  # type: ignore[arg-type]
    ):
        refused = await _refusal(stub, audit_pb2.ListAuditEntriesRequest(page_token=forged))
        assert "page_token" in (refused.details() or "")
    # Another tenant's token, and the right tenant's token with another filter.
    await _refusal(
        stub,
        audit_pb2.ListAuditEntriesRequest(page_size=1, page_token=token),
        metadata=(("x-cpa-tenant", "tenant-b"),),
    )
    await _refusal(
        stub, audit_pb2.ListAuditEntriesRequest(page_size=1, page_token=token, action="CancelJob")
    )
    # Another list's token (ListJobs) is not a ListAuditEntries token.
    time_id_token = _token(dict(payload, k="jobs"))
    await _refusal(stub, audit_pb2.ListAuditEntriesRequest(page_token=time_id_token))
    # The genuine token still works after all that.
    second = await stub.ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(page_size=1, page_token=token),
        metadata=TENANT,
        timeout=WAIT_S,
    )
    assert len(second.entries) == 1
    assert second.entries[0].entry_id != first.entries[0].entry_id


async def test_hostile_metadata_is_recorded_bounded_or_not_at_all(
    stub: Stub,
) -> None:
    metadata = (
        *TENANT,
        ("x-request-id", "r" * 6000),
        ("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"),  # all-zero: invalid
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.RetryJob(
            scheduler_service_pb2.RetryJobRequest(job_id="unknown"),
            metadata=metadata,
            timeout=WAIT_S,
        )
    [entry] = (
        await stub.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(action="RetryJob"), metadata=TENANT, timeout=WAIT_S
        )
    ).entries
    assert entry.trace_id == ""
    assert len(entry.request_id.encode()) <= 512
    assert entry.request_id.startswith("rrr")
