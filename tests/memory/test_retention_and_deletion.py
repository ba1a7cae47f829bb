"""Retention and deletion of long-term memory, the same from both stores (sqlite-vec and
PostgreSQL): expired records are never found and the sweep deletes them in batches; a tenant
keeps at most its cap, oldest dropped first; a delete takes only the caller's tenant's records."""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from pathlib import Path

import psycopg
import pysqlite3.dbapi2 as sqlite3  # type: ignore[import-untyped]
import pytest

from cpa_scheduler.memory.embedder import lexical_embedder
from cpa_scheduler.memory.interface import MemoryRecord, Selection
from cpa_scheduler.memory.sqlite_vec_memory import SqliteVecMemory
from cpa_scheduler.memory.sweeper import ExpirySweeper
from cpa_scheduler.storage import migrate
from cpa_scheduler.telemetry import Operation, subscribe
from tests.memory.conftest import RETENTION, Semantic, postgres_store

DAY_S = 86_400.0
QUERY = "download the supplier invoice"


def record(tenant: str, text: str = QUERY, *, age_s: float = 0.0, **fields: object) -> MemoryRecord:
    created = time.time() - age_s
    return MemoryRecord(
        **{"memory_id": "", "tenant": tenant, "text": text, "created_unix_s": created, **fields}  # type: ignore[arg-type]
    )


async def _ids(memory: Semantic, tenant: str, text: str = QUERY, k: int = 100) -> set[str]:
    return {hit.record.memory_id for hit in await memory.search(tenant, text, k=k)}


async def test_expired_records_are_never_found_and_the_sweep_deletes_them(
    retained: Semantic,
) -> None:
    # The expired records match the query exactly, the fresh one less well: a search that let
    # them through (or asked the KNN for only k) would return them or nothing.
    fresh = await retained.put(record("a", "download the supplier invoice for March"))
    expired = [
        await retained.put(record("a", age_s=DAY_S + 60, memory_id=f"old-a-{n}")) for n in range(2)
    ]
    await retained.put(record("b", age_s=2 * DAY_S, memory_id="old-b"))

    hits = await retained.search("a", QUERY, k=1)
    assert [hit.record for hit in hits] == [fresh]
    succeeded = await retained.search("a", QUERY, k=5, outcome="succeeded")
    assert [hit.record for hit in succeeded] == [fresh]

    sweeper = ExpirySweeper(retained, interval_s=60.0, batch=2)
    assert await retained.sweep_expired(batch=2) == 2  # the oldest two: b's, then one of a's
    assert await sweeper.sweep() == 1
    assert await sweeper.sweep() == 0
    assert await _ids(retained, "a") == {fresh.memory_id}
    # Gone, not just hidden: deleting them finds nothing left.
    for old in expired:
        assert await retained.delete("a", Selection(memory_id=old.memory_id)) == 0


async def test_a_tenant_keeps_its_newest_records_up_to_the_cap(retained: Semantic) -> None:
    theirs = await retained.put(record("b", age_s=10 * 60))
    kept = []
    for n in range(5):  # oldest first; the cap is 3
        kept.append(await retained.put(record("a", f"{QUERY} number {n}", age_s=(5 - n) * 60)))

    assert await _ids(retained, "a") == {r.memory_id for r in kept[2:]}
    assert await _ids(retained, "b") == {theirs.memory_id}


async def test_replacing_deleting_and_sweeping_keep_the_count_the_cap_goes_by(
    retained: Semantic,
) -> None:
    # The stores count each tenant's records rather than counting rows on every put: a record
    # replaced under its id is no new one, and deleted or swept ones leave room.
    for outcome in ("failed", "succeeded", "failed"):
        await retained.put(record("a", memory_id="job:1", outcome=outcome, age_s=50))
    second = await retained.put(record("a", f"{QUERY} 2", age_s=40))
    old = await retained.put(record("a", f"{QUERY} 3", age_s=2 * DAY_S))
    assert await _ids(retained, "a") == {"job:1", second.memory_id}  # old: expired, hidden

    assert await retained.sweep_expired(batch=10) == 1
    assert await retained.delete("a", Selection(memory_id=second.memory_id)) == 1
    fourth = await retained.put(record("a", f"{QUERY} 4", age_s=30))
    fifth = await retained.put(record("a", f"{QUERY} 5", age_s=20))
    assert await _ids(retained, "a") == {"job:1", fourth.memory_id, fifth.memory_id}
    assert old.memory_id not in await _ids(retained, "a")

    sixth = await retained.put(record("a", f"{QUERY} 6", age_s=10))
    assert await _ids(retained, "a") == {fourth.memory_id, fifth.memory_id, sixth.memory_id}


