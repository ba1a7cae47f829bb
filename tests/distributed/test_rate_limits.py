"""Rate limits and quotas across two real replica processes sharing PostgreSQL and Redis: one
bucket per caller for all replicas (a burst over the limit is refused, with RetryInfo, on every
replica; calls under it never are), and quotas counted over every replica's jobs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from cpa.scheduler.v1 import scheduler_service_pb2 as pb
from cpa.scheduler.v1 import scheduler_service_pb2_grpc
from cpa_client import CpaError
from tests.e2e.conftest import todo, todos_spec
from tests.fixtures.cluster import Cluster, Replica

PER_MINUTE = 20


@asynccontextmanager
async def _stubs(*replicas: Replica) -> AsyncIterator[list[Any]]:
    channels = [grpc.aio.insecure_channel(r.target) for r in replicas]
    try:
        yield [scheduler_service_pb2_grpc.SchedulerServiceStub(c) for c in channels]
    finally:
        for channel in channels:
            await channel.close(None)


async def _call(stub: Any) -> CpaError | None:
    try:
        await stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    except grpc.aio.AioRpcError as error:
        return CpaError.from_rpc_error(error)
    return None


async def test_a_burst_is_limited_by_one_bucket_shared_by_every_replica(cluster: Cluster) -> None:
    cluster.settings.update(
        CPA_RATE_LIMITS_ENABLED="true",
        CPA_RATE_LIMIT_PER_KEY=str(PER_MINUTE),
        CPA_RATE_LIMIT_PER_IP="0",
    )
    replicas = [cluster.replica("r1"), cluster.replica("r2")]
    async with _stubs(*replicas) as stubs:
        started = time.monotonic()
        under = [await _call(stubs[i % 2]) for i in range(PER_MINUTE)]
        assert under == [None] * PER_MINUTE  # calls under the limit are never refused
        refused_on: set[int] = set()
        admitted = PER_MINUTE
        for i in range(20):  # over the limit, alternating replicas
            error = await _call(stubs[i % 2])
            if error is None:
                admitted += 1
                continue
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.reason == "RATE_LIMITED"
            assert error.metadata["scope"] == "tenant"
            assert error.retry_delay_s is not None
            assert 0 < error.retry_delay_s <= 60 / PER_MINUTE
            refused_on.add(i % 2)
        elapsed_s = time.monotonic() - started
    assert refused_on == {0, 1}
    # One shared bucket: the limit plus what refilled meanwhile (one token per 3 s), not a
    # bucket per replica (which would admit all 40).
    assert admitted <= PER_MINUTE + elapsed_s * PER_MINUTE / 60 + 1


async def test_quotas_count_every_replicas_jobs(cluster: Cluster) -> None:
    cluster.settings.update(CPA_MAX_ACTIVE_JOBS_PER_TENANT="3", CPA_QUOTA_CACHE_S="0")
    replicas = [cluster.replica("r1"), cluster.replica("r2")]
    spec = todos_spec(todo("a", "noop"))  # no agent: the jobs stay active
    async with _stubs(*replicas) as (one, two):
        first = await one.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
        await one.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
        await two.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
        for stub in (one, two):
            try:
                await stub.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
            except grpc.aio.AioRpcError as error:
                refusal = CpaError.from_rpc_error(error)
            else:
                raise AssertionError("a fourth active job was admitted")
            assert refusal.reason == "QUOTA_EXCEEDED"
            assert refusal.metadata["current"] == "3"
        await two.CancelJob(pb.CancelJobRequest(job_id=first.job.job_id))
        await two.ScheduleJob(pb.ScheduleJobRequest(spec=spec))
