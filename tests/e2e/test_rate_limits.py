"""Rate limits and quotas of an embedded scheduler over real gRPC sockets: per tenant (the suite
runs with authentication off, so the tenant a call names is its bucket; per credential with
authentication on: tests/security/test_rate_limit_keys.py), per address, per-tenant overrides,
batch costs, what is not limited, and quota refusals that lift once jobs end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cpa.scheduler.v1 import scheduler_service_pb2 as pb
from cpa.scheduler.v1 import scheduler_service_pb2_grpc
from cpa_client import (
    NO_RATE_LIMIT_RETRY,
    CpaError,
    RateLimitRetry,
    ResourceExhaustedError,
    SchedulerClient,
)
from cpa_scheduler.settings import Settings
from tests.fixtures.history import eventually

from .conftest import Agents, Scheduler, todo, todos_spec

TENANT = "x-cpa-tenant"


@pytest.fixture
def limits_file(tmp_path: Path) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(
        "tenants:\n  tight:\n    calls_per_minute: 3\n  roomy:\n    max_active_jobs: 50\n"
        "  brisk:\n    calls_per_minute: 120\n"
    )
    return path


@pytest.fixture
def scheduler_settings(
    tmp_path: Path, limits_file: Path, request: pytest.FixtureRequest
) -> Settings:
    fields: dict[str, Any] = {
        "rate_limits_enabled": True,
        "rate_limit_per_key": 1000,
        "rate_limit_per_ip": 1000,
        "tenant_limits_path": limits_file,
        "quota_cache_s": 0,
        **getattr(request, "param", {}),
    }
    return Settings(data_dir=tmp_path / "data", **fields)


@pytest.fixture
async def stub(scheduler: Scheduler) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        yield scheduler_service_pb2_grpc.SchedulerServiceStub(channel)


async def _list(stub: Any, tenant: str) -> CpaError | None:
    try:
        await stub.ListJobs(pb.ListJobsRequest(), metadata=((TENANT, tenant),))
    except grpc.aio.AioRpcError as error:
        return CpaError.from_rpc_error(error)
    return None


def _assert_rate_limited(error: CpaError | None, *, scope: str, limit: int) -> None:
    assert isinstance(error, ResourceExhaustedError)  # the SDK's typed error for the code
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "RATE_LIMITED"
    assert error.retryable
    assert error.metadata["scope"] == scope
    assert error.metadata["limit"] == str(limit)
    # A minute's worth per bucket: one call is back within 60/limit seconds.
    assert error.retry_delay_s is not None
    assert 0 < error.retry_delay_s <= 60 / limit + 0.01


async def test_a_tenant_override_limits_that_tenant_only(stub: Any) -> None:
    results = [await _list(stub, "tight") for _ in range(4)]
    assert results[:3] == [None, None, None]
    _assert_rate_limited(results[3], scope="tenant", limit=3)
    # Others keep the default; the tight tenant stays refused.
    assert [await _list(stub, "other") for _ in range(5)] == [None] * 5
    _assert_rate_limited(await _list(stub, "tight"), scope="tenant", limit=3)


async def _drain(client: SchedulerClient, calls: int) -> None:
    for _ in range(calls):
        [job async for job in client.list_jobs()]


async def _until_refused(
    client: SchedulerClient, at_most: int
) -> tuple[int, ResourceExhaustedError]:
    """Calls until one is refused: (calls accepted before, the refusal)."""
    for accepted in range(at_most):
        try:
            await _drain(client, 1)
        except ResourceExhaustedError as refused:
            return accepted, refused
    raise AssertionError(f"{at_most} calls, none refused")


async def test_the_sdk_repeats_a_rate_limited_call_after_the_delay_the_server_names(
    scheduler: Scheduler,
) -> None:
    brisk = {TENANT: "brisk"}
    async with (
        SchedulerClient(
            scheduler.target, metadata=brisk, rate_limit_retry=NO_RATE_LIMIT_RETRY
        ) as impatient,
        SchedulerClient(scheduler.target, metadata=brisk) as patient,
    ):
        # The tenant's bucket (120 a minute, one back every 0.5 s) is emptied, as the refusal
        # of a call without repeats shows (one back per 0.5 s the draining took: a slow
        # machine makes a few more calls before the first refusal)...
        accepted, refused = await _until_refused(impatient, 240)
        assert accepted >= 120
        assert refused.reason == "RATE_LIMITED"
        assert refused.retry_delay_s is not None
        # ...and a client that honours RetryInfo waits for its call's turn and succeeds.
        await _drain(patient, 1)
        with pytest.raises(ResourceExhaustedError):
            await _drain(impatient, 1)


async def test_the_sdk_raises_a_rate_limit_whose_delay_is_longer_than_it_may_wait(
    scheduler: Scheduler,
) -> None:
    async with SchedulerClient(
        scheduler.target,
        metadata={TENANT: "tight"},
        rate_limit_retry=RateLimitRetry(attempts=5, max_wait_s=1.0),
    ) as client:
        await _drain(client, 3)
        # One call of 3 a minute comes back after 20 s: longer than the client may wait.
        with pytest.raises(ResourceExhaustedError) as refused:
            await _drain(client, 1)
        assert refused.value.retry_delay_s is not None
        assert refused.value.retry_delay_s > 1.0


@pytest.mark.parametrize("scheduler_settings", [{"rate_limit_per_ip": 4}], indirect=True)
async def test_the_address_limit_holds_whatever_tenant_a_call_names(stub: Any) -> None:
    results = [await _list(stub, f"tenant-{i}") for i in range(5)]
    assert results[:4] == [None] * 4
    _assert_rate_limited(results[4], scope="ip", limit=4)


@pytest.mark.parametrize(
    "scheduler_settings", [{"rate_limit_per_ip": 4, "trusted_proxies": ""}], indirect=True
)
async def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(stub: Any) -> None:
    scopes = []
    for i in range(6):
        try:
            await stub.ListJobs(
                pb.ListJobsRequest(), metadata=(("x-forwarded-for", f"198.51.100.{i}"),)
            )
        except grpc.aio.AioRpcError as error:
            scopes.append(CpaError.from_rpc_error(error).metadata["scope"])
    # Each forged address would have had a bucket of its own: all 6 admitted.
    assert scopes == ["ip", "ip"]


HOSTILE_FORWARDED = [
    "",
    "garbage",
    "999.1.1.1",
    "[::1",
    "::::",
    ",,,,",
    "1.2.3.4:99999999999",
    ", ".join(["198.51.100.1"] * 300),
    "198.51.100.1 ,  2001:db8::1 ",
]


@pytest.mark.parametrize(
    "scheduler_settings", [{"trusted_proxies": "127.0.0.1/32, ::1/128"}], indirect=True
)
@pytest.mark.parametrize("forwarded", HOSTILE_FORWARDED)
async def test_hostile_forwarded_for_and_tenant_values_are_answered_normally(
    stub: Any, forwarded: str
) -> None:
    # From a trusted peer (this test's own loopback): whatever the header holds, the call is
    # served or rate limited, never failed. The tenant is the longest name the server takes.
    metadata = ((TENANT, "t" * 128), ("x-forwarded-for", forwarded))
    response = await stub.ListJobs(pb.ListJobsRequest(), metadata=metadata)
    assert list(response.jobs) == []


async def test_a_tenant_name_too_long_is_refused_before_any_limit(stub: Any) -> None:
    error = await _list(stub, "t" * 4000)
    assert error is not None
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert error.metadata["field"] == "x-cpa-tenant"


@pytest.mark.parametrize("scheduler_settings", [{"rate_limit_per_key": 5}], indirect=True)
async def test_a_batch_costs_one_call_per_request(stub: Any) -> None:
    def batch(count: int) -> pb.BatchScheduleJobsRequest:
        return pb.BatchScheduleJobsRequest(
            requests=[
                pb.ScheduleJobRequest(spec=todos_spec(todo("a", "noop"))) for _ in range(count)
            ]
        )

    response = await stub.BatchScheduleJobs(batch(3))
    assert len(response.responses) == 3
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.BatchScheduleJobs(batch(3))  # 2 tokens left: the batch needs 3
    _assert_rate_limited(CpaError.from_rpc_error(refused.value), scope="tenant", limit=5)
    listed = await stub.ListJobs(pb.ListJobsRequest())
    assert len(listed.jobs) == 3  # the refused batch created nothing


@pytest.mark.parametrize(
    "scheduler_settings", [{"rate_limit_per_ip": 2, "rate_limit_per_key": 2}], indirect=True
)
async def test_agents_are_not_limited(stub: Any, agents: Agents) -> None:
    assert await _list(stub, "default") is None
    assert await _list(stub, "default") is None
    _assert_rate_limited(await _list(stub, "default"), scope="ip", limit=2)
    # Several agent streams from the same address still connect and take work.
    for name in ("a1", "a2", "a3"):
        await agents.start(name)


# -- quotas ------------------------------------------------------------------------------------


def _quota_error(error: grpc.aio.AioRpcError) -> CpaError:
    refusal = CpaError.from_rpc_error(error)
    assert refusal.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal.reason == "QUOTA_EXCEEDED"
    assert refusal.retry_delay_s is None
    return refusal


@pytest.mark.parametrize("scheduler_settings", [{"max_active_jobs_per_tenant": 2}], indirect=True)
async def test_active_jobs_quota_refuses_then_recovers_when_jobs_end(stub: Any) -> None:
    spec = todos_spec(todo("a", "noop"))  # no agent: the jobs stay active
    first = await stub.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
    await stub.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
    assert _quota_error(refused.value).metadata == {
        "quota": "active_jobs",
        "current": "2",
        "requested": "1",
        "limit": "2",
    }
    # Another tenant has its own count; an override raises this one's.
    await stub.ScheduleJob(pb.ScheduleJobRequest(spec=spec), metadata=((TENANT, "other"),))
    for _ in range(3):
        await stub.ScheduleJob(pb.ScheduleJobRequest(spec=spec), metadata=((TENANT, "roomy"),))
    # A job that ends frees its place.
    await stub.CancelJob(pb.CancelJobRequest(job_id=first.job.job_id))
    await stub.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
    # Re-driving the cancelled job would make it active again: refused too.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RetryJob(pb.RetryJobRequest(job_id=first.job.job_id))
    assert _quota_error(refused.value).metadata["quota"] == "active_jobs"


@pytest.mark.parametrize("scheduler_settings", [{"max_queued_tasks_per_tenant": 3}], indirect=True)
async def test_queued_tasks_quota_counts_ready_tasks_and_lifts_as_agents_take_them(
    stub: Any, agents: Agents
) -> None:
    two_ready = todos_spec(todo("a", "wait", params={"seconds": 60}), todo("b", "noop"))
    await stub.ScheduleJob(pb.ScheduleJobRequest(spec=two_ready))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ScheduleJob(pb.ScheduleJobRequest(spec=two_ready))
    assert _quota_error(refused.value).metadata == {
        "quota": "queued_tasks",
        "current": "2",
        "requested": "2",
        "limit": "3",
    }
    # A dependent task is not ready: a chain of two adds one queued task.
    chain = todos_spec(todo("a", "noop"), todo("b", "noop", depends_on=["a"]))
    await stub.ScheduleJob(pb.ScheduleJobRequest(spec=chain))
    # Once an agent has taken the tasks, they no longer wait in the queue.
    await agents.start("worker", slots=8)

    async def admitted() -> bool:
        try:
            await stub.ScheduleJob(pb.ScheduleJobRequest(spec=two_ready))
        except grpc.aio.AioRpcError as error:
            _quota_error(error)
            return False
        return True

    await eventually(admitted, what="a submission admitted once the agent took the tasks")
