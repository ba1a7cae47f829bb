"""Group commit of the PostgreSQL store: the writes issued in one event-loop iteration share a
transaction, formed and run here (a few at once), each job's row locked in one global order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import psycopg
from psycopg import AsyncPipeline
from psycopg_pool import AsyncConnectionPool

from . import postgres_sql as sql
from .aggregate_cache import AggregateCache
from .migrations import DatabaseUnavailableError
from .postgres_batch import (
    Create,
    CreationRecords,
    Insertion,
    Loaded,
    Op,
    Progress,
    RowsNeededError,
    SaveMessage,
    Update,
    Writes,
    creation_results,
    message_params,
    mutate,
    request_ids_refused,
    request_key,
)
from .postgres_connections import (
    Connection,
    PostgresConnections,
    connection_failure,
    discard_pipeline,
    first_line,
)

log = logging.getLogger(__name__)

# Most writes in one transaction: a batch holds its jobs' row locks until it commits, so an
# unbounded one would make other replicas wait behind it.
MAX_BATCH_OPS: Final = 128
# Write transactions one replica runs at once. Few: the writes that arrive while they run join
# the next one, so under load transactions grow instead of multiplying (measured, one replica
# at full load: 5 at once made batches of ~2 writes and 230 jobs/s; 2 made batches of 4-7 and
# 400 jobs/s, with a third of the database's CPU per job). Two, not one, so that a batch
# waiting for a row lock another replica holds does not stop every write of this one.
MAX_BATCHES_IN_FLIGHT: Final = 2


class GroupCommit(PostgresConnections):
    """Writes submitted as ops, run in batches: see PostgresStore for what a batch costs."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        *,
        max_batches_in_flight: int,
        max_batch_ops: int,
    ) -> None:
        super().__init__(pool)
        self._max_in_flight = max_batches_in_flight
        self._max_batch_ops = max_batch_ops
        # Writes waiting for a batch: changes of existing jobs before new jobs (_next_batch).
        self._pending: list[Op] = []
        self._pending_creations: list[Create] = []
        self._start_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()
        # A test seam: awaited between finding a request id taken and reading its owner (in
        # the creating transaction, and after its commit), where the retention sweep of any
        # replica may release the id; tests release it there to force that race.
        self.before_owner_lookup: Callable[[], Awaitable[None]] | None = None
        # Aggregates this replica committed last, reused while no other replica changed them.
        self._aggregates = AggregateCache()

    # -- group commit ---------------------------------------------------------------------

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        if self._closing:
            raise RuntimeError("store is closed")
        if isinstance(op, Create):
            self._pending_creations.append(op)
        else:
            self._pending.append(op)
        self._schedule_start()
        return op.future

    def _future(self) -> asyncio.Future[Any]:
        if self._closing:
            raise RuntimeError("store is closed")
        return asyncio.get_running_loop().create_future()

    def _schedule_start(self) -> None:
        # call_soon, not now: the other writes of this loop iteration join the batch.
        if self._start_scheduled or not self._waiting:
            return
        if len(self._batches) >= self._max_in_flight:
            return  # a finishing batch starts the next one, with everything that piled up
        self._start_scheduled = True
        asyncio.get_running_loop().call_soon(self._start_batches)

    def _start_batches(self) -> None:
        self._start_scheduled = False
        while self._waiting and len(self._batches) < self._max_in_flight:
            batch = self._next_batch()
            # Every replica takes row locks in one global order (stable: one job's writes keep
            # their order), so two batches may wait for each other but never in a cycle.
            batch.sort(key=lambda op: op.order)
            task = asyncio.create_task(self._run_batch(batch), name="cpa-store-batch")
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    @property
    def _waiting(self) -> bool:
        return bool(self._pending or self._pending_creations)

    def _next_batch(self) -> list[Op]:
        """Up to max_batch_ops jobs' worth of pending writes (at least one), the oldest first,
        changes of existing jobs before new jobs: under a flood of submissions, the results and
        assignments of running work do not queue behind it (work in progress ends first, and
        new work waits for it, not the other way round). A creation that must run alone
        (Create.alone) makes a batch of its own."""
        batch: list[Op] = self._pending[: self._max_batch_ops]
        del self._pending[: self._max_batch_ops]
        size = len(batch)
        taken = 0
        for op in self._pending_creations:
            if op.alone:
                if not batch:
                    batch.append(op)
                    taken = 1
                break
            if batch and size + len(op.jobs) > self._max_batch_ops:
                break
            batch.append(op)
            taken, size = taken + 1, size + len(op.jobs)
        del self._pending_creations[:taken]
        return batch

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._schedule_start()

    async def _run_batch(self, batch: list[Op]) -> None:
        progress = Progress()
        try:
            async with self._connection() as connection, connection.pipeline() as pipeline:
                try:
                    await self._run_fast(connection, pipeline, batch, progress)
                except (psycopg.DatabaseError, RowsNeededError) as refused:
                    if connection.broken or connection.closed:
                        raise
                    # The database refused a statement (or a half-changed cached aggregate
                    # is needed again: RowsNeededError), so nothing was stored. Once more,
                    # each write on its own: only the one the database refuses fails.
                    log.info(
                        "a batch of %d writes was refused, running each alone: %s",
                        len(batch),
                        first_line(refused),
                    )
                    progress.committing = False
                    await discard_pipeline(pipeline)
                    await connection.execute("ROLLBACK")
                    await pipeline.sync()
                    await self._run_carefully(connection, pipeline, batch, progress)
        except Exception as failure:
            error = self._batch_failure(failure, committing=progress.committing)
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        except BaseException:
            for op in batch:
                op.future.cancel()
            raise
        for op in batch:
            if op.future.done():
                continue  # the caller went away; the write is stored all the same
            if op.error is None:
                op.future.set_result(op.result)
            else:
                op.future.set_exception(op.error)

    async def _run_fast(
        self,
        connection: Connection,
        pipeline: AsyncPipeline,
        batch: list[Op],
        progress: Progress,
    ) -> None:
        """The whole batch in one transaction, a handful of statements and two round trips:
        insert the creations, lock and read every job it changes (in job_id order), apply the
        mutations in memory, write what they changed, commit.

        A mutation that fails never reached the database, so it is dropped alone, without a
        savepoint. A statement the database refuses raises its psycopg.DatabaseError.
        """
        await connection.execute("BEGIN")
        # Creations and messages first: a duplicate that another replica is inserting is
        # waited for, a lock like a job's row, taken in the same order everywhere.
        await self._insert(connection, batch)
        if await request_ids_refused(connection, pipeline, batch, self.before_owner_lookup):
            # Only a write that runs alone is refused here (Create.alone): undo its batch.
            await connection.execute("ROLLBACK")
            await pipeline.sync()
            return
        updates = [op for op in batch if isinstance(op, Update)]
        if updates:
            job_ids = sorted({op.job_id for op in updates})
            cached = self._aggregates.take(job_ids)
            jobs = await connection.execute(sql.LOCK_JOBS, {"job_ids": job_ids}, prepare=False)
            # A second statement, after the locks are granted: one that waited for a lock
            # still sees the rows as they were before the wait.
            tasks = await connection.execute(
                sql.SELECT_UNCACHED_TASKS,
                {
                    "job_ids": job_ids,
                    "cached_ids": list(cached),
                    "cached_versions": [job.last_event_sequence for job in cached.values()],
                },
                prepare=False,
            )
            await pipeline.sync()
            loaded = Loaded.of(await jobs.fetchall(), await tasks.fetchall(), cached)
            writes = Writes()
            for op in updates:
                mutate(op, loaded, writes)
            if writes:
                await connection.execute(sql.WRITE_CHANGES, writes.params(), prepare=False)
                for statement, params in writes.side_inserts():
                    await connection.execute(statement, params, prepare=False)
        await connection.execute("COMMIT")
        progress.committing = True
        await pipeline.sync()
        if updates:
            for job in loaded.committed():
                self._aggregates.put(job)
        await creation_results(batch)

    async def _run_carefully(
        self,
        connection: Connection,
        pipeline: AsyncPipeline,
        batch: list[Op],
        progress: Progress,
    ) -> None:
        """The batch again, each write in its own savepoint and round trips: a write the
        database refuses rolls back alone."""
        await connection.execute("BEGIN")
        for op in batch:
            op.result, op.error = None, None
            await connection.execute("SAVEPOINT op")
            try:
                await self._apply_alone(connection, pipeline, op)
                await connection.execute("RELEASE SAVEPOINT op")
                await pipeline.sync()
            except Exception as rejected:
                if connection.broken or connection.closed:
                    raise
                await discard_pipeline(pipeline)
                await connection.execute("ROLLBACK TO SAVEPOINT op")
                await connection.execute("RELEASE SAVEPOINT op")
                op.result, op.error = None, rejected
        await connection.execute("COMMIT")
        progress.committing = True
        await pipeline.sync()
        await creation_results([op for op in batch if op.error is None])

    async def _apply_alone(self, connection: Connection, pipeline: AsyncPipeline, op: Op) -> None:
        if not isinstance(op, Update):
            await self._insert(connection, [op])
            if await request_ids_refused(connection, pipeline, [op], self.before_owner_lookup):
                assert op.error is not None
                raise op.error
            return
        # The lock serializes every change of this job across replicas until the commit, or
        # until this op rolls back to its savepoint.
        params = {"job_ids": [op.job_id]}
        jobs = await connection.execute(sql.LOCK_JOBS, params, prepare=False)
        tasks = await connection.execute(sql.SELECT_TASKS, params, prepare=False)
        await pipeline.sync()
        loaded = Loaded.of(await jobs.fetchall(), await tasks.fetchall())
        writes = Writes()
        mutate(op, loaded, writes)
        if op.error is not None:
            raise op.error
        await connection.execute(sql.WRITE_CHANGES, writes.params(), prepare=False)
        for statement, side_params in writes.side_inserts():
            await connection.execute(statement, side_params, prepare=False)

    async def _insert(self, connection: Connection, ops: Sequence[Op]) -> None:
        """The creations among `ops` in one statement (its cursor kept for creation_results),
        and the messages."""
        creations: list[tuple[Create, list[CreationRecords]]] = []
        for op in ops:
            if isinstance(op, Create):
                # In (tenant, request_id) order, the order every writer takes them in: two
                # creations waiting for each other's request id never wait in a cycle.
                jobs = sorted(
                    zip(op.jobs, op.changes, strict=True), key=lambda p: request_key(p[0])
                )
                try:
                    records = [CreationRecords.of(job, changes) for job, changes in jobs]
                except Exception as rejected:  # e.g. a value that is no JSON: it fails alone
                    op.error = rejected
                    continue
                creations.append((op, records))
            elif isinstance(op, SaveMessage):
                await connection.execute(sql.INSERT_MESSAGE, message_params(op.message))
        if creations:
            params = CreationRecords.params([r for _, records in creations for r in records])
            insertion = Insertion(await connection.execute(sql.CREATE_JOBS, params))
            for op, _ in creations:
                op.insertion = insertion
            all_records = [r for _, records in creations for r in records]
            for statement, side_params in CreationRecords.side_inserts(all_records):
                await connection.execute(statement, side_params, prepare=False)

    def _batch_failure(self, failure: Exception, *, committing: bool) -> Exception:
        if not connection_failure(failure):
            return failure
        self._connection_failed()
        if committing:
            return DatabaseUnavailableError(
                "the connection to PostgreSQL failed during commit; the change may or may not "
                f"have been stored ({first_line(failure)})"
            )
        return DatabaseUnavailableError(
            f"the connection to PostgreSQL failed; nothing was stored ({first_line(failure)})"
        )
