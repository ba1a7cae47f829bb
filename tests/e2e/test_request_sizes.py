"""A request larger than CPA_MAX_REQUEST_BYTES, over native gRPC: the server's own
PAYLOAD_TOO_LARGE for every method, not gRPC's bare RESOURCE_EXHAUSTED (which clients retry),
up to the transport's limit. Through the REST gateway: tests/cli/test_gateway_rest_errors.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from cpa.lam.v1 import lam_message_pb2
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.server import transport_receive_limit
from cpa_scheduler.settings import Settings

from .conftest import Scheduler, todo, todos_spec


def _oversized(method: str, text: str) -> bytes:
    """A real request of `method` carrying `text` in one of its string fields."""
    svc = scheduler_service_pb2
    requests: dict[str, Callable[[], Message]] = {
        "ScheduleJob": lambda: svc.ScheduleJobRequest(request_id=text),
        "GetJob": lambda: svc.GetJobRequest(job_id=text),
        "ListJobs": lambda: svc.ListJobsRequest(filter=text),
        "WatchJob": lambda: svc.WatchJobRequest(job_id=text),
        "PreviewPlan": lambda: svc.PreviewPlanRequest(spec=job_pb2.JobSpec(text=text)),
        "SendMessage": lambda: svc.SendMessageRequest(message=lam_message_pb2.LamMessage(id=text)),
    }
    return requests[method]().SerializeToString()


async def _raw_call(channel: grpc.aio.Channel, method: str, body: bytes) -> None:
    path = f"/cpa.scheduler.v1.SchedulerService/{method}"
    if method == "WatchJob":
        stream: Any = channel.unary_stream(path, None, None)(body)
        async for _ in stream:
            pass
    else:
        await channel.unary_unary(path, None, None)(body)


@pytest.mark.parametrize(
    "method", ["ScheduleJob", "GetJob", "SendMessage", "PreviewPlan", "ListJobs", "WatchJob"]
)
async def test_a_request_far_over_the_limit_is_payload_too_large_not_resource_exhausted(
    scheduler: Scheduler, client: SchedulerClient, scheduler_settings: Settings, method: str
) -> None:
    """Past CPA_MAX_REQUEST_BYTES + 1 MiB gRPC's transport used to refuse a request itself:
    RESOURCE_EXHAUSTED without ErrorInfo, which clients retry with backoff. Up to
    transport_receive_limit the server's own check answers, for every method alike; past it
    the transport still does (a bound on what one call may make the server hold)."""
    limit = scheduler_settings.max_request_bytes
    transport = transport_receive_limit(limit)
    old_limit = limit + 1024 * 1024
    assert transport > old_limit + 4096
    body = _oversized(method, "x" * (old_limit + 4096))
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _raw_call(channel, method, body)
        error = CpaError.from_rpc_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TOO_LARGE")
        assert f"the limit is {limit}" in error.message

        past = _oversized("GetJob", "x" * transport)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _raw_call(channel, "GetJob", past)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.preview_plan(todos_spec(todo("ok", "noop")))).todos[0].id == "ok"
