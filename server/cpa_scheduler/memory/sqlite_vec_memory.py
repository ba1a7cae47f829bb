"""Semantic memory of the embedded mode: sqlite-vec in its own SQLite file under the data dir.

The file is the store: the records in an ordinary table, their vectors (unit length) with the
same rowid in a vec0 table partitioned by tenant with the outcome as a metadata column. A search
does not use sqlite-vec's KNN, a scan of the tenant's partition (37 ms p99 at 100 000 vectors):
each searched tenant's vectors are held in memory (memory/vector_index.py, a float32 matrix,
~1 KiB per memory at 256 dimensions: ~100 MB per 100 000), read from the file at the tenant's
first search and kept in step by every write of this class once its transaction commits. The
ranking is the KNN's: by L2 distance (on unit vectors the cosine's order), ties by memory id;
the score 1 - d²/2. So one instance writes a file (the embedded mode's one process): another
writer's records would not be in its indexes until it is opened again. sqlite-vec is loaded
through pysqlite3: this CPython's sqlite3 cannot load extensions. SQLite calls and the index's
numpy work block, so they run on a worker thread, one at a time.
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
from .vector_index import TenantIndex

T = TypeVar("T")
_MMAP_BYTES = 1 << 30
# Rowids per DELETE or SELECT statement (SQLite's bound parameters are limited).
_DELETE_CHUNK = 500

# A change to a tenant's index: its rowid added (its vector, outcome, creation time) or removed.
_Change = tuple[str, int, tuple[bytes, str, float] | None]

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
        self._dimensions = embedder.dimensions
        self._db = self._open(path, embedder.dimensions)
        # The searched tenants' indexes (loaded at a tenant's first search), and the changes of
        # the transaction under way, applied to them once it commits.
        self._indexes: dict[str, TenantIndex] = {}
        self._pending: list[_Change] = []

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
        # A tenant's first search reads all its vectors (1 KiB each at 256 dimensions): through a
        # memory map rather than copied page by page through SQLite's small cache, sqlite-vec's
        # KNN scan of them took a third of the time at 100 000 (docs/PERFORMANCE.md). Address
        # space only, not RAM.
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
        def close() -> None:
            self._indexes.clear()
            self._db.close()

        await self._run(close)

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
        self._pending.clear()
        db.execute("BEGIN IMMEDIATE")
        try:
            done = work()
            db.execute("COMMIT")
        except BaseException:
            self._pending.clear()
            db.execute("ROLLBACK")
            raise
        self._apply(self._pending)
        self._pending.clear()
        return done

    def _apply(self, changes: Sequence[_Change]) -> None:
        """Bring the loaded indexes in step with the committed `changes` (a tenant not loaded
        reads them from the file at its first search). Should that fail (no memory to grow a
        matrix), the indexes are dropped, to be read again, rather than left behind the file."""
        try:
            for tenant, rowid, added in changes:
                index = self._indexes.get(tenant)
                if index is None:
                    continue
                if added is None:
                    index.remove(rowid)
                else:
                    index.add(rowid, *added)
        except BaseException:
            self._indexes.clear()
            raise

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
            self._delete_rows(record.tenant, [old[0]])
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
        self._pending.append(
            (record.tenant, cursor.lastrowid, (blob, record.outcome, record.created_unix_s))
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
            self._delete_rows(tenant, ids)
            self._count(tenant, -len(ids), trim=False)

    def _delete_rows(self, tenant: str, ids: Sequence[int]) -> None:
        """Delete the `tenant`'s records `ids`."""
        self._pending.extend((tenant, rowid, None) for rowid in ids)
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
            for tenant, rows in _by_tenant(selected).items():
                self._delete_rows(tenant, rows)
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
            rows = await self._run(lambda: self._search(tenant, query, k, outcome))
            timing.counts["results"] = len(rows)
        # Unit vectors: the cosine is 1 - d²/2 of the L2 distance d, and ranks the same.
        return [MemoryHit(record_of(*row[:-1]), 1.0 - row[-1] / 2) for row in rows]

    def _search(
        self, tenant: str, query: Sequence[float], k: int, outcome: Outcome | None
    ) -> list[Any]:
        """The k nearest records not expired, nearest first, ties by memory id (as the KNN of
        sqlite-vec ranked them): the record columns, then the squared L2 distance."""
        index = self._indexes.get(tenant)
        if index is None:
            index = self._indexes[tenant] = self._load(tenant)
        near = index.candidates(query, k, outcome, self._retention.cutoff())
        distances = dict(near)
        records = []
        for start in range(0, len(near), _DELETE_CHUNK):
            chunk = [rowid for rowid, _ in near[start : start + _DELETE_CHUNK]]
            marks = ",".join("?" * len(chunk))
            records += [
                (*row[1:], distances[row[0]])
                for row in self._db.execute(
                    f"SELECT r.id, {_RECORD_COLUMNS} FROM memory_records r WHERE r.id IN ({marks})",
                    chunk,
                )
            ]
        records.sort(key=lambda row: (row[-1], row[0]))
        return records[:k]

    def _load(self, tenant: str) -> TenantIndex:
        """The tenant's index, read from the file."""
        # From the records to their vectors: vec0 reads a rowid's faster than it scans a
        # partition (100 000: 0.7 s against 1.2).
        rows = self._db.execute(
            "SELECT r.id, v.embedding, r.outcome, r.created FROM memory_records r "
            "JOIN memory_vectors v ON v.rowid = r.id WHERE r.tenant = ?",
            (tenant,),
        ).fetchall()
        return TenantIndex.of(self._dimensions, rows)


def _by_tenant(rows: Sequence[tuple[int, str]]) -> dict[str, list[int]]:
    """The rowids of (rowid, tenant) `rows`, by tenant."""
    grouped: dict[str, list[int]] = {}
    for rowid, tenant in rows:
        grouped.setdefault(tenant, []).append(rowid)
    return grouped
