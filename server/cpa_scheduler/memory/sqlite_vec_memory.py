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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pysqlite3.dbapi2 as sqlite3  # type: ignore[import-untyped]
import sqlite_vec  # type: ignore[import-untyped]

from cpa_scheduler.storage.data_dir import make_private_directory, make_private_file
from cpa_scheduler.telemetry import timed

from .embedder import Embedder, unit
from .interface import MemoryHit, MemoryRecord, Outcome
from .records import check_query, plan_json, prepared, record_of

T = TypeVar("T")
_MMAP_BYTES = 1 << 30

_RECORD_COLUMNS = (
    "r.memory_id, r.tenant, r.text, r.plan, r.outcome, r.failure_reason, r.job_id, r.created"
)


class SqliteVecMemory:
    """Long-term memory in `path` (created with vectors of `embedder.dimensions`; a file made
    for another width is refused at open rather than searched wrongly)."""

    def __init__(self, path: Path, embedder: Embedder) -> None:
        self._embedder = embedder
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

    def _write(self, records: Sequence[MemoryRecord], blobs: Sequence[bytes]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for record, blob in zip(records, blobs, strict=True):
                self._write_one(record, blob)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write_one(self, record: MemoryRecord, blob: bytes) -> None:
        db = self._db
        # A record put again under its id (a job that ended again after a retry) replaces it.
        old = db.execute(
            "SELECT id FROM memory_records WHERE memory_id = ?", (record.memory_id,)
        ).fetchone()
        if old:
            db.execute("DELETE FROM memory_vectors WHERE rowid = ?", old)
            db.execute("DELETE FROM memory_records WHERE id = ?", old)
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
            rows = await self._run(lambda: self._knn(tenant, blob, k, outcome))
            timing.counts["results"] = len(rows)
        # Unit vectors: the cosine is 1 - d²/2 of the L2 distance d, and ranks the same.
        return [MemoryHit(record_of(*row[:-1]), 1.0 - row[-1] ** 2 / 2) for row in rows]

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
