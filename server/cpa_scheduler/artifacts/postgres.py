"""Artifact bytes in PostgreSQL (the distributed mode), so every replica serves every artifact.

Tables of migration 0006: an upload's chunks are written under a fresh content id, in rows of
up to CHUNK_ROW_BYTES, each insert its own short statement (an upload never holds a transaction
open while its agent sends); commit() inserts the (tenant, sha256) row that makes them readable.
A concurrent upload of the same bytes that committed first wins: the loser deletes its chunks.
Chunks of uploads a crashed replica never finished belong to no content row; they are deleted
at the next open after ORPHAN_AGE. The pool is this module's own (settings
artifact_database_pool_size), so slow uploads never take the job store's connections.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from cpa_scheduler.storage.migrations import connect_kwargs, libpq_url, unreachable

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

# Bytes per chunk row: big enough that a 50 MiB artifact is 50 inserts, small enough that a
# reader holds little (one row per fetch).
CHUNK_ROW_BYTES: Final = 1024 * 1024
ORPHAN_AGE: Final = "1 hour"
POOL_TIMEOUT_S: Final = 30.0


class _PostgresWriter:
    def __init__(self, pool: AsyncConnectionPool[Connection], tenant: str, sha256: str) -> None:
        self._pool = pool
        self._tenant = tenant
        self._sha256 = sha256
        self._content_id = uuid.uuid4().hex
        self._buffer = bytearray()
        self._sequence = 0
        self._size = 0

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        self._size += len(chunk)
        while len(self._buffer) >= CHUNK_ROW_BYTES:
            await self._flush(CHUNK_ROW_BYTES)

    async def _flush(self, size: int) -> None:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        async with self._pool.connection() as connection:
            await connection.execute(
                "INSERT INTO artifact_chunks (content_id, sequence, data) VALUES (%s, %s, %s)",
                (self._content_id, self._sequence, data),
            )
        self._sequence += 1

    async def commit(self) -> None:
        if self._buffer:
            await self._flush(len(self._buffer))
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                "INSERT INTO artifact_content (tenant, sha256, content_id, size_bytes) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING content_id",
                (self._tenant, self._sha256, self._content_id, self._size),
            )
            if await cursor.fetchone() is None:  # stored meanwhile by another upload
                await connection.execute(
                    "DELETE FROM artifact_chunks WHERE content_id = %s", (self._content_id,)
                )

    async def abort(self) -> None:
        self._buffer.clear()
        if self._sequence:
            async with self._pool.connection() as connection:
                await connection.execute(
                    "DELETE FROM artifact_chunks WHERE content_id = %s", (self._content_id,)
                )


class _DiscardingWriter:
    """The tenant stores these bytes already: the upload is checked, not stored again."""

    async def write(self, chunk: bytes) -> None:
        return None

    async def commit(self) -> None:
        return None

    async def abort(self) -> None:
        return None


class PostgresContent:
    """ArtifactContent in PostgreSQL. Open with `await PostgresContent.open(url)`."""

    def __init__(self, pool: AsyncConnectionPool[Connection]) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, max_size: int = 4) -> PostgresContent:
        url = libpq_url(url)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, **connect_kwargs(url)},
            open=False,
            timeout=POOL_TIMEOUT_S,
            name="cpa-artifacts",
        )
        try:
            await pool.open(wait=True, timeout=POOL_TIMEOUT_S)
        except psycopg.OperationalError as error:
            await pool.close()
            raise unreachable(url, error) from error
        content = cls(pool)
        await content.delete_orphans()
        return content

    async def delete_orphans(self, older_than: str = ORPHAN_AGE) -> int:
        """Delete chunks of uploads never committed nor aborted (their replica died), older
        than `older_than` (an interval) so that uploads under way are left alone."""
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                "DELETE FROM artifact_chunks AS c WHERE c.create_time < now() - %s::interval "
                "AND NOT EXISTS (SELECT 1 FROM artifact_content WHERE content_id = c.content_id)",
                (older_than,),
            )
            return cursor.rowcount

    async def begin(self, tenant: str, sha256: str) -> _PostgresWriter | _DiscardingWriter:
        if await self.exists(tenant, sha256):
            return _DiscardingWriter()
        return _PostgresWriter(self._pool, tenant, sha256)

    async def exists(self, tenant: str, sha256: str) -> bool:
        return await self._content_id(tenant, sha256) is not None

    async def _content_id(self, tenant: str, sha256: str) -> str | None:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT content_id FROM artifact_content WHERE tenant = %s AND sha256 = %s",
                (tenant, sha256),
            )
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def read(self, tenant: str, sha256: str, *, chunk_bytes: int) -> AsyncIterator[bytes]:
        content_id = await self._content_id(tenant, sha256)
        if content_id is None:
            raise FileNotFoundError(f"no content {sha256} for this tenant")
        sequence = 0
        while True:
            # One row per round trip: the connection goes back to the pool between rows, so a
            # slow reader holds none.
            async with self._pool.connection() as connection:
                cursor = await connection.execute(
                    "SELECT data FROM artifact_chunks WHERE content_id = %s AND sequence = %s",
                    (content_id, sequence),
                )
                row = await cursor.fetchone()
            if row is None:
                return
            data = memoryview(row[0])
            for start in range(0, len(data), chunk_bytes):
                yield bytes(data[start : start + chunk_bytes])
            sequence += 1

    async def close(self) -> None:
        await self._pool.close()
