"""Refused calls reach the RPC metrics (issue 17, docs/OBSERVABILITY.md "What a replica
exports"): a scheduler with authentication and rate limits on, its /metrics scraped over HTTP,
counts the calls its interceptors refuse over real gRPC, UNAUTHENTICATED, PERMISSION_DENIED and
RESOURCE_EXHAUSTED (RATE_LIMITED), by method and code like the calls its handlers answer.

The counters are process-wide (ADR 0003): each expectation is the scraped value before the
calls plus what they add."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cpa.scheduler.v1 import job_pb2
from cpa_client import NO_RATE_LIMIT_RETRY, CpaError, SchedulerClient
from tests.e2e.conftest import todo
from tests.e2e.test_metrics_prometheus import sample, scrape

from .conftest import CALL_TIMEOUT_S, SecureScheduler, secure_settings, start_secure

SERVICE = "/cpa.scheduler.v1.SchedulerService/"
# Calls a minute per credential: the viewer's fourth call in a row is refused.
PER_KEY = 3


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[SecureScheduler]:
    server, port = await start_secure(
        secure_settings(
            tmp_path / "data",
            metrics_address="127.0.0.1:0",
            rate_limits_enabled=True,
            rate_limit_per_key=PER_KEY,
            rate_limit_per_ip=0,
        )
    )
    try:
        assert server.local_admin_key is not None
        yield SecureScheduler(server=server, port=port, admin_key=server.local_admin_key[0])
    finally:
        await server.stop(grace_s=1.0)


def _client(scheduler: SecureScheduler, api_key: str | None) -> SchedulerClient:
    return SchedulerClient(
        scheduler.target,
        api_key=api_key,
        timeout_s=CALL_TIMEOUT_S,
        rate_limit_retry=NO_RATE_LIMIT_RETRY,
    )


async def _list_jobs(client: SchedulerClient) -> tuple[grpc.StatusCode, str]:
    try:
        [job async for job in client.list_jobs()]
    except CpaError as error:
        return error.code, error.reason
    return grpc.StatusCode.OK, ""


async def test_refused_calls_are_counted_by_their_code(secure: SecureScheduler) -> None:
    assert secure.server.metrics is not None
    port = secure.server.metrics.port
    _, viewer = await secure.key("viewer")
    before = scrape(port)

    async with _client(secure, None) as anonymous, _client(secure, viewer) as viewing:
        anonymous_calls = [await _list_jobs(anonymous) for _ in range(2)]
        with pytest.raises(CpaError) as denied:
            await viewing.schedule_job(
                job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo("a", "noop")]))
            )
        viewer_calls = [await _list_jobs(viewing) for _ in range(PER_KEY + 1)]

    unauthenticated = (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert anonymous_calls == [unauthenticated] * 2
    assert (denied.value.code, denied.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    rate_limited = (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert viewer_calls == [(grpc.StatusCode.OK, "")] * PER_KEY + [rate_limited]

    after = scrape(port)

    def added(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    list_jobs, schedule_job = SERVICE + "ListJobs", SERVICE + "ScheduleJob"
    assert {
        code: added("rpc_requests_total", method=list_jobs, code=code)
        for code in ("OK", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED")
    } == {"OK": PER_KEY, "UNAUTHENTICATED": 2, "RESOURCE_EXHAUSTED": 1}
    assert added("rpc_requests_total", method=schedule_job, code="PERMISSION_DENIED") == 1
    # Timed like any call: every one of them has its duration observed.
    assert added("rpc_duration_seconds_count", method=list_jobs) == PER_KEY + 3
    assert added("rpc_duration_seconds_count", method=schedule_job) == 1