async def test_puts_at_once_never_leave_a_tenant_over_its_cap(retained: Semantic) -> None:
    await asyncio.gather(*(retained.put(record("a", f"{QUERY} {n}")) for n in range(12)))

    assert len(await _ids(retained, "a")) == 3
    await retained.put(record("a", "one more"))
    assert len(await _ids(retained, "a")) == 3


async def test_one_batch_over_the_cap_keeps_only_its_newest(retained: Semantic) -> None:
    records = [record("a", f"{QUERY} {n}", age_s=100 - n) for n in range(5)]

    stored = await retained.put_many(records)

    assert await _ids(retained, "a") == {r.memory_id for r in stored[2:]}


async def test_a_delete_takes_only_the_callers_records(retained: Semantic) -> None:
    one = await retained.put(record("a", job_id="job-1"))
    two = await retained.put(record("a", "mail the invoice to accounting", job_id="job-1"))
    other = await retained.put(record("a", "restart the build agent", job_id="job-2"))
    theirs = await retained.put(record("b", job_id="job-1"))

    # b names a's record, and a's job (it has a record of that job id itself).
    assert await retained.delete("b", Selection(memory_id=one.memory_id)) == 0
    assert await retained.delete("b", Selection(job_id="job-1")) == 1
    assert await _ids(retained, "a") == {one.memory_id, two.memory_id, other.memory_id}
    assert await _ids(retained, "b") == set()
    assert theirs.memory_id not in await _ids(retained, "a")

    assert await retained.delete("a", Selection(job_id="job-1")) == 2
    assert await _ids(retained, "a") == {other.memory_id}
    assert await retained.delete("a", Selection(memory_id=other.memory_id)) == 1
    assert await retained.delete("a", Selection(memory_id=other.memory_id)) == 0
    assert await _ids(retained, "a") == set()


async def test_deleting_all_of_a_tenant_leaves_the_others(semantic: Semantic) -> None:
    for n in range(4):
        await semantic.put(record("a", f"{QUERY} {n}"))
    theirs = await semantic.put(record("b"))

    assert await semantic.delete("a", Selection()) == 4
    assert await semantic.delete("a", Selection()) == 0
    assert await _ids(semantic, "a") == set()
    assert await _ids(semantic, "b") == {theirs.memory_id}


async def test_without_retention_nothing_expires_or_is_capped(semantic: Semantic) -> None:
    old = await semantic.put(record("a", age_s=10 * 365 * DAY_S))
    for n in range(4):
        await semantic.put(record("a", f"{QUERY} {n}"))

    assert await semantic.sweep_expired(batch=10) == 0
    assert old.memory_id in await _ids(semantic, "a")
    assert len(await _ids(semantic, "a")) == 5


async def test_deletes_and_sweeps_are_timed(retained: Semantic) -> None:
    await retained.put(record("a", age_s=2 * DAY_S))
    seen: list[Operation] = []
    stop = subscribe(seen.append)
    try:
        await retained.sweep_expired(batch=10)
        await retained.delete("a", Selection())
    finally:
        stop()

    assert [(op.kind, op.name, op.counts["records"]) for op in seen] == [
        ("memory_query", "sweep", 1),
        ("memory_query", "delete", 0),
    ]


def test_a_selection_names_an_id_or_a_job_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        Selection(memory_id="m", job_id="j")


async def test_an_embedded_file_from_before_the_counts_gets_them_at_open(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    unbounded = SqliteVecMemory(path, lexical_embedder(64))
    made = [await unbounded.put(record("a", f"{QUERY} {n}", age_s=60 - n)) for n in range(5)]
    await unbounded.close()
    with closing(sqlite3.connect(str(path))) as db:  # as files were before the counts
        db.execute("DROP TABLE memory_tenants")

    bounded = SqliteVecMemory(path, lexical_embedder(64), RETENTION)
    try:
        newest = await bounded.put(record("a", "the newest"))
        assert await _ids(bounded, "a") == {made[3].memory_id, made[4].memory_id, newest.memory_id}
    finally:
        await bounded.close()


async def test_migration_0011_counts_the_records_a_database_already_had(
    postgres_database: str,
) -> None:
    migrate(postgres_database)
    async with postgres_store(postgres_database) as unbounded:
        made = [await unbounded.put(record("a", f"{QUERY} {n}", age_s=60 - n)) for n in range(5)]
    with psycopg.connect(postgres_database, autocommit=True) as connection:  # back to 0010
        connection.execute("DROP TABLE memory_tenants")
        connection.execute("DROP INDEX memory_by_age, memory_by_created")
        connection.execute("UPDATE alembic_version SET version_num = '0010'")

    migrate(postgres_database)

    async with postgres_store(postgres_database, RETENTION) as bounded:
        newest = await bounded.put(record("a", "the newest"))
        assert await _ids(bounded, "a") == {made[3].memory_id, made[4].memory_id, newest.memory_id}
