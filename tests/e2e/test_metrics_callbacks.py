"""Callback metrics over real sockets: a job's messages go to a loopback HTTPS receiver that
answers 503 twice, then 200; the replica's /metrics counts each attempt by outcome, and
callbacks_pending (the store's count) comes back to where it was once every message is
delivered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings
from tests.fixtures.webhook import (
    LOOPBACK_NETWORKS,
    Received,
    WebhookReceiver,
    scripted_receiver,
)

from .conftest import Agents, Scheduler, todo, todos_spec
from .test_metrics_prometheus import sample, scrape

WAIT_S = 20.0


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[WebhookReceiver]:
    async with scripted_receiver(
        tmp_path / "tls", lambda delivery_id, n: 503 if n <= 2 else 200
    ) as hook:
        yield hook


@pytest.fixture
def scheduler_settings(scheduler_settings: Settings, receiver: WebhookReceiver) -> Settings:
    return scheduler_settings.model_copy(
        update={
            "metrics_address": "127.0.0.1:0",
            "callback_ca_file": receiver.tls.ca_file,
            "callback_allowed_networks": LOOPBACK_NETWORKS,
            "callback_backoff_initial_s": 0.05,
            "callback_backoff_max_s": 0.2,
            "callback_poll_interval_s": 0.05,
            # callbacks_pending is read from the store this often.
            "metrics_queue_interval_s": 0.05,
        }
    )


async def test_callback_attempts_are_counted_and_pending_returns_to_its_level(
    scheduler: Scheduler, client: SchedulerClient, agents: Agents, receiver: WebhookReceiver
) -> None:
    assert scheduler.server.metrics is not None
    port = scheduler.server.metrics.port
    await agents.start("callback-agent")
    before = scrape(port)

    job = await client.schedule_job(todos_spec(todo("e", "echo"), callback_url=receiver.url))
    job_id = job.job.job_id

    def done_delivered(received: list[Received]) -> bool:
        return any(
            r.status == 200 and r.headers["cpa-event-type"] == "done" and job_id in r.body.decode()
            for r in received
        )

    await receiver.wait_for(done_delivered, WAIT_S)
    messages = len(receiver.acknowledged())
    assert messages >= 1
    expected = {
        ("callbacks_total", "delivered"): sample(before, "callbacks_total", outcome="delivered")
        + messages,
        ("callbacks_total", "pending"): sample(before, "callbacks_total", outcome="pending")
        + 2 * messages,
        ("callbacks_pending", ""): sample(before, "callbacks_pending"),
    }
    deadline = time.monotonic() + WAIT_S
    while True:
        text = scrape(port)
        seen = {
            (name, outcome): sample(text, name, **({"outcome": outcome} if outcome else {}))
            for name, outcome in expected
        }
        if seen == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # polling a condition, bounded by the deadline
    assert seen == expected
