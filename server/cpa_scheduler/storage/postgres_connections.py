"""Connections of the PostgreSQL store: the pool (opened after the schema check), one
snapshot read or one statement at a time, and what a broken connection means for the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import psycopg
from psycopg import AsyncPipeline
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .migrations import (
    REVISION_QUERY,
    DatabaseUnavailableError,
    check_revision,
    connect_kwargs,
    libpq_url,
    revision_of,
    unreachable,
)

T = TypeVar("T")
Connection = psycopg.AsyncConnection[tuple[Any, ...]]
Row = tuple[Any, ...]

log = logging.getLogger(__name__)

# The server ends a session that sits idle in a transaction this long (a hung replica),
# releasing its row locks; inside a transaction the store only ever waits for the database.
IDLE_IN_TRANSACTION_TIMEOUT_MS: Final = 60_000
POOL_TIMEOUT_S: Final = 30.0
# A peer that vanishes without a reset (a cable, a frozen VM) is noticed in about a minute
# instead of the kernel's two hours, so a call waiting on it fails rather than hangs.
_KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


async def open_pool(url: str, *, min_size: int, max_size: int) -> AsyncConnectionPool[Connection]:
    """Connect, check the schema is at the head revision, and open the pool.

    InvalidDatabaseUrlError, DatabaseUnavailableError, or SchemaMismatchError (whose message
    says whether to run `cpa migrate` or to upgrade the server).
    """
    url = libpq_url(url)
    extra = connect_kwargs(url, **_KEEPALIVES)
    try:
        connection = await psycopg.AsyncConnection.connect(url, autocommit=True, **extra)
    except psycopg.OperationalError as error:
        raise unreachable(url, error) from error
    async with connection:
        try:
            rows = await (await connection.execute(REVISION_QUERY)).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []
    check_revision(revision_of(rows), url)
    pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, **extra},
        configure=_configure,
        open=False,
        timeout=POOL_TIMEOUT_S,
        name="cpa-store",
    )
    try:
        await pool.open(wait=True, timeout=POOL_TIMEOUT_S)
    except psycopg.OperationalError as error:
        await pool.close()
        raise unreachable(url, error) from error
    return pool


class PostgresConnections:
    """The pool and the calls on it (a snapshot read, one statement), and its health after a
    connection broke. PostgresStore is built on it (through GroupCommit)."""

    def __init__(self, pool: AsyncConnectionPool[Connection]) -> None:
        self._pool = pool
        # Cleared while the pool is being checked after a connection broke: calls wait for the
        # check instead of drawing the other connections the same failure broke.
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._recovery: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        # The health probe's own connection (ping): a pool busy with calls is not a sick
        # database, so the probe does not queue for one of its connections.
        self._probe: Connection | None = None

    async def ping(self) -> None:
        """SELECT 1 on the probe's connection, made anew after any failure (a timeout's cancel
        included), so a database that comes back is seen at the next ping."""
        if self._closing:
            raise RuntimeError("store is closed")
        probe = self._probe
        try:
            if probe is None:
                # open_pool gave the pool a plain URL and keyword arguments.
                url, kwargs = self._pool.conninfo, self._pool.kwargs
                assert isinstance(url, str)
                assert isinstance(kwargs, dict)
                probe = await psycopg.AsyncConnection.connect(url, **kwargs)
                self._probe = probe
            await probe.execute("SELECT 1")
        except BaseException:
            await self.close_probe()
            raise

    async def close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await probe.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        await self._healthy.wait()
        async with self._pool.connection() as connection:
            try:
                yield connection
            except Exception as error:
                if connection.broken or connection.closed:
                    raise BrokenConnectionError(str(error)) from error
                raise

    def _connection_failed(self) -> None:
        """A connection broke: check the idle ones too before the next call (a restarted
        server broke them all), so the calls after this one get working connections."""
        if self._recovery is None or self._recovery.done():
            self._healthy.clear()
            self._recovery = asyncio.create_task(self._recover(), name="cpa-store-recovery")

    async def _recover(self) -> None:
        check = asyncio.create_task(self._pool.check(), name="cpa-store-pool-check")
        try:
            # Bounded: a check stuck on a dead peer must not hold every call back; it goes on.
            await asyncio.wait({check}, timeout=POOL_TIMEOUT_S)
            self._healthy.set()
            await check
        except asyncio.CancelledError:
            check.cancel()
            await asyncio.gather(check, return_exceptions=True)
            raise
        except Exception:  # the pool replaces what failed by itself; this was a shortcut
            log.debug("pool check after a broken connection failed", exc_info=True)
        finally:
            self._healthy.set()

    async def _read(self, run: Callable[[Connection, AsyncPipeline], Awaitable[T]]) -> T:
        """Run `run` on one snapshot (REPEATABLE READ, read only): a job and its tasks agree."""
        if self._closing:
            raise RuntimeError("store is closed")
        try:
            async with self._connection() as connection, connection.pipeline() as pipeline:
                await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                try:
                    result = await run(connection, pipeline)
                finally:
                    if not (connection.broken or connection.closed):
                        await connection.execute("COMMIT")
                        await pipeline.sync()
                return result
        except Exception as error:
            raise self._call_failure(error) from error

    async def _statement(self, query: str, params: Mapping[str, Any]) -> list[Row]:
        """One statement in its own transaction; its rows."""
        if self._closing:
            raise RuntimeError("store is closed")
        try:
            async with self._connection() as connection:
                cursor = await connection.execute(query, params)
                return await cursor.fetchall() if cursor.description is not None else []
        except Exception as error:
            raise self._call_failure(error) from error

    async def _transaction(self, run: Callable[[Connection], Awaitable[T]]) -> T:
        """`run` in one transaction of its own (committed when it returns)."""
        if self._closing:
            raise RuntimeError("store is closed")
        try:
            async with self._connection() as connection, connection.transaction():
                return await run(connection)
        except Exception as error:
            raise self._call_failure(error) from error

    def _call_failure(self, error: Exception) -> Exception:
        if not connection_failure(error):
            return error
        self._connection_failed()
        return DatabaseUnavailableError(
            f"the connection to PostgreSQL failed ({first_line(error)})"
        )


class BrokenConnectionError(psycopg.OperationalError):
    """The connection itself failed (as opposed to a statement the database refused)."""


def connection_failure(error: BaseException) -> bool:
    return isinstance(error, BrokenConnectionError | PoolTimeout)


async def discard_pipeline(pipeline: AsyncPipeline) -> None:
    """After a refused statement (psycopg may report it at any later execute, not only at a
    sync): sync, so the server stops skipping statements, and drop what is still queued."""
    with contextlib.suppress(psycopg.DatabaseError):
        await pipeline.sync()


async def _configure(connection: Connection) -> None:
    # UTC: timestamptz values come back with tzinfo=UTC, like every time in the domain.
    await connection.execute(
        "SELECT set_config('TimeZone', 'UTC', false), "
        "set_config('idle_in_transaction_session_timeout', %s, false)",
        (str(IDLE_IN_TRANSACTION_TIMEOUT_MS),),
    )


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
