"""The migrations up and down on both test servers: the machine's PostgreSQL 15 without pgvector
and the PostgreSQL 16 with it (tests/fixtures/pgvector_server.py), where migration 0012 differs."""

from __future__ import annotations

import psycopg
import pytest
from alembic import command

from cpa_scheduler.memory.embedder import lexical_embedder
from cpa_scheduler.memory.postgres_memory import PostgresMemory
from cpa_scheduler.storage import head_revision, migrate, schema_revision
from cpa_scheduler.storage.migrations import _IN_PROCESS, _config
from cpa_scheduler.storage.postgres_connections import open_pool
from tests.memory.test_semantic_memory import record

SERVERS = {"postgres": "postgres_database", "pgvector": "pgvector_database"}


def _to(url: str, revision: str) -> None:
    with _IN_PROCESS:
        command.downgrade(_config(url), revision)


def _vector_column(url: str) -> bool:
    with psycopg.connect(url) as connection:
        return (
            connection.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_name = 'memory_records' "
                "AND column_name = 'embedding_vector'"
            ).fetchone()
            is not None
        )


@pytest.mark.parametrize("server", list(SERVERS))
def test_every_migration_goes_down_to_nothing_and_up_again(
    server: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(SERVERS[server])
    assert migrate(url) == head_revision()
    assert _vector_column(url) == (server == "pgvector")

    _to(url, "base")
    with psycopg.connect(url) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == [("alembic_version",)]

    assert migrate(url) == head_revision()
    assert _vector_column(url) == (server == "pgvector")


async def test_0012_gives_the_rows_already_there_vectors_and_takes_them_back(
    pgvector_database: str,
) -> None:
    migrate(pgvector_database)
    pool = await open_pool(pgvector_database, min_size=1, max_size=1)  # checks the revision
    try:
        _to(pgvector_database, "0011")
        assert not _vector_column(pgvector_database)
        before = PostgresMemory(pool, lexical_embedder(64))  # as a 0011 replica writes
        kept = await before.put(record("a", "water the plants"))

        migrate(pgvector_database)
        after = await PostgresMemory.open(pool, lexical_embedder(64), pgvector="on")
        assert [hit.record.memory_id for hit in await after.search("a", "plants")] == [
            kept.memory_id
        ]

        await pool.close()  # the downgrade drops the column under the index
        _to(pgvector_database, "0011")
        assert schema_revision(pgvector_database) == "0011"
        assert not _vector_column(pgvector_database)
        with psycopg.connect(pgvector_database) as connection:
            indexes = connection.execute(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'memory_hnsw_%'"
            ).fetchall()
        assert indexes == []
    finally:
        await pool.close()
