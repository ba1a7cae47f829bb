"""The PostgreSQL memory's pgvector path (memory/pgvector.py) on a server that has pgvector
(tests/fixtures/pgvector_server.py), against the exact float4[] search on the same rows."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Sequence

import pytest
from psycopg_pool import AsyncConnectionPool

from cpa_scheduler.memory.embedder import lexical_embedder
from cpa_scheduler.memory.pgvector import PgvectorUnavailableError, ef_search
from cpa_scheduler.memory.postgres_memory import Connection, PostgresMemory
from cpa_scheduler.storage import migrate
from cpa_scheduler.storage.postgres_connections import open_pool

from .test_semantic_memory import record

Pool = AsyncConnectionPool[Connection]


class RandomEmbedder:
    """A dense pseudo-random vector per text: a model's embedding as far as an index is
    concerned (no ties, no structure helping it)."""

    def __init__(self, dimensions: int = 64) -> None:
        self.dimensions = dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.vector(text) for text in texts]

    def vector(self, text: str) -> list[float]:
        generator = random.Random(hashlib.sha256(text.encode()).digest())
        return [generator.gauss(0.0, 1.0) for _ in range(self.dimensions)]


@pytest.fixture
async def pool(pgvector_database: str) -> AsyncIterator[Pool]:
    migrate(pgvector_database)
    opened = await open_pool(pgvector_database, min_size=1, max_size=2)
    try:
        yield opened
    finally:
        await opened.close()


async def _fill(store: PostgresMemory, tenant: str, count: int) -> None:
    for start in range(0, count, 500):
        await store.put_many(
            [record(tenant, f"{tenant} memory {n}") for n in range(start, min(count, start + 500))]
        )


async def _ids(store: PostgresMemory, tenant: str, text: str, k: int) -> list[str]:
    return [hit.record.memory_id for hit in await store.search(tenant, text, k=k)]


async def test_hnsw_finds_the_exact_top_5_for_95_percent_and_is_the_plan(pool: Pool) -> None:
    approximate = await PostgresMemory.open(pool, RandomEmbedder(), pgvector="on")
    exact = PostgresMemory(pool, RandomEmbedder())
    assert approximate.uses_pgvector
    assert not exact.uses_pgvector
    await _fill(approximate, "a", 2000)
    await _fill(approximate, "b", 200)
    async with pool.connection() as connection:
        await connection.execute("ANALYZE memory_records")

    found = 0
    queries = [f"query {n}" for n in range(40)]
    for query in queries:
        wanted = await _ids(exact, "a", query, 5)
        assert len(wanted) == 5
        found += len(set(wanted) & set(await _ids(approximate, "a", query, 5)))

    assert found / (5 * len(queries)) >= 0.95
    # The search statement goes through the HNSW index of the store's width.
    assert approximate._vectors is not None
    statement = approximate._vectors.search("tenant = 'a'", "memory_id", exact=False)
    parameters = {"vector": RandomEmbedder().vector("q"), "k": 5}
    async with pool.connection() as connection:
        plan = await connection.execute("EXPLAIN " + statement, parameters)
        text = "\n".join(str(line) for (line,) in await plan.fetchall())
    assert "Index Scan using memory_hnsw_cosine_64" in text, text


async def test_a_tenant_with_few_rows_near_the_query_still_gets_its_exact_top_k(
    pool: Pool,
) -> None:
    # Tenant c has 120 of 2120 rows: the planner takes the HNSW index for it, whose scan yields
    # ef_search (1000 at k=100) candidates of all tenants, about 60 of them c's; the tenant
    # filter leaves fewer than k, and the store ranks c's rows exactly instead.
    approximate = await PostgresMemory.open(pool, RandomEmbedder(), pgvector="on")
    exact = PostgresMemory(pool, RandomEmbedder())
    await _fill(approximate, "a", 2000)
    await _fill(approximate, "c", 120)
    async with pool.connection() as connection:
        await connection.execute("ANALYZE memory_records")
    assert approximate._vectors is not None
    statement = approximate._vectors.search("tenant = 'c'", "memory_id", exact=False)
    parameters = {"vector": RandomEmbedder().vector("query 1"), "k": 100}
    async with pool.connection() as connection, connection.transaction():
        await connection.execute(f"SET LOCAL hnsw.ef_search = {ef_search(100)}")
        plan = await connection.execute("EXPLAIN " + statement, parameters)
        assert "memory_hnsw_cosine_64" in str(await plan.fetchall())
        scanned = await connection.execute(statement, parameters)
        assert len(await scanned.fetchall()) < 100  # what the index alone gives

    hits = await _ids(approximate, "c", "query 1", 100)
    assert hits == await _ids(exact, "c", "query 1", 100)
    assert len(hits) == 100


async def test_each_width_has_its_index_and_finds_only_its_rows(pool: Pool) -> None:
    wide = await PostgresMemory.open(pool, lexical_embedder(64), pgvector="on")
    await wide.put(record("a", "water the plants"))
    narrow = await PostgresMemory.open(pool, lexical_embedder(32), pgvector="on")
    await narrow.put(record("a", "water the garden plants"))

    assert [hit.record.text for hit in await wide.search("a", "plants")] == ["water the plants"]
    assert [hit.record.text for hit in await narrow.search("a", "plants")] == [
        "water the garden plants"
    ]
    async with pool.connection() as connection:
        rows = await connection.execute(
            "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'memory_hnsw_%' ORDER BY 1"
        )
        assert [name for (name,) in await rows.fetchall()] == [
            "memory_hnsw_cosine_32",
            "memory_hnsw_cosine_64",
        ]


async def test_the_setting_chooses_the_path(pool: Pool, postgres_database: str) -> None:
    assert not (await PostgresMemory.open(pool, lexical_embedder(64), pgvector="off")).uses_pgvector
    with pytest.raises(PgvectorUnavailableError, match="at most 2000 dimensions"):
        await PostgresMemory.open(pool, lexical_embedder(2048), pgvector="on")
    # The machine's PostgreSQL has no pgvector: `auto` searches exactly, `on` refuses.
    migrate(postgres_database)
    plain = await open_pool(postgres_database, min_size=1, max_size=1)
    try:
        assert not (await PostgresMemory.open(plain, lexical_embedder(64))).uses_pgvector
        with pytest.raises(PgvectorUnavailableError, match="no pgvector column"):
            await PostgresMemory.open(plain, lexical_embedder(64), pgvector="on")
    finally:
        await plain.close()
