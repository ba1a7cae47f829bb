"""Hostile callback input against a real server: callback URLs and reply_to values that must be
refused at submission (naming the field), and ListCallbacks/RetryCallbacks of one tenant aimed
at another tenant's deliveries (never shown, never re-driven), plus malformed retry requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cpa.common.v1 import todo_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import callback_pb2, job_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.api.call_context import TENANT_METADATA_KEY
from cpa_scheduler.server import SchedulerServer
from cpa_scheduler.settings import Settings
from tests.fixtures.webhook import free_port

WAIT_S = 20.0
HOSTILE_URLS = [
    "https://hooks.example.com/" + "x" * 100_000,
    "http://hooks.example.com/hook",
    "https://127.0.0.1/hook",
    "https://[::1]/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.1.2.3/hook",
    "https://[::ffff:169.254.169.254]/x",
    "https://[fe80::1%25eth0]/x",
    "https://user:secret@hooks.example.com/hook",
    "https://hooks.example.com:70000/",
    "https://[::1/hook",
    "https:hooks.example.com",
    "javascript:alert(1)",
    "https://hooks.example.com/\r\nX-Injected: 1",
    "https://0x7f000001/",  # not a DNS name: aiohttp would read it as 127.0.0.1
]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[int]:
    settings = Settings(
        data_dir=tmp_path / "data",
        callback_max_attempts=1,
        callback_poll_interval_s=0.05,
    )
    scheduler = SchedulerServer(settings)
    port = await scheduler.start("127.0.0.1:0")
    try:
        yield port
    finally:
        await scheduler.stop(grace_s=1.0)


def _client(port: int, tenant: str) -> SchedulerClient:
    return SchedulerClient(f"127.0.0.1:{port}", metadata={TENANT_METADATA_KEY: tenant})


def _spec(url: str) -> job_pb2.JobSpec:
    noop = todo_pb2.ToDo(id="a", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="noop")
    return job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[noop]), callback_url=url)


@pytest.mark.parametrize("url", HOSTILE_URLS)
async def test_hostile_callback_urls_are_refused_naming_the_field(server: int, url: str) -> None:
    async with _client(server, "tenant-a") as client:
        with pytest.raises(CpaError) as raised:
            await client.schedule_job(_spec(url))
        assert (raised.value.code, raised.value.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
        assert [v.field for v in raised.value.field_violations] == ["spec.callback_url"]
        assert len(raised.value.message.encode()) <= 1024
        reply = await client.send_message(
            lam.LamMessage(
                id=f"m-{abs(hash(url))}",
                performative=lam.PERFORMATIVE_REQUEST,
                sender="agent://hostile",
                expected=lam.Expectation(reply_to=url),
                request=lam.RequestBody(
                    todos=[
                        todo_pb2.ToDo(
                            id="a", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="noop"
                        )
                    ]
                ),
            )
        )
        assert reply.performative == lam.PERFORMATIVE_REFUSE, reply
        assert reply.refuse.field == "expected.reply_to"
        assert [j async for j in client.list_jobs()] == []


async def _dead_deliveries(client: SchedulerClient, count: int) -> list[callback_pb2.Callback]:
    # localhost passes at submission (a name) and is refused at delivery: dead at once.
    for _ in range(count):
        job = (await client.schedule_job(_spec(f"https://localhost:{free_port()}/hook"))).job
        await client.cancel_job(job.job_id)
    async with asyncio.timeout(WAIT_S):  # polls the listing until the delivery is dead
        while True:
            dead = [d async for d in client.list_callbacks(state=callback_pb2.CALLBACK_STATE_DEAD)]
            if len(dead) >= count:
                return dead
            await asyncio.sleep(0.05)


async def test_another_tenant_cannot_see_or_re_drive_deliveries(server: int) -> None:
    async with _client(server, "tenant-a") as owner, _client(server, "tenant-b") as intruder:
        dead, _ = await _dead_deliveries(owner, 2)
        assert [d async for d in intruder.list_callbacks()] == []
        assert [d async for d in intruder.list_callbacks(job_id=dead.job_id)] == []
        with pytest.raises(CpaError) as raised:
            await intruder.retry_callbacks([dead.delivery_id])
        assert (raised.value.code, raised.value.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "CALLBACK_NOT_FOUND",
        )
        assert raised.value.metadata.get("field") == "delivery_ids[0]"
        assert await intruder.retry_callbacks(all_dead=True) == []
        [still] = [d async for d in owner.list_callbacks(job_id=dead.job_id)]
        assert (still.state, still.attempts) == (callback_pb2.CALLBACK_STATE_DEAD, 1)
        # The owner's page token is no key to the intruder's listing.
        page = await owner._stub.ListCallbacks(
            callback_pb2.ListCallbacksRequest(page_size=1),
            metadata=((TENANT_METADATA_KEY, "tenant-a"),),
        )
        assert page.next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await intruder._stub.ListCallbacks(
                callback_pb2.ListCallbacksRequest(page_size=1, page_token=page.next_page_token),
                metadata=((TENANT_METADATA_KEY, "tenant-b"),),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Not DEAD: refused, nothing changes.
        [redriven] = await owner.retry_callbacks([dead.delivery_id])
        assert redriven.state == callback_pb2.CALLBACK_STATE_PENDING


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [
        (callback_pb2.RetryCallbacksRequest(), "MISSING_FIELD", "delivery_ids"),
        (
            callback_pb2.RetryCallbacksRequest(delivery_ids=["x"], all_dead=True),
            "INVALID_FIELD",
            "all_dead",
        ),
        (callback_pb2.RetryCallbacksRequest(delivery_ids=[""]), "INVALID_FIELD", "delivery_ids[0]"),
        (
            callback_pb2.RetryCallbacksRequest(delivery_ids=["a", "b" * 129]),
            "INVALID_FIELD",
            "delivery_ids[1]",
        ),
        (
            callback_pb2.RetryCallbacksRequest(delivery_ids=["a"] * 1001),
            "INVALID_FIELD",
            "delivery_ids",
        ),
        (
            callback_pb2.RetryCallbacksRequest(all_dead=True, max_callbacks=-1),
            "INVALID_FIELD",
            "max_callbacks",
        ),
        (
            callback_pb2.RetryCallbacksRequest(all_dead=True, max_callbacks=1001),
            "INVALID_FIELD",
            "max_callbacks",
        ),
        (
            callback_pb2.RetryCallbacksRequest(delivery_ids=["a"], max_callbacks=3),
            "INVALID_FIELD",
            "max_callbacks",
        ),
    ],
)
async def test_malformed_retry_requests_name_their_field(
    server: int, request_: callback_pb2.RetryCallbacksRequest, reason: str, field: str
) -> None:
    async with _client(server, "tenant-a") as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client._stub.RetryCallbacks(request_, timeout=10)
        error = CpaError.from_rpc_error(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert error.metadata.get("field") == field


async def test_malformed_list_requests_name_their_field(server: int) -> None:
    async with _client(server, "tenant-a") as client:
        for request_, field in [
            (callback_pb2.ListCallbacksRequest(state=99), "state"),  # type: ignore[arg-type]
            (callback_pb2.ListCallbacksRequest(job_id="j" * 129), "job_id"),
            (callback_pb2.ListCallbacksRequest(page_size=-1), "page_size"),
            (callback_pb2.ListCallbacksRequest(page_token="garbage!"), "page_token"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client._stub.ListCallbacks(request_, timeout=10)
            error = CpaError.from_rpc_error(raised.value)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert error.metadata.get("field") == field, error
