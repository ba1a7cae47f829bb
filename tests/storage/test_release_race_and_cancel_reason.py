"""Store contract, both backends: a request id released while a repeat of its request is being
created, and the cancel reason kept with the job and its event (also across a reopening)."""

from __future__ import annotations

import asyncio

from cpa_scheduler.domain import JobCancelRequested
from cpa_scheduler.storage import Store

from .conftest import OpenStore
from .test_store_contract import TENANT, at, create, new_job


async def test_a_release_racing_a_repeat_of_its_request_never_fails_the_repeat(
    store: Store,
) -> None:
    await create(store, new_job("job-1", request_id="req-1"))

    # The retention sweep and a repeat of req-1 at once (one group commit, or two transactions
    # of PostgreSQL): the repeat answers the first job, or creates its own, but never fails.
    _, [(job, changes)] = await asyncio.gather(
        store.forget_request_ids(at(1), limit=10),
        store.create_jobs([new_job("job-2", request_id="req-1")]),
    )

    if changes is None:
        assert job.job_id == "job-1"
    else:
        assert (job.job_id, job.request_id) == ("job-2", "req-1")


async def test_the_cancel_reason_is_stored_with_the_job_and_its_event(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    await create(store, new_job("job-1"))
    await store.update_job(TENANT, "job-1", lambda j: j.cancel(now=at(1), reason="wrong ✓"))
    await store.close()

    reopened = await open_store()
    job = await reopened.get_job(TENANT, "job-1")
    assert (job.cancel_requested, job.cancel_message) == (True, "wrong ✓")
    events = await reopened.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    assert [e.payload for e in events if isinstance(e.payload, JobCancelRequested)] == [
        JobCancelRequested(reason="wrong ✓")
    ]
    await reopened.update_job(TENANT, "job-1", lambda j: j.retry(now=at(2)))
    assert (await reopened.get_job(TENANT, "job-1")).cancel_message == ""
