"""The semantic stores under test, each on an empty state: sqlite-vec in a temporary file,
PostgreSQL without pgvector (the exact float4[] search) in a fresh migrated database of the test
server, and PostgreSQL with pgvector (HNSW) in one of the pgvector server
(tests/fixtures/pgvector_server.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from cpa_scheduler.memory.embedder import lexical_embedder
from cpa_scheduler.memory.pgvector import PgvectorMode
from cpa_scheduler.memory.postgres_memory import PostgresMemory
from cpa_scheduler.memory.records import KEEP_ALL, Retention
from cpa_scheduler.memory.sqlite_vec_memory import SqliteVecMemory
from cpa_scheduler.storage import migrate
from cpa_scheduler.storage.postgres_connections import open_pool

Semantic = SqliteVecMemory | PostgresMemory


STORES = ["sqlite-vec", "postgres", "pgvector"]
# The database fixture of each PostgreSQL store, and what CPA_MEMORY_PGVECTOR it opens with
# (`on`: a pgvector store that fell back to the exact search would fail to open).
DATABASES: dict[str, tuple[str, PgvectorMode]] = {
    "postgres": ("postgres_database", "auto"),
    "pgvector": ("pgvector_database", "on"),
}


@pytest.fixture(params=STORES)
async def semantic(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Semantic]:
    if request.param == "sqlite-vec":
        embedded = SqliteVecMemory(tmp_path / "memory.db", lexical_embedder(64))
        yield embedded
        await embedded.close()
        return
    async with postgres_store_of(request, request.param) as distributed:
        yield distributed


@pytest.fixture(params=list(DATABASES))
async def postgres_memory(request: pytest.FixtureRequest) -> AsyncIterator[PostgresMemory]:
    async with postgres_store_of(request, request.param) as store:
        yield store


# What the retention tests keep: a day of records, three per tenant.
RETENTION = Retention(max_age_s=86_400.0, max_per_tenant=3)


@pytest.fixture(params=STORES)
async def retained(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Semantic]:
    """Each store with RETENTION."""
    if request.param == "sqlite-vec":
        embedded = SqliteVecMemory(tmp_path / "memory.db", lexical_embedder(64), RETENTION)
        yield embedded
        await embedded.close()
        return
    async with postgres_store_of(request, request.param, RETENTION) as distributed:
        yield distributed


def postgres_store_of(
    request: pytest.FixtureRequest, store: str, retention: Retention = KEEP_ALL
) -> AbstractAsyncContextManager[PostgresMemory]:
    """The PostgreSQL `store` ("postgres" or "pgvector") on a fresh database."""
    database, pgvector = DATABASES[store]
    return postgres_store(request.getfixturevalue(database), retention, pgvector=pgvector)


@asynccontextmanager
async def postgres_store(
    url: str, retention: Retention = KEEP_ALL, *, pgvector: PgvectorMode = "auto"
) -> AsyncIterator[PostgresMemory]:
    """The PostgreSQL store on the fresh database `url`, migrated."""
    migrate(url)
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        yield await PostgresMemory.open(pool, lexical_embedder(64), retention, pgvector=pgvector)
    finally:
        await pool.close()
