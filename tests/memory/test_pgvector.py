"""The PostgreSQL memory's pgvector path (memory/pgvector.py) on a server that has pgvector
(tests/fixtures/pgvector_server.py), against the exact float4[] search on the same rows."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool

from cpa_scheduler.memory.embedder import lexical_embedder
from cpa_scheduler.memory.pgvector import PgvectorUnavailableError
from cpa_scheduler.memory.postgres_memory import Connection, PostgresMemory
from cpa_scheduler.memory.wiring import open_memory
from cpa_scheduler.settings import Settings
from cpa_scheduler.storage import migrate
from cpa_scheduler.storage.postgres_connections import open_pool
from cpa_scheduler.storage.sqlite_store import SqliteStore
from cpa_scheduler.telemetry import Operation, subscribe

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
        await connection.execute(
            f"SET LOCAL hnsw.ef_search = {approximate._vectors.ef_search(100)}"
        )
        plan = await connection.execute("EXPLAIN " + statement, parameters)
        assert "memory_hnsw_cosine_64" in str(await plan.fetchall())
        scanned = await connection.execute(statement, parameters)
        assert len(await scanned.fetchall()) < 100  # what the index alone gives

    hits = await _ids(approximate, "c", "query 1", 100)
    assert hits == await _ids(exact, "c", "query 1", 100)
    assert len(hits) == 100


class MiddleDistanceEmbedder(RandomEmbedder):
    """RandomEmbedder, except that the query is QUERY's direction and tenant c's texts all lie
    at cosine 0.1 from it: behind some 400 of 2000 random rows (cosine about N(0, 1/8)), so an
    HNSW scan of 100 candidates meets none of c's rows and one of 1000 meets most of them."""

    QUERY = "the query"

    def vector(self, text: str) -> list[float]:
        query = _unit(super().vector(self.QUERY))
        if text == self.QUERY or not text.startswith("c "):
            return super().vector(text)
        noise = super().vector(text)
        along = sum(x * q for x, q in zip(noise, query, strict=True))
        across = _unit([x - along * q for x, q in zip(noise, query, strict=True)])
        return [0.1 * q + math.sqrt(1 - 0.01) * x for q, x in zip(query, across, strict=True)]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


@pytest.mark.parametrize(
    ("setting", "used", "exact"),
    [
        # 20·k = 100 candidates, all other tenants' rows: the store ranks c's rows exactly.
        pytest.param(1, 100, 1, id="floor-below-20k"),
        # 1000 candidates hold c's rows: the index's answer stands.
        pytest.param(1000, 1000, 0, id="floor-1000"),
    ],
)
async def test_the_ef_search_setting_reaches_the_query(
    pgvector_database: str, tmp_path: Path, setting: int, used: int, exact: int
) -> None:
    migrate(pgvector_database)
    settings = Settings(
        database_url=pgvector_database,
        data_dir=tmp_path,
        memory_pgvector="on",
        memory_embedding_dimensions=64,
        memory_pgvector_ef_search=setting,
    )
    store = await SqliteStore.open(tmp_path / "jobs.sqlite3")
    memory = await open_memory(settings, store, redis=None, embedder=MiddleDistanceEmbedder())
    seen: list[Operation] = []
    try:
        assert isinstance(memory.semantic, PostgresMemory)
        await _fill(memory.semantic, "a", 2000)
        await _fill(memory.semantic, "c", 120)
        async with memory.semantic._pool.connection() as connection:
            await connection.execute("ANALYZE memory_records")
        stop = subscribe(seen.append)
        try:
            hits = await memory.semantic.search("c", MiddleDistanceEmbedder.QUERY, k=5)
        finally:
            stop()
    finally:
        await memory.close()
        await store.close()
    assert len(hits) == 5
    (search,) = [op for op in seen if op.name == "search"]
    # `exact` is what PostgreSQL's index scan gave under that ef_search: the value was set.
    assert (search.counts["ef_search"], search.counts["exact"]) == (used, exact)


def test_the_ef_search_setting_is_bounded_as_pgvector_bounds_it() -> None:
    assert Settings().memory_pgvector_ef_search == 400
    for refused in (0, 1001):
        with pytest.raises(ValueError, match="memory_pgvector_ef_search"):
            Settings(memory_pgvector_ef_search=refused)


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
