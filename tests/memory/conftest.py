"""The semantic stores under test, each on an empty state: sqlite-vec in a temporary file, and
PostgreSQL (the float4[] fallback) in a fresh migrated database of the test server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from cpa_scheduler.memory.embedder import lexical_embedder
from cpa_scheduler.memory.postgres_memory import PostgresMemory
from cpa_scheduler.memory.records import KEEP_ALL, Retention
from cpa_scheduler.memory.sqlite_vec_memory import SqliteVecMemory
from cpa_scheduler.storage import migrate
from cpa_scheduler.storage.postgres_connections import open_pool

Semantic = SqliteVecMemory | PostgresMemory


@pytest.fixture(params=["sqlite-vec", "postgres"])
async def semantic(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Semantic]:
    if request.param == "sqlite-vec":
        embedded = SqliteVecMemory(tmp_path / "memory.db", lexical_embedder(64))
        yield embedded
        await embedded.close()
        return
    async with postgres_store(request.getfixturevalue("postgres_database")) as distributed:
        yield distributed


@pytest.fixture
async def postgres_memory(postgres_database: str) -> AsyncIterator[PostgresMemory]:
    async with postgres_store(postgres_database) as store:
        yield store


# What the retention tests keep: a day of records, three per tenant.
RETENTION = Retention(max_age_s=86_400.0, max_per_tenant=3)


@pytest.fixture(params=["sqlite-vec", "postgres"])
async def retained(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Semantic]:
    """Each store with RETENTION."""
    if request.param == "sqlite-vec":
        embedded = SqliteVecMemory(tmp_path / "memory.db", lexical_embedder(64), RETENTION)
        yield embedded
        await embedded.close()
        return
    url = request.getfixturevalue("postgres_database")
    async with postgres_store(url, RETENTION) as distributed:
        yield distributed


@asynccontextmanager
async def postgres_store(
    url: str, retention: Retention = KEEP_ALL
) -> AsyncIterator[PostgresMemory]:
    """The PostgreSQL store (no pgvector: float4[] and exact cosine) on a fresh database."""
    migrate(url)
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        yield PostgresMemory(pool, lexical_embedder(64), retention)
    finally:
        await pool.close()
