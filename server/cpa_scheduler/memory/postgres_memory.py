"""Semantic memory of the distributed mode: PostgreSQL, without pgvector.

Debian's PostgreSQL has no pgvector, so the unit-length vector is a float4[] column and a search
ranks the tenant's rows by an exact cosine (a dot product of unit vectors) computed in SQL: exact,
tenant-scoped by the WHERE clause, and linear in the tenant's records (docs/adr/
0004-memory-vectors-in-postgresql.md says why, and where it stops being enough).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cpa_scheduler.telemetry import timed

from .embedder import Embedder, unit
from .interface import MemoryHit, MemoryRecord, Outcome
from .records import check_query, prepared, record_of

Connection = psycopg.AsyncConnection[tuple[object, ...]]
_COLUMNS = "memory_id, tenant, text, plan, outcome, failure_reason, job_id, created"
# A record put again under its id replaces it, never across tenants (ids are unguessable, but a
# put must not be able to overwrite another tenant's row even so).
_UPSERT = (
    f"INSERT INTO memory_records ({_COLUMNS}, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
    "%s) ON CONFLICT (memory_id) DO UPDATE SET text = EXCLUDED.text, plan = EXCLUDED.plan, "
    "outcome = EXCLUDED.outcome, failure_reason = EXCLUDED.failure_reason, created = "
    "EXCLUDED.created, embedding = EXCLUDED.embedding "
    "WHERE memory_records.tenant = EXCLUDED.tenant"
)
# The dot product of two unit vectors; unnest with two arrays pairs them element by element.
_COSINE = "(SELECT sum(a * b) FROM unnest(embedding, %(vector)s::float4[]) AS t(a, b))"
_DENSE_SEARCH = (
    f"SELECT {_COLUMNS}, {_COSINE} AS score FROM memory_records WHERE {{where}} "
    "ORDER BY score DESC NULLS LAST, memory_id LIMIT %(k)s"
)
# A query with few non-zero components (the lexical embedder's: one per word) needs only those
# of each row: the same exact cosine, 5x faster at 5k rows; with a dense query it is 4x slower.
_SPARSE_SEARCH = (
    "WITH q AS (SELECT x, i FROM unnest(%(vector)s::float4[]) WITH ORDINALITY AS q(x, i) "
    "WHERE x <> 0), ranked AS (SELECT memory_id, sum(embedding[q.i] * q.x) AS score "
    "FROM memory_records CROSS JOIN q WHERE {where} GROUP BY memory_id "
    "ORDER BY score DESC, memory_id LIMIT %(k)s) "
    f"SELECT {_COLUMNS}, ranked.score FROM ranked JOIN memory_records USING (memory_id) "
    "ORDER BY ranked.score DESC, memory_id"
)
# At most this share of non-zero components takes the sparse plan.
_SPARSE_SHARE = 0.25


class PostgresMemory:
    """Long-term memory in the `memory_records` table (migration 0010) of the pool's database."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        embedder: Embedder,
    ) -> None:
        self._pool = pool
        self._embedder = embedder

    async def put(self, record: MemoryRecord) -> MemoryRecord:
        (stored,) = await self.put_many([record])
        return stored

    async def put_many(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """Put `records` in one embedding call and one statement batch (imports, benchmarks)."""
        prepared_records = [prepared(record) for record in records]
        with timed("memory_query", "put", store="postgres") as timing:
            vectors = await self._embedder.embed([record.text for record in prepared_records])
            rows = [
                (
                    record.memory_id,
                    record.tenant,
                    record.text,
                    Jsonb(list(record.plan)),
                    record.outcome,
                    record.failure_reason,
                    record.job_id,
                    record.created_unix_s,
                    unit(vector),
                )
                for record, vector in zip(prepared_records, vectors, strict=True)
            ]
            async with (
                self._pool.connection() as connection,
                connection.transaction(),
                connection.cursor() as cursor,
            ):
                await cursor.executemany(_UPSERT, rows)
            timing.counts["records"] = len(rows)
        return prepared_records

    async def search(
        self, tenant: str, text: str, *, k: int = 5, outcome: Outcome | None = None
    ) -> list[MemoryHit]:
        check_query(k, outcome)
        with timed("memory_query", "search", store="postgres") as timing:
            (vector,) = await self._embedder.embed([text])
            query = unit(vector)
            nonzero = sum(1 for x in query if x)
            if not nonzero:  # no word the embedder knows: nothing is similar
                return []
            where = "tenant = %(tenant)s" + (" AND outcome = %(outcome)s" if outcome else "")
            plan = _SPARSE_SEARCH if nonzero <= _SPARSE_SHARE * len(query) else _DENSE_SEARCH
            async with self._pool.connection() as connection:
                cursor = await connection.execute(
                    plan.format(where=where),
                    {"tenant": tenant, "outcome": outcome, "vector": query, "k": k},
                )
                rows = await cursor.fetchall()
            timing.counts["results"] = len(rows)
        return [MemoryHit(record_of(*row[:-1]), float(row[-1] or 0.0)) for row in rows]  # type: ignore[arg-type]
