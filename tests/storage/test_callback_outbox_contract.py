"""The callback outbox, the same on both stores: rows are written in the transaction of the job
change that made them (and only then), claimed by one claimer at a time until the claim ends,
in order per job, recorded only by their claimer, listed and re-driven per tenant."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from cpa_scheduler.domain import DomainError, Job, OutboundCallback, RequestIdReused
from cpa_scheduler.storage import (
    CallbackOutcome,
    CallbackPosition,
    CallbackState,
    DataDirectoryInUseError,
    Store,
)

from .conftest import OpenStore
from .test_store_contract import NOW, OTHER, TENANT, at, create, new_job


def callback(job: Job, sequence: int, *, created: datetime = NOW) -> OutboundCallback:
    return OutboundCallback(
        delivery_id=f"{job.job_id}-d{sequence}",
        message_id=f"{job.job_id}-m{sequence}",
        event_type="inform",
        sequence=sequence,
        url="https://receiver.example/hook",
        body_json=f'{{"id": "{job.job_id}-m{sequence}"}}',
        create_time=created,
    )


async def with_callbacks(store: Store, job_id: str, *sequences: int, tenant: str = TENANT) -> Job:
    job = new_job(job_id, tenant=tenant)
    job.changes.callbacks += [callback(job, s) for s in sequences]
    return await create(store, job)


async def claim(store: Store, now: datetime, token: str, limit: int = 10) -> list[str]:
    claimed = await store.claim_callbacks(now, limit=limit, claim_until=at(60), claim_token=token)
    return [d.delivery_id for d in claimed]


DELIVERED = CallbackOutcome(state=CallbackState.DELIVERED)


async def test_rows_come_with_their_change_and_a_claim_hides_them_until_it_ends(
    store: Store,
) -> None:
    await with_callbacks(store, "job-1", 2)

    def add(job: Job) -> None:
        job.cancel(now=at(1), reason="")
        job.changes.callbacks.append(callback(job, 5, created=at(1)))

    await store.update_job(TENANT, "job-1", add)
    await with_callbacks(store, "job-2", 3)

    # Only the first pending message of a job is due: job-1's second waits for its first.
    assert await claim(store, at(2), "first") == ["job-1-d2", "job-2-d3"]
    assert await claim(store, at(2), "second") == []
    [delivery] = await store.list_callbacks(TENANT, state=None, job_id="job-1", after=None, limit=1)
    assert (delivery.url, delivery.body_json) == (
        "https://receiver.example/hook",
        '{"id": "job-1-m2"}',
    )
    # The claim ended (its holder died): another claimer takes the rows.
    assert await claim(store, at(61), "third") == ["job-1-d2", "job-2-d3"]
    # The first claimer's late record changes nothing; the holder's does.
    assert not await store.record_callback_attempt(
        "job-1-d2", claim_token="first", now=at(62), outcome=DELIVERED
    )
    assert await store.record_callback_attempt(
        "job-1-d2", claim_token="third", now=at(62), outcome=DELIVERED
    )
    assert await claim(store, at(121), "fourth") == ["job-2-d3", "job-1-d5"]  # oldest due first


async def test_a_failed_attempt_is_due_again_at_its_time_and_counts(store: Store) -> None:
    await with_callbacks(store, "job-1", 2)
    assert await claim(store, at(1), "a") == ["job-1-d2"]
    later = CallbackOutcome(
        state=CallbackState.PENDING, next_attempt_time=at(30), last_error="HTTP 503"
    )
    assert await store.record_callback_attempt(
        "job-1-d2", claim_token="a", now=at(2), outcome=later
    )
    assert await claim(store, at(29), "b") == []
    [again] = await store.claim_callbacks(at(30), limit=5, claim_until=at(90), claim_token="c")
    assert (again.attempts, again.last_error, again.state) == (1, "HTTP 503", CallbackState.PENDING)


async def test_a_refused_change_or_creation_leaves_no_rows(store: Store) -> None:
    await with_callbacks(store, "job-1", 2)

    def add_then_fail(job: Job) -> None:
        job.changes.callbacks.append(callback(job, 9))
        raise DomainError("refused")

    with pytest.raises(DomainError):
        await store.update_job(TENANT, "job-1", add_then_fail)
    first = new_job("job-2", request_id="req-1", fingerprint="fp-1")
    await create(store, first)
    reused = new_job("job-3", request_id="req-1", fingerprint="fp-other")
    reused.changes.callbacks.append(callback(reused, 2))
    with pytest.raises(RequestIdReused):
        await store.create_jobs([reused])
    listed = await store.list_callbacks(TENANT, state=None, job_id="", after=None, limit=10)
    assert [d.delivery_id for d in listed] == ["job-1-d2"]


async def test_two_claimers_never_take_the_same_row(open_store: OpenStore) -> None:
    first = await open_store()
    try:
        second = await open_store()  # PostgreSQL: another replica
    except DataDirectoryInUseError:
        second = first  # SQLite: one process holds the file; its claims run concurrently
    for n in range(20):
        await with_callbacks(first, f"job-{n:02}", 2)
    claims = await asyncio.gather(
        *(claim(store, at(1), f"t{i}", limit=3) for i in range(8) for store in (first, second))
    )
    taken = [delivery for batch in claims for delivery in batch]
    assert len(taken) == len(set(taken)) == 20


async def test_listing_and_re_driving_are_per_tenant(store: Store) -> None:
    await with_callbacks(store, "job-a", 2, 3)
    await with_callbacks(store, "job-b", 2, tenant=OTHER)
    assert await claim(store, at(1), "t") == ["job-a-d2", "job-b-d2"]
    dead = CallbackOutcome(state=CallbackState.DEAD, last_error="HTTP 410")
    for delivery_id in ("job-a-d2", "job-b-d2"):
        await store.record_callback_attempt(delivery_id, claim_token="t", now=at(2), outcome=dead)

    mine = await store.list_callbacks(
        TENANT, state=CallbackState.DEAD, job_id="", after=None, limit=10
    )
    assert [(d.delivery_id, d.last_error) for d in mine] == [("job-a-d2", "HTTP 410")]
    assert await store.get_callbacks(TENANT, ["job-b-d2", "job-a-d3"]) == [
        d
        for d in await store.list_callbacks(TENANT, state=None, job_id="", after=None, limit=9)
        if d.delivery_id == "job-a-d3"
    ]
    # Another tenant's dead delivery is neither re-driven nor returned; a PENDING one neither.
    assert await store.redrive_callbacks(TENANT, ["job-b-d2", "job-a-d3"], now=at(3), limit=9) == []
    [redriven] = await store.redrive_callbacks(TENANT, None, now=at(3), limit=9)
    assert (redriven.delivery_id, redriven.state, redriven.attempts) == (
        "job-a-d2",
        CallbackState.PENDING,
        0,
    )
    [still_dead] = await store.list_callbacks(
        OTHER, state=CallbackState.DEAD, job_id="", after=None, limit=9
    )
    assert still_dead.delivery_id == "job-b-d2"
    # Pages continue after a position.
    page = await store.list_callbacks(TENANT, state=None, job_id="job-a", after=None, limit=1)
    rest = await store.list_callbacks(
        TENANT,
        state=None,
        job_id="job-a",
        after=CallbackPosition(page[0].create_time, page[0].delivery_id),
        limit=5,
    )
    assert [d.delivery_id for d in page + rest] == ["job-a-d2", "job-a-d3"]
