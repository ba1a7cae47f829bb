"""The audit trail, the same on both stores: entries are written with the change they record and
only then (none after a refused change), read back whole, listed newest first per tenant with
filters and pages, pruned by age, and never changed: the stores' triggers refuse an UPDATE, and
a DELETE outside the prune."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from cpa_scheduler.domain import (
    AuditActor,
    AuditCall,
    AuditEntry,
    AuditPosition,
    AuditQuery,
    DomainError,
    Job,
    NotFound,
    RequestIdReused,
)
from cpa_scheduler.storage import (
    CallbackOutcome,
    CallbackState,
    PostgresStore,
    SqliteStore,
    Store,
)

from .test_callback_outbox_contract import with_callbacks
from .test_store_contract import NOW, OTHER, TENANT, at, create, new_job

ALICE = AuditActor(
    tenant=TENANT,
    subject="key:alice",
    roles=("submitter", "viewer"),
    credential_kind="api_key",
    credential_id="k-1",
    home_tenant="ops",
    peer="ipv4:127.0.0.1:5555",
)


def call(action: str, actor: AuditActor = ALICE) -> AuditCall:
    return AuditCall(actor=actor, action=action, request_id="req-1", trace_id="0af7651916cd43dd")


async def listed(store: Store, tenant: str = TENANT, **query: object) -> list[AuditEntry]:
    return await store.list_audit(tenant, AuditQuery(**query), after=None, limit=100)  # type: ignore[arg-type]


async def test_an_entry_comes_with_its_job_change_and_reads_back_whole(store: Store) -> None:
    job = new_job("job-1")
    job.changes.audit.append(call("ScheduleJob").entry(create_time=NOW, job_id="job-1"))
    await create(store, job)

    def cancel(job: Job) -> None:
        job.cancel(now=at(1), reason="")
        job.changes.audit.append(
            call("CancelJob").entry(create_time=at(1), job_id="job-1", reason="duplicate ✓")
        )

    await store.update_job(TENANT, "job-1", cancel)
    newest, oldest = await listed(store)
    assert (newest.action, oldest.action) == ("CancelJob", "ScheduleJob")
    assert newest.reason == "duplicate ✓"
    assert (newest.subject, newest.roles, newest.credential_kind, newest.credential_id) == (
        "key:alice",
        ("submitter", "viewer"),
        "api_key",
        "k-1",
    )
    assert (newest.home_tenant, newest.peer, newest.request_id, newest.trace_id) == (
        "ops",
        "ipv4:127.0.0.1:5555",
        "req-1",
        "0af7651916cd43dd",
    )
    assert newest.create_time == at(1)
    assert newest.result_code == "OK"


async def test_every_field_round_trips(store: Store) -> None:
    entry = AuditEntry(
        entry_id="e-1",
        tenant=TENANT,
        create_time=NOW,
        subject="agent:agent-7",
        roles=("agent",),
        action="TaskResult",
        job_id="job-x",
        task_id="a",
        attempt=2,
        task_action="browser",
        agent_id="agent-7",
        reason="why",
        policy_decision="allow:rule-3",
        result_code="LOGIN_FAILED",
        result_reason="EXECUTOR_ERROR",
        result_message="bad password",
        result_field="params.password",
        artifact_ids=("art-1", "art-2"),
        request_id="r",
        trace_id="t",
        suppressed=3,
    )
    await store.append_audit([entry])
    assert await listed(store) == [entry]


async def test_a_refused_change_leaves_no_entry(store: Store) -> None:
    await create(store, new_job("job-1"))

    def refused(job: Job) -> None:
        job.changes.audit.append(call("RetryJob").entry(create_time=at(1), job_id="job-1"))
        job.retry(now=at(1))  # a PENDING job cannot be re-driven: ILLEGAL_TRANSITION

    with pytest.raises(DomainError):
        await store.update_job(TENANT, "job-1", refused)
    # Another tenant's job: NotFound, nothing written either.
    with pytest.raises(NotFound):
        await store.update_job(OTHER, "job-1", refused)
    assert await listed(store) == []
    assert await listed(store, OTHER) == []


async def test_a_creation_refused_for_its_request_id_writes_no_entry(store: Store) -> None:
    first = new_job("job-1", request_id="r-1", fingerprint="fp-1")
    first.changes.audit.append(call("ScheduleJob").entry(create_time=NOW, job_id="job-1"))
    await create(store, first)
    again = new_job("job-2", request_id="r-1", fingerprint="fp-other")
    again.changes.audit.append(call("ScheduleJob").entry(create_time=at(1), job_id="job-2"))
    with pytest.raises(RequestIdReused):
        await store.create_jobs([again])
    # A true repeat returns the first job and writes nothing of the repeat.
    repeat = new_job("job-3", request_id="r-1", fingerprint="fp-1")
    repeat.changes.audit.append(call("ScheduleJob").entry(create_time=at(2), job_id="job-3"))
    [(_, changes)] = await store.create_jobs([repeat])
    assert changes is None
    assert [e.job_id for e in await listed(store)] == ["job-1"]


async def test_listing_filters_pages_and_keeps_tenants_apart(store: Store) -> None:
    bob = AuditActor(tenant=TENANT, subject="key:bob")
    entries = [
        call("ScheduleJob").entry(create_time=at(0), job_id="job-1"),
        call("CancelJob", bob).entry(create_time=at(1), job_id="job-1"),
        call("CancelJob").entry(
            create_time=at(2),
            job_id="job-2",
            result_code="NOT_FOUND",
            result_reason="JOB_NOT_FOUND",
        ),
        call("RetryJob", bob).entry(create_time=at(3), job_id="job-2"),
        call("ScheduleJob", AuditActor(tenant=OTHER, subject="key:eve")).entry(
            create_time=at(4), job_id="job-9"
        ),
    ]
    await store.append_audit(entries)
    assert [e.create_time for e in await listed(store)] == [at(3), at(2), at(1), at(0)]
    assert [e.action for e in await listed(store, job_id="job-1")] == ["CancelJob", "ScheduleJob"]
    assert [e.action for e in await listed(store, subject="key:bob")] == ["RetryJob", "CancelJob"]
    assert [e.job_id for e in await listed(store, action="CancelJob")] == ["job-2", "job-1"]
    assert [e.job_id for e in await listed(store, result_code="NOT_FOUND")] == ["job-2"]
    window = await listed(store, start_time=at(1), end_time=at(3))  # [start, end)
    assert [e.create_time for e in window] == [at(2), at(1)]
    # The other tenant sees its own entry only, and never the first tenant's.
    assert [e.subject for e in await listed(store, OTHER)] == ["key:eve"]
    assert await listed(store, OTHER, subject="key:alice") == []
    # Pages: newest first, each after the last of the previous, none repeated or skipped.
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_audit(TENANT, AuditQuery(), after=after, limit=3)
        seen += [e.entry_id for e in page]
        if len(page) < 3:
            break
        after = AuditPosition(page[-1].create_time, page[-1].entry_id)
    assert seen == [e.entry_id for e in await listed(store)]


async def test_entries_of_one_instant_page_by_id(store: Store) -> None:
    same = [
        AuditEntry(entry_id=f"e-{i}", tenant=TENANT, create_time=NOW, subject="s", action="A")
        for i in range(5)
    ]
    await store.append_audit(same)
    first = await store.list_audit(TENANT, AuditQuery(), after=None, limit=2)
    rest = await store.list_audit(
        TENANT, AuditQuery(), after=AuditPosition(NOW, first[-1].entry_id), limit=10
    )
    assert [e.entry_id for e in first + rest] == ["e-4", "e-3", "e-2", "e-1", "e-0"]


async def test_prune_deletes_the_oldest_before_the_cutoff_in_batches(store: Store) -> None:
    await store.append_audit(
        [call("ScheduleJob").entry(create_time=at(i), job_id=f"job-{i}") for i in range(5)]
    )
    assert await store.prune_audit(at(3), limit=2) == 2
    assert await store.prune_audit(at(3), limit=2) == 1
    assert await store.prune_audit(at(3), limit=2) == 0
    assert [e.job_id for e in await listed(store)] == ["job-4", "job-3"]


async def test_a_redrive_writes_one_entry_per_delivery_in_its_transaction(store: Store) -> None:
    await with_callbacks(store, "job-1", 2)
    await with_callbacks(store, "job-2", 3)
    # None is DEAD: nothing is re-driven, and nothing audited.
    assert await store.redrive_callbacks(TENANT, None, now=at(1), limit=10, audit=call("R")) == []
    assert await listed(store) == []
    await store.claim_callbacks(at(1), limit=10, claim_until=at(60), claim_token="c")
    await store.record_callback_attempt(
        "job-1-d2", claim_token="c", now=at(2), outcome=CallbackOutcome(state=CallbackState.DEAD)
    )
    [redriven] = await store.redrive_callbacks(
        TENANT, None, now=at(3), limit=10, audit=call("RetryCallbacks")
    )
    [entry] = await listed(store)
    assert (entry.action, entry.job_id, entry.reason) == (
        "RetryCallbacks",
        "job-1",
        f"callback {redriven.delivery_id}",
    )


async def test_entries_cannot_be_changed_or_deleted_in_the_database(store: Store) -> None:
    await store.append_audit([call("ScheduleJob").entry(create_time=NOW, job_id="job-1")])
    if isinstance(store, SqliteStore):
        for statement in (
            "UPDATE audit_entries SET subject = 'forged'",
            "DELETE FROM audit_entries",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                store._db.execute(statement)
    else:
        assert isinstance(store, PostgresStore)
        url = str(store._pool.conninfo)
        with psycopg.connect(url, autocommit=True) as database:
            for statement in (
                "UPDATE audit_entries SET subject = 'forged'",
                "DELETE FROM audit_entries",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                    database.execute(statement)
    [entry] = await listed(store)
    assert entry.subject == "key:alice"
