"""Semantic memory: put and search throughput, retrieval p50/p99 in the embedded store
(sqlite-vec) at 10k and 100k memories, in the PostgreSQL fallback (float4[], exact cosine in
SQL) at 10k, and in PostgreSQL with pgvector (HNSW) at 100k with its recall against the exact
search. Figures go to docs/PERFORMANCE.md ("Context memory").

`python bench/bench_memory.py [--sizes 10000,100000] [--pg-size 10000] [--searches 200]
[--postgres postgresql://…] [--pgvector postgresql://… --pgvector-size 100000]` (without a
server's URL its part is skipped; docs/MEMORY.md says how to run pgserver's PostgreSQL with
pgvector locally).

Worst case on purpose: one tenant holds every memory (a search reads only its tenant's
partition, so spreading the same count over tenants is faster). Texts are 8-16 words drawn from a
2 000-word vocabulary; the embedder is the embedded mode's lexical one (256 dimensions), so the
times include embedding the query, as a caller sees them.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg

from cpa_scheduler.memory.embedder import lexical_embedder
from cpa_scheduler.memory.interface import MemoryRecord
from cpa_scheduler.memory.postgres_memory import PostgresMemory
from cpa_scheduler.memory.sqlite_vec_memory import SqliteVecMemory
from cpa_scheduler.storage import migrate
from cpa_scheduler.storage.postgres_connections import open_pool

TENANT = "bench"
BATCH = 1000
_rng = random.Random(16)
_VOCABULARY = [f"w{n}" for n in range(2000)]


def _text() -> str:
    return " ".join(_rng.choices(_VOCABULARY, k=_rng.randint(8, 16)))


def _record(n: int) -> MemoryRecord:
    return MemoryRecord(
        memory_id=f"m{n}",
        tenant=TENANT,
        text=_text(),
        plan=({"id": "a", "action": "noop"},),
        outcome="failed" if n % 5 == 0 else "succeeded",
        failure_reason="BOOM: bench" if n % 5 == 0 else "",
    )


Store = SqliteVecMemory | PostgresMemory


async def _fill(store: Store, start: int, stop: int) -> float:
    """Put memories start..stop in batches; returns memories per second."""
    began = time.perf_counter()
    for first in range(start, stop, BATCH):
        await store.put_many([_record(n) for n in range(first, min(first + BATCH, stop))])
    return (stop - start) / (time.perf_counter() - began)


async def _timed(calls: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        await call()
        times.append((time.perf_counter() - began) * 1000)
    return times


def _p(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=100)[int(q) - 1] if len(times) > 1 else times[0]


async def _measure(label: str, store: Store, size: int, searches: int) -> None:
    singles = await _timed(200, lambda: store.put(_record(10_000_000 + _rng.randrange(10**9))))
    search = await _timed(searches, lambda: store.search(TENANT, _text(), k=5))
    failed = await _timed(
        searches // 2, lambda: store.search(TENANT, _text(), k=5, outcome="failed")
    )
    print(
        f"{label:<22} {size:>7,} memories | single put p50 {_p(singles, 50):6.2f} ms "
        f"({1000 / statistics.mean(singles):6.0f}/s) | search k=5 p50 {_p(search, 50):6.2f} ms "
        f"p99 {_p(search, 99):6.2f} ms ({1000 / statistics.mean(search):5.0f}/s) | "
        f"outcome=failed p50 {_p(failed, 50):6.2f} p99 {_p(failed, 99):6.2f} ms"
    )


async def _embedded(sizes: list[int], searches: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteVecMemory(Path(directory) / "memory.sqlite3", lexical_embedder(256))
        try:
            filled = 0
            for size in sizes:
                rate = await _fill(store, filled, size)
                filled = size
                print(f"sqlite-vec bulk put (batches of {BATCH}): {rate:,.0f} memories/s")
                # The first search of a tenant reads its vectors into memory (vector_index.py);
                # the store stays open, so only the first size's pays it.
                began = time.perf_counter()
                await store.search(TENANT, _text(), k=5)
                first = (time.perf_counter() - began) * 1000
                print(f"sqlite-vec first search (loads the tenant's index): {first:,.0f} ms")
                await _measure("sqlite-vec", store, size, searches)
        finally:
            await store.close()


async def _recall(approximate: Store, exact: Store, queries: int) -> float:
    """Share of the exact top 5 the approximate search also returns."""
    found = 0
    for _ in range(queries):
        text = _text()
        wanted = {hit.record.memory_id for hit in await exact.search(TENANT, text, k=5)}
        got = {hit.record.memory_id for hit in await approximate.search(TENANT, text, k=5)}
        found += len(wanted & got)
    return found / (5 * queries)


async def _postgres(
    server_url: str, size: int, searches: int, *, pgvector: bool = False, recall: int = 0
) -> None:
    name = f"cpa_bench_memory_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
        migrate(url)
        pool = await open_pool(url, min_size=1, max_size=2)
        try:
            store = exact = PostgresMemory(pool, lexical_embedder(256))
            label = "postgres (pgvector)" if pgvector else "postgres (no pgvector)"
            rate = await _fill(store, 0, size)
            print(f"{label} bulk put, no HNSW index yet (batches of {BATCH}): {rate:,.0f}/s")
            if pgvector:
                # The HNSW index built over the rows there, as the first replica opening a
                # database upgraded to 0012 does (a put into the index is slower: see "single
                # put"; building it once is faster than growing it row by row).
                began = time.perf_counter()
                store = await PostgresMemory.open(pool, lexical_embedder(256), pgvector="on")
                built = time.perf_counter() - began
                print(f"{label} HNSW index built over {size:,} memories in {built:.1f} s")
            async with pool.connection() as connection:
                await connection.execute("ANALYZE memory_records")
            await _measure(label, store, size, searches)
            if recall:
                share = await _recall(store, exact, recall)
                print(f"{label} recall of the exact top 5 over {recall} queries: {share:.3f}")
        finally:
            await pool.close()
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--pg-size", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--postgres", default="", help="admin URL of a PostgreSQL server")
    parser.add_argument("--pgvector", default="", help="admin URL of one with pgvector")
    parser.add_argument("--pgvector-size", type=int, default=100_000)
    parser.add_argument("--recall-queries", type=int, default=50)
    parser.add_argument("--no-embedded", action="store_true", help="skip sqlite-vec")
    arguments = parser.parse_args()
    sizes = sorted(int(size) for size in arguments.sizes.split(","))
    if not arguments.no_embedded:
        asyncio.run(_embedded(sizes, arguments.searches))
    if arguments.postgres:
        asyncio.run(_postgres(arguments.postgres, arguments.pg_size, arguments.searches))
    if arguments.pgvector:
        asyncio.run(
            _postgres(
                arguments.pgvector,
                arguments.pgvector_size,
                arguments.searches,
                pgvector=True,
                recall=arguments.recall_queries,
            )
        )


if __name__ == "__main__":
    main()
