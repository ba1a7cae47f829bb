"""Semantic memory of the distributed mode: PostgreSQL, with pgvector where the server has it.

The unit-length vector is a float4[] column. Without pgvector (Debian's PostgreSQL) a search
ranks the tenant's rows by an exact cosine (a dot product of unit vectors) computed in SQL:
exact, tenant-scoped by the WHERE clause, and linear in the tenant's records. With it, the
same vector as a pgvector column is searched by an HNSW index (pgvector.py). docs/adr/
0004-memory-vectors-in-postgresql.md says why, and what each path gives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cpa_scheduler.settings.memory import PGVECTOR_EF_SEARCH_DEFAULT
from cpa_scheduler.telemetry import timed

from .embedder import Embedder, unit
from .interface import MemoryHit, MemoryRecord, Outcome, Selection
from .pgvector import PgvectorMode, VectorIndex, open_vector_index
from .records import KEEP_ALL, Retention, check_query, prepared, record_of, selection_filter

Connection = psycopg.AsyncConnection[tuple[object, ...]]
Cursor = psycopg.AsyncCursor[tuple[object, ...]]
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
# The upsert says which rows it inserted (xmax 0: no older version), i.e. which are new to
# their tenant's count; a replaced row is not, a row refused (another tenant's id) not returned.
_UPSERT_COUNTED = _UPSERT + " RETURNING tenant, xmax = 0"
# memory_tenants (migration 0011) counts each tenant's records, so that a put knows whether it
# went past the cap without reading them (skipping a tenant's newest 100 000 in the index took
# 40-60 ms per put).
# Updating the count locks the tenant's row until commit: puts of one tenant take turns there,
# so two replicas cannot both see room under the cap. Every writer updates counts in tenant
# order (puts and sweeps sort them), and no writer waits on a record row while holding one.
_COUNT = (
    "INSERT INTO memory_tenants (tenant, records) VALUES (%s, %s) ON CONFLICT (tenant) DO "
    "UPDATE SET records = memory_tenants.records + EXCLUDED.records RETURNING records"
)
# The tenant's oldest records past the cap (index on tenant, created, memory_id). SKIP LOCKED:
# rows a sweep or a delete holds are on their way out already, and their count with them.
_TRIM = (
    "DELETE FROM memory_records WHERE memory_id IN (SELECT memory_id FROM memory_records "
    "WHERE tenant = %s ORDER BY created, memory_id LIMIT %s FOR UPDATE SKIP LOCKED)"
)
# One batch of the sweep: the oldest expired rows; SKIP LOCKED lets replicas sweeping at the
# same time take different rows instead of waiting on each other.
_SWEEP = (
    "DELETE FROM memory_records WHERE memory_id IN (SELECT memory_id FROM memory_records "
    "WHERE created < %s ORDER BY created LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING tenant"
)


class PostgresMemory:
    """Long-term memory in the `memory_records` table (migrations 0010 to 0012) of the pool's
    database, with its tenants' counts in `memory_tenants`. Searched by `vectors` (pgvector's
    HNSW) when given, else exactly; `open` chooses."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        embedder: Embedder,
        retention: Retention = KEEP_ALL,
        *,
        vectors: VectorIndex | None = None,
    ) -> None:
        self._pool = pool
        self._embedder = embedder
        self._retention = retention
        self._vectors = vectors

    @classmethod
    async def open(
        cls,
        pool: AsyncConnectionPool[Connection],
        embedder: Embedder,
        retention: Retention = KEEP_ALL,
        *,
        pgvector: PgvectorMode = "auto",
        ef_search: int = PGVECTOR_EF_SEARCH_DEFAULT,
    ) -> PostgresMemory:
        """The store, on pgvector's HNSW index when `pgvector` and the database allow
        (CPA_MEMORY_PGVECTOR; raises PgvectorUnavailableError for `on` without it), searched
        with at least `ef_search` candidates (CPA_MEMORY_PGVECTOR_EF_SEARCH)."""
        vectors = await open_vector_index(pool, embedder.dimensions, pgvector, ef_search=ef_search)
        return cls(pool, embedder, retention, vectors=vectors)

    @property
    def uses_pgvector(self) -> bool:
        return self._vectors is not None

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
                await cursor.executemany(_UPSERT_COUNTED, rows, returning=True)
                added: Counter[str] = Counter()
                while True:
                    added.update(str(tenant) for tenant, new in await cursor.fetchall() if new)
                    if not cursor.nextset():
                        break
                for tenant in sorted(added):
                    await self._count(cursor, tenant, added[tenant], trim=True)
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
            # Expired records are hidden at once, whether or not the sweep has deleted them yet.
            where = "tenant = %(tenant)s AND created >= %(cutoff)s" + (
                " AND outcome = %(outcome)s" if outcome else ""
            )
            parameters = {
                "tenant": tenant,
                "cutoff": self._retention.cutoff(),
                "outcome": outcome,
                "vector": query,
                "k": k,
            }
            if self._vectors is not None:
                rows = await self._search_hnsw(self._vectors, where, parameters, k, timing.counts)
            else:
                plan = _SPARSE_SEARCH if nonzero <= _SPARSE_SHARE * len(query) else _DENSE_SEARCH
                async with self._pool.connection() as connection:
                    cursor = await connection.execute(plan.format(where=where), parameters)
                    rows = await cursor.fetchall()
            timing.counts["results"] = len(rows)
        return [MemoryHit(record_of(*row[:-1]), float(row[-1] or 0.0)) for row in rows]  # type: ignore[arg-type]

    async def _search_hnsw(
        self,
        index: VectorIndex,
        where: str,
        parameters: dict[str, object],
        k: int,
        counts: dict[str, int],
    ) -> list[tuple[object, ...]]:
        """By the index; ranked exactly when it yields fewer than k (pgvector.py says why).
        `counts` (the operation's) gets the ef_search used and `exact` 1 when ranked exactly:
        how often a tenant's searches miss the index is what an operator tunes ef_search by."""
        counts["ef_search"] = index.ef_search(k)
        async with self._pool.connection() as connection, connection.transaction():
            # SET LOCAL takes no parameter; the value is an int of ours.
            await connection.execute(f"SET LOCAL hnsw.ef_search = {counts['ef_search']}")
            cursor = await connection.execute(
                index.search(where, _COLUMNS, exact=False),
                parameters,
            )
            rows = await cursor.fetchall()
            counts["exact"] = int(len(rows) < k)
            if len(rows) < k:
                cursor = await connection.execute(
                    index.search(where, _COLUMNS, exact=True),
                    parameters,
                )
                rows = await cursor.fetchall()
        return rows

    async def _count(self, cursor: Cursor, tenant: str, change: int, *, trim: bool) -> None:
        """Add `change` to the tenant's count; with `trim`, drop its oldest records past the
        cap (in the caller's transaction)."""
        await cursor.execute(_COUNT, (tenant, change))
        row = await cursor.fetchone()
        cap = self._retention.max_per_tenant
        excess = int(row[0]) - cap if row is not None else 0  # type: ignore[call-overload]
        if trim and cap and excess > 0:
            await cursor.execute(_TRIM, (tenant, excess))
            await cursor.execute(_COUNT, (tenant, -cursor.rowcount))

    async def delete(self, tenant: str, selection: Selection) -> int:
        where, parameters = selection_filter(tenant, selection, "%s")
        with timed("memory_query", "delete", store="postgres") as timing:
            async with (
                self._pool.connection() as connection,
                connection.transaction(),
                connection.cursor() as cursor,
            ):
                await cursor.execute(f"DELETE FROM memory_records WHERE {where}", parameters)
                deleted = cursor.rowcount
                if deleted:
                    await self._count(cursor, tenant, -deleted, trim=False)
            timing.counts["records"] = deleted
        return deleted

    async def sweep_expired(self, *, batch: int) -> int:
        if not self._retention.max_age_s:
            return 0
        with timed("memory_query", "sweep", store="postgres") as timing:
            async with (
                self._pool.connection() as connection,
                connection.transaction(),
                connection.cursor() as cursor,
            ):
                await cursor.execute(_SWEEP, (self._retention.cutoff(), batch))
                gone = Counter(str(tenant) for (tenant,) in await cursor.fetchall())
                for tenant in sorted(gone):
                    await self._count(cursor, tenant, -gone[tenant], trim=False)
            timing.counts["records"] = gone.total()
        return gone.total()
