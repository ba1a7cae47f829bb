"""The pgvector path of the PostgreSQL memory (docs/adr/0004-memory-vectors-in-postgresql.md).

Where migration 0012 found the extension, `memory_records.embedding_vector` is the embedding as
a pgvector `vector`, generated from the float4[] one. The store then ranks by an HNSW index
(cosine) of its width, made here when it opens; a database without the column keeps the exact
float4[] search (postgres_memory.py).

The index is partial, on the rows of the store's width: a width is a setting
(CPA_MEMORY_EMBEDDING_DIMENSIONS), rows of an earlier width stay (incomparable, never
returned), and each width has its index.

A tenant filter is applied to what the HNSW scan yields, and pgvector 0.6 has no iterative
scan: a tenant with few of the rows near the query can get fewer than k from it. So a search
raises hnsw.ef_search (more candidates per scan: CPA_MEMORY_PGVECTOR_EF_SEARCH, at least 20·k),
and when fewer than k rows still come back it ranks the tenant's rows exactly (pgvector's
distance, no index): a short answer means the tenant has few rows there, which the exact
ranking reads quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg_pool import AsyncConnectionPool

from cpa_scheduler.settings.memory import PGVECTOR_EF_SEARCH_DEFAULT, PGVECTOR_EF_SEARCH_MAX

PgvectorMode = Literal["auto", "on", "off"]
Connection = psycopg.AsyncConnection[tuple[object, ...]]

# pgvector 0.6's HNSW indexes vectors of at most this many dimensions.
HNSW_MAX_DIMENSIONS = 2000
# Replicas opening at once make the index one after the other (any constant: the lock's id).
_INDEX_LOCK = 0x4350_4D56  # "CPMV"
_COLUMN = (
    "SELECT 1 FROM pg_attribute WHERE attrelid = 'memory_records'::regclass "
    "AND attname = 'embedding_vector' AND NOT attisdropped"
)


class PgvectorUnavailableError(RuntimeError):
    """CPA_MEMORY_PGVECTOR=on, and the database cannot give the store an HNSW index."""


@dataclass(frozen=True, slots=True)
class VectorIndex:
    """The HNSW index of one width; `search` makes the statements ranking by it, with at least
    `ef_search_floor` candidates per scan (ef_search)."""

    dimensions: int
    ef_search_floor: int = PGVECTOR_EF_SEARCH_DEFAULT

    @property
    def name(self) -> str:
        return f"memory_hnsw_cosine_{self.dimensions}"

    def create(self) -> str:
        n = self.dimensions
        return (
            f"CREATE INDEX IF NOT EXISTS {self.name} ON memory_records USING hnsw "
            f"((embedding_vector::vector({n})) vector_cosine_ops) "
            f"WHERE vector_dims(embedding_vector) = {n}"
        )

    def search(self, where: str, columns: str, *, exact: bool) -> str:
        """The k rows of `where` nearest the query (%(vector)s): by the index, or, `exact`, by
        the distance to each row (the ORDER BY is then not the index's expression)."""
        n = self.dimensions
        # The score is the inner product, which for unit vectors is the cosine the exact
        # path answers (and 0, not NaN, for a zero vector).
        select = (
            f"SELECT {columns}, -(embedding_vector <#> %(vector)s::real[]::vector) AS score "
            f"FROM memory_records WHERE {where} AND vector_dims(embedding_vector) = {n} "
        )
        if exact:
            return select + (
                "ORDER BY embedding_vector <=> %(vector)s::real[]::vector, memory_id LIMIT %(k)s"
            )
        return select + (
            f"ORDER BY embedding_vector::vector({n}) <=> %(vector)s::real[]::vector({n}) "
            "LIMIT %(k)s"
        )

    def ef_search(self, k: int) -> int:
        """Candidates one HNSW scan considers before the tenant filter for a search of k:
        pgvector's default 40 is too few once other tenants' rows take most of them."""
        return min(PGVECTOR_EF_SEARCH_MAX, max(self.ef_search_floor, 20 * k))


async def open_vector_index(
    pool: AsyncConnectionPool[Connection],
    dimensions: int,
    mode: PgvectorMode,
    *,
    ef_search: int = PGVECTOR_EF_SEARCH_DEFAULT,
) -> VectorIndex | None:
    """The index the store searches by (made if missing), or None for the exact search: `off`,
    or `auto` on a database without pgvector. `on` without it raises PgvectorUnavailableError."""
    if mode == "off":
        return None
    async with pool.connection() as connection:
        has_column = await (await connection.execute(_COLUMN)).fetchone() is not None
        if not has_column or dimensions > HNSW_MAX_DIMENSIONS:
            if mode == "on":
                raise PgvectorUnavailableError(_why_not(has_column, dimensions))
            return None
        index = VectorIndex(dimensions, ef_search)
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_INDEX_LOCK,))
            await connection.execute(index.create())
    return index


def _why_not(has_column: bool, dimensions: int) -> str:
    if not has_column:
        return (
            "CPA_MEMORY_PGVECTOR=on, but memory_records has no pgvector column (migration 0012 "
            "adds it where the server has pgvector): install pgvector on the PostgreSQL server "
            'and add the column (docs/MEMORY.md, "pgvector"), or set CPA_MEMORY_PGVECTOR=auto '
            "to search exactly without it"
        )
    return (
        f"CPA_MEMORY_PGVECTOR=on, but pgvector's HNSW indexes at most {HNSW_MAX_DIMENSIONS} "
        f"dimensions and CPA_MEMORY_EMBEDDING_DIMENSIONS is {dimensions}"
    )
