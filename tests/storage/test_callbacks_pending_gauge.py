"""callbacks_pending is the store's count, whoever changed the outbox (issue 17): after
deliveries, failed attempts, dead letters, a claimer that died holding a row, and a second
replica's deliverer ending what the first one wrote, a replica's gauge reads what the store
holds PENDING. Real deliverers POST over loopback HTTPS to a scripted receiver; both stores
(PostgreSQL: two stores are two replicas)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cpa_scheduler.callbacks.address_guard import AddressPolicy
from cpa_scheduler.callbacks.backoff import BackoffPolicy
from cpa_scheduler.callbacks.deliverer import CallbackDeliverer
from cpa_scheduler.callbacks.keys import SigningKey, SigningKeys
from cpa_scheduler.callbacks.sender import CallbackSender
from cpa_scheduler.domain import OutboundCallback
from cpa_scheduler.storage import CallbackState, DataDirectoryInUseError, Store
from cpa_scheduler.telemetry import metrics
from tests.fixtures.webhook import LOOPBACK_NETWORKS, WebhookReceiver, scripted_receiver

from .conftest import OpenStore
from .test_store_contract import NOW, TENANT, at, create, new_job


def answer(delivery_id: str, n: int) -> int:
    """The receiver's script: `dead` rows are refused for good, `retry` rows fail once."""
    if "dead" in delivery_id:
        return 410
    if "retry" in delivery_id and n == 1:
        return 503
    return 200


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[WebhookReceiver]:
    async with scripted_receiver(tmp_path / "tls", answer) as hook:
        yield hook


@pytest.fixture
async def sender(receiver: WebhookReceiver) -> AsyncIterator[CallbackSender]:
    posting = CallbackSender(
        policy=AddressPolicy.of(allow_private=False, allowed_networks=LOOPBACK_NETWORKS),
        ca_file=receiver.tls.ca_file,
        timeout_s=10.0,
    )
    try:
        yield posting
    finally:
        await posting.close()


def deliverer(
    store: Store, sender: CallbackSender, clock: Callable[[], datetime]
) -> CallbackDeliverer:
    """A replica's deliverer (as server.py makes it), its time `clock`."""
    return CallbackDeliverer(
        store=store,
        sender=sender,
        keys=SigningKeys(SigningKey("k1", b"s" * 32), {}),
        backoff=BackoffPolicy(initial_s=1.0, max_s=5.0),
        max_attempts=3,
        claim_s=30.0,
        poll_interval_s=1.0,
        concurrency=10,
        clock=clock,
        rng=random.Random(7),
    )


async def pending_in(store: Store) -> int:
    """The store's pending callbacks as ListCallbacks shows them."""
    listed = await store.list_callbacks(
        TENANT, state=CallbackState.PENDING, job_id="", after=None, limit=100
    )
    return len(listed)


async def test_the_gauge_is_the_stores_count_whoever_delivered(
    open_store: OpenStore,
    receiver: WebhookReceiver,
    sender: CallbackSender,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hooks on, as on a replica that serves /metrics: a deliverer that still moved the
    # gauge itself would show here.
    monkeypatch.setattr(metrics, "ENABLED", True)
    registry = CollectorRegistry()
    registry.register(metrics.CALLBACKS_PENDING)
    first = await open_store()
    try:
        second = await open_store()  # PostgreSQL: another replica
    except DataDirectoryInUseError:
        second = first  # SQLite: one process holds the file
    gauges = metrics.StoreGauges(first)

    async def gauge_and_store() -> tuple[float | None, int]:
        await gauges.refresh()
        return registry.get_sample_value("callbacks_pending"), await pending_in(first)

    for job_id, sequences in [("ok", [2]), ("retry", [2]), ("dead", [2]), ("order", [2, 3])]:
        job = new_job(f"job-{job_id}")
        job.changes.callbacks += [
            OutboundCallback(
                delivery_id=f"{job_id}-d{s}",
                message_id=f"{job_id}-m{s}",
                event_type="inform",
                sequence=s,
                url=receiver.url,
                body_json=f'{{"id": "{job_id}-m{s}"}}',
                create_time=NOW,
            )
            for s in sequences
        ]
        await create(first, job)
    assert await gauge_and_store() == (5, 5)

    # A claimer that dies holding a row (the oldest due, by id): it stays PENDING until its
    # claim ends.
    [held] = await second.claim_callbacks(at(1), limit=1, claim_until=at(30), claim_token="died")
    assert held.delivery_id == "dead-d2"
    # The first replica's round: "ok" and "order"'s first delivered, "retry" failed (due again
    # later); "order"'s second waits for its first, the held row is not this replica's to take.
    assert await deliverer(first, sender, lambda: at(2)).deliver_due() == 3
    assert await gauge_and_store() == (3, 3)
    # The second replica, once the dead claim ended and the retry is due, ends the rest,
    # "dead" refused for good.
    late = deliverer(second, sender, lambda: at(60))
    while await late.deliver_due():
        pass
    assert await gauge_and_store() == (0, 0)
    outcomes = {
        d.delivery_id: d.state
        for d in await first.list_callbacks(TENANT, state=None, job_id="", after=None, limit=100)
    }
    assert outcomes == {
        "ok-d2": CallbackState.DELIVERED,
        "retry-d2": CallbackState.DELIVERED,
        "dead-d2": CallbackState.DEAD,
        "order-d2": CallbackState.DELIVERED,
        "order-d3": CallbackState.DELIVERED,
    }
