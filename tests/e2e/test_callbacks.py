"""Callbacks over real sockets: a LAM request's reply_to and a ScheduleJob's callback_url get
their job's signed messages over loopback HTTPS, through 503s, in order, each message under one
delivery id; a host that resolves to loopback is refused at delivery when not allowed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import callback_pb2
from cpa_client import SchedulerClient
from cpa_scheduler.callbacks.keys import SECRET_FILE
from cpa_scheduler.server import SchedulerServer
from cpa_scheduler.settings import Settings
from tests.fixtures.webhook import (
    LOOPBACK_NETWORKS,
    Received,
    WebhookReceiver,
    scripted_receiver,
)

from .conftest import HEARTBEAT_S, LEASE_S, Agents, todo, todos_spec

WAIT_S = 20.0
MAX_DUPLICATES = 0  # no replica dies here: a 2xx-answered message must not come again


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[WebhookReceiver]:
    def twice_503_then_ok(delivery_id: str, n: int) -> int | tuple[int, dict[str, str]]:
        if n == 1:
            return 503, {"Retry-After": "0"}
        return 503 if n == 2 else 200

    async with scripted_receiver(tmp_path / "tls", twice_503_then_ok) as hook:
        yield hook


@pytest.fixture
def scheduler_settings(tmp_path: Path, receiver: WebhookReceiver) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=LEASE_S,
        heartbeat_interval_s=HEARTBEAT_S,
        callback_ca_file=receiver.tls.ca_file,
        callback_allowed_networks=LOOPBACK_NETWORKS,
        callback_backoff_initial_s=0.05,
        callback_backoff_max_s=0.2,
        callback_poll_interval_s=0.05,
    )


def _parsed(received: Received) -> lam.LamMessage:
    # Strict: a field the contract does not have fails the test.
    return json_format.Parse(received.body, lam.LamMessage())


def _ended(event_type: str, job_id: str):  # type: ignore[no-untyped-def]
    def done(received: list[Received]) -> bool:
        return any(
            r.status == 200
            and r.headers["cpa-event-type"] == event_type
            and job_id in r.body.decode()
            for r in received
        )

    return done


async def test_signed_done_and_failure_arrive_through_503s_once_per_delivery_id(
    client: SchedulerClient,
    agents: Agents,
    receiver: WebhookReceiver,
    scheduler_settings: Settings,
) -> None:
    receiver.secret = (scheduler_settings.data_dir / SECRET_FILE).read_text().strip().encode()
    await agents.start("agent-1")
    request = lam.LamMessage(
        id="req-1",
        performative=lam.PERFORMATIVE_REQUEST,
        sender="agent://ops-bot",
        correlation=lam.Correlation(conversation_id="conv-1", reply_with="rw-1"),
        expected=lam.Expectation(reply_to=receiver.url),
        request=lam.RequestBody(todos=[todo("a", "echo", params={"x": 41})]),
    )
    agree = await client.send_message(request)
    assert agree.performative == lam.PERFORMATIVE_AGREE, agree
    lam_job = agree.agree.job_id
    failing = todo("f", "fail", params={"code": "PORTAL_DOWN", "retryable": False})
    scheduled = await client.schedule_job(
        todos_spec(failing, callback_url=receiver.url), request_id="sched-1"
    )
    plain_job = scheduled.job.job_id

    await receiver.wait_for(_ended("done", lam_job), WAIT_S)
    await receiver.wait_for(_ended("failure", plain_job), WAIT_S)

    by_id: dict[str, list[Received]] = {}
    for r in receiver.received:
        by_id.setdefault(r.delivery_id, []).append(r)
    assert all(r.verified for r in receiver.received), "a signature failed the documented recipe"
    for copies in by_id.values():
        # Every attempt of one message: one delivery id, one body, counted attempts.
        assert {c.body for c in copies} == {copies[0].body}
        assert [c.headers["cpa-attempt"] for c in copies] == [
            str(n) for n in range(1, len(copies) + 1)
        ]
        assert [c.status for c in copies][:3] == [503, 503, 200][: len(copies)]
    duplicates = {i: len(c) - 1 for i, c in receiver.acknowledged().items() if len(c) > 1}
    print(f"callback duplicates (2xx-answered copies beyond the first): {duplicates or 'none'}")
    assert sum(duplicates.values()) <= MAX_DUPLICATES

    messages = {i: _parsed(copies[0]) for i, copies in by_id.items()}
    of_lam = [m for m in messages.values() if lam_job in (m.done.job_id, m.inform.job_id)]
    [done] = [m for m in of_lam if m.performative == lam.PERFORMATIVE_DONE]
    assert (done.correlation.conversation_id, done.correlation.in_reply_to) == ("conv-1", "rw-1")
    assert list(done.receivers) == ["agent://ops-bot"]
    assert json_format.MessageToDict(done.done.outputs)["a"]["x"] == 41
    assert done.status.code == 0
    # The inform of RUNNING came first: a job's messages go out in order.
    order = [
        r.headers["cpa-event-type"]
        for r in receiver.received
        if r.status == 200 and lam_job in r.body.decode()
    ]
    assert order == ["inform", "done"]

    [failure] = [m for m in messages.values() if m.performative == lam.PERFORMATIVE_FAILURE]
    assert failure.failure.job_id == plain_job
    assert (failure.correlation.conversation_id, failure.correlation.in_reply_to) == (
        plain_job,
        "sched-1",
    )
    assert failure.failure.error.code == "PORTAL_DOWN"
    assert failure.status.code != 0
    info = error_details_pb2.ErrorInfo()
    assert failure.status.details[0].Unpack(info)
    assert info.domain == "cpa.scheduler"

    listed = [d async for d in client.list_callbacks(job_id=lam_job)]
    assert {(d.event_type, d.state, d.attempts) for d in listed} == {
        ("inform", callback_pb2.CALLBACK_STATE_DELIVERED, 3),
        ("done", callback_pb2.CALLBACK_STATE_DELIVERED, 3),
    }


async def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(
    tmp_path: Path, receiver: WebhookReceiver, agents: Agents
) -> None:
    settings = Settings(
        data_dir=tmp_path / "guarded",
        callback_ca_file=receiver.tls.ca_file,
        callback_poll_interval_s=0.05,
    )
    server = SchedulerServer(settings)
    port = await server.start("127.0.0.1:0")
    try:
        async with SchedulerClient(f"127.0.0.1:{port}") as sdk:
            job = (
                await sdk.schedule_job(todos_spec(todo("n", "noop"), callback_url=receiver.url))
            ).job
            await sdk.cancel_job(job.job_id)
            dead: list[callback_pb2.Callback] = []
            async with asyncio.timeout(WAIT_S):  # polls the listing until the delivery is dead
                while not dead:
                    await asyncio.sleep(0.05)
                    dead = [
                        d async for d in sdk.list_callbacks(state=callback_pb2.CALLBACK_STATE_DEAD)
                    ]
        assert "loopback" in dead[0].last_error
        assert dead[0].attempts == 1
        assert receiver.received == []
    finally:
        await server.stop(grace_s=1.0)
