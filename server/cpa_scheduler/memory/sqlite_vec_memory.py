"""Semantic memory of the embedded mode: sqlite-vec in its own SQLite file under the data dir.

The vectors (unit length) live in a vec0 table partitioned by tenant (a KNN query reads only the
caller's tenant, so k hits come from it however many closer vectors other tenants hold) with the
outcome as a metadata column (filtered inside the KNN, not after it). The records sit in an
ordinary table with the same rowid. The KNN ranks by L2 distance, not sqlite-vec's cosine: on
unit vectors both give the same order, and its L2 is the faster scan (at 100 000 vectors 18 ms
p50 / 23 ms p99 against 22 / 44; docs/PERFORMANCE.md). sqlite-vec is loaded through pysqlite3:
this CPython's sqlite3 cannot load extensions. SQLite calls block, so they run on a worker
thread, one at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pysqlite3.dbapi2 as sqlite3  # type: ignore[import-untyped]
import sqlite_vec  # type: ignore[import-untyped]

from cpa_scheduler.storage.data_dir import make_private_directory, make_private_file
from cpa_scheduler.telemetry import timed

from .embedder import Embedder, unit
from .interface import MemoryHit, MemoryRecord, Outcome, Selection
from .records import (
    KEEP_ALL,
    Retention,
    check_query,
    plan_json,
    prepared,
    record_of,
    selection_filter,
)

T = TypeVar("T")
_MMAP_BYTES = 1 << 30
# sqlite-vec's largest k: a KNN that must look past expired records asks for at most this many.
_MAX_KNN_K = 4096
# Rowids per DELETE statement (SQLite's bound parameters are limited).
_DELETE_CHUNK = 500

_RECORD_COLUMNS = (
    "r.memory_id, r.tenant, r.text, r.plan, r.outcome, r.failure_reason, r.job_id, r.created"
)


class SqliteVecMemory:
    """Long-term memory in `path` (created with vectors of `embedder.dimensions`; a file made
    for another width is refused at open rather than searched wrongly)."""

    def __init__(self, path: Path, embedder: Embedder, retention: Retention = KEEP_ALL) -> None:
        self._embedder = embedder
        self._retention = retention
        self._lock = threading.Lock()
        self._db = self._open(path, embedder.dimensions)

    @staticmethod
    def _open(path: Path, dimensions: int) -> Any:
        # Private as the store's files are (0600, its -wal and -shm too): it holds request texts.
        make_private_directory(path.parent)
        make_private_file(path)
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        db.enable_load_extension(True)
        sqlite_vec.load(db)
        db.enable_load_extension(False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # A KNN scans the tenant's vectors (1 KiB each at 256 dimensions): read through a memory
        # map rather than copied page by page through SQLite's small cache, it took a third of
        # the time at 100 000 vectors (docs/PERFORMANCE.md). Address space only, not RAM.
        db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS memory_records (id INTEGER PRIMARY KEY, memory_id TEXT "
            "NOT NULL UNIQUE, tenant TEXT NOT NULL, text TEXT NOT NULL, plan TEXT NOT NULL, "
            "outcome TEXT NOT NULL, failure_reason TEXT NOT NULL, job_id TEXT NOT NULL, "
            "created REAL NOT NULL)"
        )
        # The sweep reads the oldest records; the cap a tenant's oldest, and the search's expiry
        # counts a tenant's.
        db.execute("CREATE INDEX IF NOT EXISTS memory_by_created ON memory_records (created)")
        db.execute(
            "CREATE INDEX IF NOT EXISTS memory_by_age ON memory_records "
            "(tenant, created, memory_id)"
        )
        # Each tenant's number of records, so that a put knows whether it went past the cap
        # without reading them (skipping a tenant's newest 100 000 took 95 ms per put). Kept in
        # the writes' transactions; rebuilt at every open, so a file from before has them too.
        db.execute(
            "CREATE TABLE IF NOT EXISTS memory_tenants (tenant TEXT PRIMARY KEY, records INTEGER "
            "NOT NULL)"
        )
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM memory_tenants")
        db.execute(
            "INSERT INTO memory_tenants SELECT tenant, count(*) FROM memory_records GROUP BY tenant"
        )
        db.execute("COMMIT")
        db.execute("CREATE TABLE IF NOT EXISTS memory_meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT OR IGNORE INTO memory_meta VALUES ('dimensions', ?)", (str(dimensions),))
        stored = int(
            db.execute("SELECT value FROM memory_meta WHERE key='dimensions'").fetchone()[0]
        )
        if stored != dimensions:
            db.close()
            raise RuntimeError(
                f"{path} holds {stored}-dimensional memories; the embedder makes {dimensions} "
                "(move the file away to start a new memory, or configure the old embedder)"
            )
        db.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS memory_vectors USING vec0(tenant TEXT PARTITION "
            f"KEY, outcome TEXT, embedding FLOAT[{dimensions}])"
        )
        return db

    async def _run(self, work: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return work()

        return await asyncio.to_thread(locked)

    async def close(self) -> None:
        await self._run(self._db.close)

    async def put(self, record: MemoryRecord) -> MemoryRecord:
        (stored,) = await self.put_many([record])
        return stored

    async def put_many(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """Put `records` in one embedding call and one transaction (imports, benchmarks)."""
        prepared_records = [prepared(record) for record in records]
        with timed("memory_query", "put", store="sqlite-vec") as timing:
            vectors = await self._embedder.embed([record.text for record in prepared_records])
            blobs = [sqlite_vec.serialize_float32(unit(vector)) for vector in vectors]
            await self._run(lambda: self._write(prepared_records, blobs))
            timing.counts["records"] = len(prepared_records)
        return prepared_records

    def _in_transaction(self, work: Callable[[], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            done = work()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return done

    def _write(self, records: Sequence[MemoryRecord], blobs: Sequence[bytes]) -> None:
        def write() -> None:
            added = Counter(
                record.tenant
                for record, blob in zip(records, blobs, strict=True)
                if self._write_one(record, blob)
            )
            for tenant in added:
                self._count(tenant, added[tenant], trim=True)

        self._in_transaction(write)

    def _write_one(self, record: MemoryRecord, blob: bytes) -> bool:
        """Write `record`; whether it is new to its tenant's count."""
        db = self._db
        # A record put again under its id (a job that ended again after a retry) replaces it;
        # never another tenant's (as in PostgreSQL).
        old = db.execute(
            "SELECT id, tenant FROM memory_records WHERE memory_id = ?", (record.memory_id,)
        ).fetchone()
        if old and old[1] != record.tenant:
            return False
        if old:
            self._delete_rows([old[0]])
        cursor = db.execute(
            "INSERT INTO memory_records (memory_id, tenant, text, plan, outcome, "
            "failure_reason, job_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.memory_id,
                record.tenant,
                record.text,
                plan_json(record.plan),
                record.outcome,
                record.failure_reason,
                record.job_id,
                record.created_unix_s,
            ),
        )
        db.execute(
            "INSERT INTO memory_vectors (rowid, tenant, outcome, embedding) VALUES (?, ?, ?, ?)",
            (cursor.lastrowid, record.tenant, record.outcome, blob),
        )
        return old is None

    def _count(self, tenant: str, change: int, *, trim: bool) -> None:
        """Add `change` to the tenant's count; with `trim`, drop its oldest records past the
        cap (inside the put's transaction: no reader sees the tenant over its cap)."""
        (total,) = self._db.execute(
            "INSERT INTO memory_tenants VALUES (?, ?) ON CONFLICT (tenant) DO UPDATE SET "
            "records = records + excluded.records RETURNING records",
            (tenant, change),
        ).fetchone()
        cap = self._retention.max_per_tenant
        if trim and cap and total > cap:
            oldest = self._db.execute(
                "SELECT id FROM memory_records WHERE tenant = ? ORDER BY created, memory_id "
                "LIMIT ?",
                (tenant, total - cap),
            )
            ids = [row[0] for row in oldest]
            self._delete_rows(ids)
            self._count(tenant, -len(ids), trim=False)

    def _delete_rows(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), _DELETE_CHUNK):
            chunk = ids[start : start + _DELETE_CHUNK]
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"DELETE FROM memory_vectors WHERE rowid IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM memory_records WHERE id IN ({marks})", chunk)

    def _delete_where(self, where: str, parameters: Sequence[Any]) -> int:
        """Delete the records `where` selects (both tables, their counts, one transaction)."""

        def delete() -> int:
            selected = list(
                self._db.execute(f"SELECT id, tenant FROM memory_records {where}", parameters)
            )
            self._delete_rows([row[0] for row in selected])
            gone = Counter(row[1] for row in selected)
            for tenant in gone:
                self._count(tenant, -gone[tenant], trim=False)
            return len(selected)

        return self._in_transaction(delete)

    async def delete(self, tenant: str, selection: Selection) -> int:
        condition, parameters = selection_filter(tenant, selection, "?")
        with timed("memory_query", "delete", store="sqlite-vec") as timing:
            deleted = await self._run(lambda: self._delete_where(f"WHERE {condition}", parameters))
            timing.counts["records"] = deleted
        return deleted

    async def sweep_expired(self, *, batch: int) -> int:
        if not self._retention.max_age_s:
            return 0
        where = "WHERE created < ? ORDER BY created LIMIT ?"
        cutoff = self._retention.cutoff()
        with timed("memory_query", "sweep", store="sqlite-vec") as timing:
            deleted = await self._run(lambda: self._delete_where(where, (cutoff, batch)))
            timing.counts["records"] = deleted
        return deleted

    async def search(
        self, tenant: str, text: str, *, k: int = 5, outcome: Outcome | None = None
    ) -> list[MemoryHit]:
        check_query(k, outcome)
        with timed("memory_query", "search", store="sqlite-vec") as timing:
            (vector,) = await self._embedder.embed([text])
            query = unit(vector)
            if not any(query):  # no word the embedder knows: nothing is similar
                return []
            blob = sqlite_vec.serialize_float32(query)
            rows = await self._run(lambda: self._unexpired_knn(tenant, blob, k, outcome))
            timing.counts["results"] = len(rows)
        # Unit vectors: the cosine is 1 - d²/2 of the L2 distance d, and ranks the same.
        return [MemoryHit(record_of(*row[:-1]), 1.0 - row[-1] ** 2 / 2) for row in rows]

    def _unexpired_knn(
        self, tenant: str, blob: bytes, k: int, outcome: Outcome | None
    ) -> list[Any]:
        """The k nearest records not expired. The vec0 table cannot filter on the creation time,
        so the KNN asks for k more than the tenant's expired records (few: the sweep deletes
        them) and drops those: exactly the k nearest unexpired ones (while more than 4096 - k
        wait for the sweep, sqlite-vec's largest k, possibly fewer than k; never an expired
        one)."""
        cutoff = self._retention.cutoff()
        expired = 0
        if self._retention.max_age_s:
            where, parameters = "tenant = ? AND created < ?", [tenant, cutoff]
            if outcome is not None:
                where, parameters = where + " AND outcome = ?", [*parameters, outcome]
            (expired,) = self._db.execute(
                f"SELECT count(*) FROM memory_records WHERE {where}", parameters
            ).fetchone()
        rows = self._knn(tenant, blob, min(k + expired, _MAX_KNN_K), outcome)
        return [row for row in rows if row[7] >= cutoff][:k]

    def _knn(self, tenant: str, blob: bytes, k: int, outcome: Outcome | None) -> list[Any]:
        where = "embedding MATCH ? AND k = ? AND tenant = ?"
        params: list[Any] = [blob, k, tenant]
        if outcome is not None:
            where += " AND outcome = ?"
            params.append(outcome)
        return list(
            self._db.execute(
                # The KNN first, on its own (as sqlite-vec plans it best), then its records.
                f"WITH knn AS (SELECT rowid, distance FROM memory_vectors WHERE {where}) "
                f"SELECT {_RECORD_COLUMNS}, knn.distance FROM knn "
                "JOIN memory_records r ON r.id = knn.rowid ORDER BY knn.distance, r.memory_id",
                params,
            )
        )
