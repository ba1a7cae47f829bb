"""The embedded store's in-memory search index (memory/vector_index.py) against its file: a
search answers what sqlite-vec's KNN over the file's vec0 table did, and what a brute-force
scan of the file's rows gives after every kind of write (puts, replacements, deletes, the sweep,
the cap), in this instance and in a fresh one opened on the same file."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pysqlite3.dbapi2 as sqlite3  # type: ignore[import-untyped]
import pytest
import sqlite_vec  # type: ignore[import-untyped]

from cpa_scheduler.memory.interface import MemoryRecord, Outcome, Selection
from cpa_scheduler.memory.records import Retention
from cpa_scheduler.memory.sqlite_vec_memory import SqliteVecMemory
from cpa_scheduler.memory.vector_index import TenantIndex

DIMENSIONS = 32
DAY_S = 86_400.0


class TableEmbedder:
    """Text "v<n>" is vector n of a fixed random table (clustered, so that near ties occur);
    "zero" the zero vector."""

    def __init__(self, count: int, seed: int = 16) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((8, DIMENSIONS))
        picks = rng.integers(0, 8, count)
        self.table = centres[picks] + 0.3 * rng.standard_normal((count, DIMENSIONS))

    @property
    def dimensions(self) -> int:
        return DIMENSIONS

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [
            [0.0] * DIMENSIONS if text == "zero" else self.table[int(text[1:])].tolist()
            for text in texts
        ]


def _record(tenant: str, n: int, *, age_s: float = 0.0, **fields: Any) -> MemoryRecord:
    return MemoryRecord(
        **{
            "memory_id": f"{tenant}-{n}",
            "tenant": tenant,
            "text": f"v{n}",
            "outcome": "failed" if n % 3 == 0 else "succeeded",
            "job_id": f"job-{n % 7}",
            "created_unix_s": time.time() - age_s,
            **fields,
        }
    )


def _connect(path: Path) -> Any:
    db = sqlite3.connect(str(path))
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    return db


def _brute_force(
    path: Path, tenant: str, query: Sequence[float], k: int, outcome: Outcome | None, cutoff: float
) -> list[tuple[str, float]]:
    """(memory id, score) of the k nearest by a scan of every row of the file."""
    with closing(_connect(path)) as db:
        rows = db.execute(
            "SELECT r.memory_id, r.outcome, r.created, v.embedding FROM memory_records r "
            "JOIN memory_vectors v ON v.rowid = r.id WHERE r.tenant = ?",
            (tenant,),
        ).fetchall()
    q = np.asarray(query, dtype=np.float64)
    q = (q / np.linalg.norm(q)).astype(np.float32).astype(np.float64)  # as the store keeps it
    ranked = []
    for memory_id, row_outcome, created, blob in rows:
        if (outcome is None or row_outcome == outcome) and created >= cutoff:
            vector = np.frombuffer(blob, dtype=np.float32).astype(np.float64)
            ranked.append((float(np.sum((vector - q) ** 2)), memory_id))
    ranked.sort()
    return [(memory_id, 1.0 - d / 2) for d, memory_id in ranked[:k]]


async def _hits(
    memory: SqliteVecMemory, tenant: str, n: int, k: int, outcome: Outcome | None
) -> list[tuple[str, float]]:
    return [
        (hit.record.memory_id, hit.score)
        for hit in await memory.search(tenant, f"v{n}", k=k, outcome=outcome)
    ]


async def _check(
    path: Path, memory: SqliteVecMemory, embedder: TableEmbedder, retention: Retention
) -> None:
    """Searches of this instance and of a fresh one on the file equal the brute force."""
    fresh = SqliteVecMemory(path, embedder, retention)
    try:
        for n in range(0, 400, 37):
            for tenant in ("a", "b"):
                searches: tuple[tuple[int, Outcome | None], ...] = (
                    (5, None),
                    (12, "failed"),
                    (100, "succeeded"),
                )
                for k, outcome in searches:
                    query = embedder.table[n].tolist()
                    expected = _brute_force(path, tenant, query, k, outcome, retention.cutoff())
                    for store in (memory, fresh):
                        got = await _hits(store, tenant, n, k, outcome)
                        assert [m for m, _ in got] == [m for m, _ in expected]
                        assert [s for _, s in got] == pytest.approx(
                            [s for _, s in expected], abs=1e-6
                        )
    finally:
        await fresh.close()


async def test_the_index_stays_in_step_with_the_file_through_every_write(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    embedder = TableEmbedder(400)
    retention = Retention(max_age_s=DAY_S, max_per_tenant=150)
    memory = SqliteVecMemory(path, embedder, retention)
    try:
        # a's index is loaded empty, before any write, so that every write goes through it; b's
        # at the first check, from the file, and then kept in step.
        assert await memory.search("a", "v1") == []
        await memory.put_many([_record("a", n) for n in range(120)])
        await memory.put_many([_record("b", n) for n in range(0, 400, 3)])
        for n in range(120, 130):
            await memory.put(_record("a", n))
        await _check(path, memory, embedder, retention)

        # Replaced under their ids: new vectors and outcomes; another tenant's id is not taken.
        await memory.put_many(
            [_record("a", n, text=f"v{399 - n}", outcome="failed") for n in range(0, 40, 2)]
        )
        await memory.put(_record("a", 3, memory_id="b-3"))
        await _check(path, memory, embedder, retention)

        # Duplicated vectors (equal distances: ties by memory id) and a zero vector.
        await memory.put_many([_record("a", 200 + n, text="v5") for n in range(6)])
        await memory.put(_record("a", 300, text="zero"))
        await _check(path, memory, embedder, retention)

        assert await memory.delete("a", Selection(job_id="job-2")) > 0
        assert await memory.delete("a", Selection(memory_id="a-7")) == 1
        assert await memory.delete("b", Selection(memory_id="a-8")) == 0
        await _check(path, memory, embedder, retention)

        # Expired: hidden at once, then swept; the cap drops each tenant's oldest.
        expired = [_record("b", 1000 + n, text=f"v{n}", age_s=2 * DAY_S) for n in range(50)]
        await memory.put_many(expired)
        await _check(path, memory, embedder, retention)
        while await memory.sweep_expired(batch=20):
            pass
        await _check(path, memory, embedder, retention)
        await memory.put_many([_record("a", 2000 + n, text=f"v{n}") for n in range(0, 400, 2)])
        await memory.put_many([_record("b", 2000 + n, text=f"v{n}") for n in range(100)])
        with closing(_connect(path)) as db:
            counts = dict(db.execute("SELECT tenant, count(*) FROM memory_records GROUP BY 1"))
        assert counts == {"a": 150, "b": 150}
        await _check(path, memory, embedder, retention)

        assert await memory.delete("b", Selection()) == 150
        await _check(path, memory, embedder, retention)
        assert await memory.search("b", "v1") == []
    finally:
        await memory.close()


async def test_results_equal_sqlite_vecs_knn_over_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    embedder = TableEmbedder(600, seed=3)
    memory = SqliteVecMemory(path, embedder)
    try:
        await memory.put_many([_record("a", n) for n in range(500)])
        await memory.put_many([_record("b", n) for n in range(100)])
        with closing(_connect(path)) as db:
            for n in range(500, 600):
                outcome: Outcome | None = ("succeeded", "failed", None)[n % 3]
                k = 1 + n % 20
                where = "embedding MATCH ? AND k = ? AND tenant = 'a'"
                blob = sqlite_vec.serialize_float32(
                    (embedder.table[n] / np.linalg.norm(embedder.table[n])).tolist()
                )
                parameters: list[Any] = [blob, k]
                if outcome:
                    where += " AND outcome = ?"
                    parameters.append(outcome)
                expected = db.execute(
                    f"WITH knn AS (SELECT rowid, distance FROM memory_vectors WHERE {where}) "
                    "SELECT r.memory_id, 1.0 - knn.distance * knn.distance / 2 FROM knn "
                    "JOIN memory_records r ON r.id = knn.rowid ORDER BY knn.distance, r.memory_id",
                    parameters,
                ).fetchall()
                got = await _hits(memory, "a", n, k, outcome)
                assert [m for m, _ in got] == [m for m, _ in expected]
                assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-5)
    finally:
        await memory.close()


async def test_an_index_that_failed_to_follow_a_write_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "memory.db"
    embedder = TableEmbedder(400)
    memory = SqliteVecMemory(path, embedder)
    try:
        await memory.put_many([_record("a", n) for n in range(50)])
        await _check(path, memory, embedder, Retention())
        with monkeypatch.context() as patch:
            patch.setattr(TenantIndex, "add", _no_memory)
            with pytest.raises(MemoryError):
                await memory.put_many([_record("a", n) for n in range(50, 100)])
        await _check(path, memory, embedder, Retention())  # committed: found
    finally:
        await memory.close()


def _no_memory(*_: object) -> None:
    raise MemoryError


def test_the_index_grows_and_swap_removes() -> None:
    index = TenantIndex(2, capacity=1)
    vectors = {n: np.asarray([np.cos(n), np.sin(n)], dtype=np.float32) for n in range(200)}
    for n, vector in vectors.items():
        index.add(n, vector.tobytes(), "succeeded", 0.0)
    for n in range(0, 200, 2):
        index.remove(n)
    index.remove(1000)  # unknown: nothing
    assert len(index) == 100
    assert 0 not in index
    assert 1 in index
    near = index.candidates([1.0, 0.0], 100, None, float("-inf"))
    expected = sorted(
        (float(np.sum((vectors[n].astype(np.float64) - [1.0, 0.0]) ** 2)), n)
        for n in range(1, 200, 2)
    )
    assert [rowid for rowid, _ in near] == [n for _, n in expected]
