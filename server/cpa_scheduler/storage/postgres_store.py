"""PostgreSQL store for the distributed mode: the source of truth that every replica shares.

Writes issued in one event-loop iteration share a transaction (group commit); every job change
holds its job's row lock, so replicas writing one job take turns, and a change that fails
rolls back alone.

Built in layers, one module each: postgres_connections.py (the pool, snapshot reads, broken
connections), postgres_group_commit.py (batches and their transactions), postgres_batch.py (the
writes a batch carries), postgres_sql.py (the statements); this module holds the Store calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from psycopg import AsyncPipeline
from psycopg_pool import AsyncConnectionPool

from cpa_scheduler.domain import (
    AttemptRef,
    DomainError,
    Job,
    JobChanges,
    JobEvent,
    JobFilter,
    JobState,
    PagePosition,
    Reason,
    RequestIdReused,
    is_terminal,
)

from . import codec
from . import postgres_sql as sql
from .interface import EndPosition, QueuedTask, StoredMessage
from .postgres_api_keys import PostgresApiKeys
from .postgres_audit import PostgresAudit
from .postgres_batch import (
    JOB_ID,
    Create,
    SaveMessage,
    Update,
    job_not_found,
    jobs_from_rows,
    request_key,
)
from .postgres_callbacks import PostgresCallbacks
from .postgres_connections import Connection, open_pool
from .postgres_group_commit import MAX_BATCH_OPS, MAX_BATCHES_IN_FLIGHT, GroupCommit
from .records import tenant_load_sql

T = TypeVar("T")

_TENANT_LOAD_SQL: Final = tenant_load_sql("%(tenant)s")

# How long an attempt handed to one sweeper is hidden from the others.
SWEEP_CLAIM_S: Final = 30.0
# Creations of a job whose request id is found taken, then released before its owner is read
# (the retention sweep between the two): each round creates it again; two always suffice
# unless the id is taken and released again in between, every time.
REQUEST_ID_ROUNDS: Final = 3


class PostgresStore(GroupCommit, PostgresApiKeys, PostgresCallbacks, PostgresAudit):
    """The distributed store. Open with `await PostgresStore.open(url)`; close with `close()`.

    A batch of writes normally costs two round trips: lock and read every job it changes (in
    job_id order), apply the mutations in memory, write what they changed, commit. A mutation
    that raises never reached the database and fails alone. When the database refuses a
    statement, the batch rolls back and runs again with each write in its own savepoint, so
    only the refused write fails; the mutations then run a second time, which is safe because
    they change nothing but the job they are given.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        *,
        max_batches_in_flight: int,
        max_batch_ops: int = MAX_BATCH_OPS,
        sweep_claim_s: float = SWEEP_CLAIM_S,
    ) -> None:
        super().__init__(
            pool, max_batches_in_flight=max_batches_in_flight, max_batch_ops=max_batch_ops
        )
        self._sweep_claim = timedelta(seconds=sweep_claim_s)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        max_batches_in_flight: int | None = None,
        max_batch_ops: int = MAX_BATCH_OPS,
        sweep_claim_s: float = SWEEP_CLAIM_S,
    ) -> PostgresStore:
        """Connect, check the schema is at the head revision, and open the pool.

        InvalidDatabaseUrlError, DatabaseUnavailableError, or SchemaMismatchError (whose message
        says whether to run `cpa migrate` or to upgrade the server). `max_batches_in_flight`
        (default MAX_BATCHES_IN_FLIGHT) bounds the write transactions running at once; the rest
        of the pool serves reads.
        """
        pool = await open_pool(url, min_size=min_size, max_size=max_size)
        in_flight = max_batches_in_flight or MAX_BATCHES_IN_FLIGHT
        return cls(
            pool,
            max_batches_in_flight=min(in_flight, max_size),
            max_batch_ops=max_batch_ops,
            sweep_claim_s=sweep_claim_s,
        )

    # -- jobs -----------------------------------------------------------------------------

    async def create_jobs(self, jobs: Sequence[Job]) -> list[tuple[Job, JobChanges | None]]:
        if not jobs:
            return []
        changes = [job.take_changes() for job in jobs]
        results: dict[int, tuple[Job, JobChanges | None]] = {}
        # Indexes of the jobs still to create: all of them, then those whose request id was
        # found taken, and released (the retention sweep) before its owner could be read.
        pending = list(range(len(jobs)))
        for _ in range(REQUEST_ID_ROUNDS):
            op = Create(
                # Creations go first, in (tenant, request_id) order: see _run_fast.
                order=(0, "\0".join(("job", *min(request_key(jobs[i]) for i in pending)))),
                future=self._future(),
                jobs=[jobs[i] for i in pending],
                changes=[changes[i] for i in pending],
            )
            outcomes: list[JobChanges | None] = await self._submit(op)
            released = []
            for index, outcome in zip(pending, outcomes, strict=True):
                if outcome is not None:
                    results[index] = (jobs[index], outcome)
                # A request id found taken (by a job committed before, by another replica
                # meanwhile, or earlier in the same batch): its owner, read now it is committed.
                elif (owner := await self._owner(jobs[index], index)) is not None:
                    results[index] = (owner, None)
                else:
                    released.append(index)
            if not released:
                return [results[index] for index in range(len(jobs))]
            pending = released
        raise DomainError(
            f"request_id {jobs[pending[0]].request_id!r} was found taken and then released "
            f"{REQUEST_ID_ROUNDS} times while this call created its job; retry the call",
            reason=Reason.REQUEST_ID_CONTENDED,
            field="request_id",
        )

    async def _owner(self, job: Job, index: int) -> Job | None:
        """The job that holds `job`'s request id, when it was made from the same request; None
        when nobody holds it any more (released since it was found taken: create again)."""
        if self.before_owner_lookup is not None:
            await self.before_owner_lookup()
        rows = await self._statement(
            sql.REQUEST_OWNER, {"tenant": job.tenant, "request_id": job.request_id}
        )
        if not rows:
            return None
        owner, fingerprint = rows[0]
        if fingerprint != job.request_fingerprint:
            raise RequestIdReused(job.request_id, owner, index=index)
        # Jobs are never deleted: the owner read above is there to load.
        return await self.get_job(job.tenant, str(owner))

    async def update_job(
        self, tenant: str, job_id: str, mutate: Callable[[Job], T]
    ) -> tuple[Job, T, JobChanges]:
        future = self._future()
        op = Update(order=(1, job_id), future=future, tenant=tenant, job_id=job_id, mutate=mutate)
        result: tuple[Job, T, JobChanges] = await self._submit(op)
        return result

    async def get_job(self, tenant: str, job_id: str) -> Job:
        async def run(connection: Connection, pipeline: AsyncPipeline) -> Job:
            jobs = await connection.execute(
                f"{sql.JOB_SELECT} WHERE job_id = %s AND tenant = %s", (job_id, tenant)
            )
            tasks = await connection.execute(sql.SELECT_TASKS, {"job_ids": [job_id]}, prepare=False)
            await pipeline.sync()
            job = jobs_from_rows(await jobs.fetchall(), await tasks.fetchall()).get(job_id)
            if job is None:
                raise job_not_found(job_id)
            return job

        return await self._read(run)

    async def list_jobs(
        self, tenant: str, job_filter: JobFilter, *, after: PagePosition | None, limit: int
    ) -> list[Job]:
        clauses = ["tenant = %s"]
        arguments: list[Any] = [tenant]
        if job_filter.states:
            clauses.append("state = ANY(%s)")
            arguments.append(sorted(state.value for state in job_filter.states))
        if job_filter.intent is not None:
            clauses.append("intent = %s")
            arguments.append(job_filter.intent)
        for key, value in sorted(job_filter.labels.items()):
            clauses.append(
                "EXISTS (SELECT 1 FROM job_labels l "
                "WHERE l.job_id = jobs.job_id AND l.key = %s AND l.value = %s)"
            )
            arguments += [key, value]
        if job_filter.created_after is not None:
            clauses.append("create_time > %s")
            arguments.append(job_filter.created_after)
        if job_filter.created_before is not None:
            clauses.append("create_time < %s")
            arguments.append(job_filter.created_before)
        if job_filter.dead_lettered is not None:
            clauses.append("dead_lettered = %s")
            arguments.append(job_filter.dead_lettered)
        if after is not None:
            clauses.append("(create_time, job_id) < (%s, %s)")
            arguments += [after.create_time, after.job_id]
        query = (
            f"{sql.JOB_SELECT} WHERE {' AND '.join(clauses)} "
            "ORDER BY create_time DESC, job_id DESC LIMIT %s"
        )

        async def run(connection: Connection, pipeline: AsyncPipeline) -> list[Job]:
            jobs = await connection.execute(query, [*arguments, limit])
            await pipeline.sync()
            job_rows = await jobs.fetchall()
            if not job_rows:
                return []
            job_ids = [row[JOB_ID] for row in job_rows]
            tasks = await connection.execute(sql.SELECT_TASKS, {"job_ids": job_ids}, prepare=False)
            await pipeline.sync()
            loaded = jobs_from_rows(job_rows, await tasks.fetchall())
            return [loaded[job_id] for job_id in job_ids]

        return await self._read(run)

    async def list_events(
        self, tenant: str, job_id: str, *, after_sequence: int, limit: int
    ) -> list[JobEvent]:
        rows = await self._statement(
            sql.SELECT_EVENTS,
            {"after": after_sequence, "limit": limit, "job_id": job_id, "tenant": tenant},
        )
        if not rows:
            raise job_not_found(job_id)
        return [
            JobEvent(
                tenant=tenant,
                job_id=job_id,
                sequence=sequence,
                create_time=create_time,
                terminal=terminal,
                payload=codec.payload_from_data(json.loads(payload_json)),
            )
            for sequence, create_time, terminal, payload_json in rows
            if sequence is not None  # the job exists but has no events past after_sequence
        ]

    # -- dispatch support -------------------------------------------------------------------

    async def queued_tasks(
        self, *, limit: int, queued_before: datetime | None = None
    ) -> list[QueuedTask]:
        before = "" if queued_before is None else "AND t.queue_time < %(before)s "
        rows = await self._statement(
            "SELECT j.tenant, t.job_id, t.todo_json, t.attempt, t.next_attempt_time, t.agent_id "
            "FROM tasks t JOIN jobs j ON j.job_id = t.job_id "
            f"WHERE t.state = 'QUEUED' {before}"
            "ORDER BY t.queue_time, t.job_id, t.position LIMIT %(limit)s",
            {"limit": limit, "before": queued_before},
        )
        return [
            codec.queued_task(
                tenant=tenant,
                job_id=job_id,
                todo=codec.todo_from_data(json.loads(todo_json)),
                attempt=attempt,
                not_before=not_before,
                agent_id=agent_id,
            )
            for tenant, job_id, todo_json, attempt, not_before, agent_id in rows
        ]

    async def overdue_jobs(self, now: datetime, *, limit: int) -> list[tuple[str, str]]:
        rows = await self._statement(
            "SELECT tenant, job_id FROM jobs WHERE deadline < %(now)s AND NOT cancel_requested "
            "AND state IN ('PENDING', 'RUNNING', 'WAITING_APPROVAL') "
            "ORDER BY deadline LIMIT %(limit)s",
            {"now": now, "limit": limit},
        )
        return [(tenant, job_id) for tenant, job_id in rows]

    async def unstarted_tasks(self, now: datetime, *, limit: int) -> list[tuple[str, str, str]]:
        rows = await self._statement(
            "SELECT j.tenant, t.job_id, t.task_id FROM tasks t JOIN jobs j ON j.job_id = t.job_id "
            "WHERE t.start_by < %(now)s AND t.state = 'QUEUED' ORDER BY t.start_by LIMIT %(limit)s",
            {"now": now, "limit": limit},
        )
        return [(tenant, job_id, task_id) for tenant, job_id, task_id in rows]

    async def forget_request_ids(self, created_before: datetime, *, limit: int) -> int:
        # SKIP LOCKED: a job some transition holds right now is forgotten by a later sweep.
        rows = await self._statement(
            "UPDATE jobs SET request_id = '', request_fingerprint = '' WHERE job_id IN ("
            "SELECT job_id FROM jobs WHERE request_id <> '' AND create_time < %(before)s "
            "LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING job_id",
            {"before": created_before, "limit": limit},
        )
        return len(rows)

    async def prune_events(
        self, ended_before: datetime, *, after: EndPosition | None, limit: int
    ) -> tuple[int, EndPosition | None]:
        position = ""
        if after is not None:
            position = "AND (end_time, job_id) > (%(after_time)s, %(after_id)s) "
        rows = await self._statement(
            "WITH ended AS (SELECT job_id, last_event_sequence, end_time FROM jobs "
            "WHERE end_time < %(before)s AND state = ANY(%(terminal)s) "
            f"{position}ORDER BY end_time, job_id LIMIT %(limit)s), "
            "deleted AS (DELETE FROM events e USING ended WHERE e.job_id = ended.job_id "
            "AND e.sequence < ended.last_event_sequence RETURNING 1) "
            "SELECT (SELECT count(*) FROM deleted), end_time, job_id FROM ended "
            "ORDER BY end_time DESC, job_id DESC LIMIT 1",
            {
                "before": ended_before,
                "terminal": [state.value for state in JobState if is_terminal(state)],
                "limit": limit,
                "after_time": after.end_time if after is not None else None,
                "after_id": after.job_id if after is not None else None,
            },
        )
        if not rows:
            return 0, after
        [(deleted, end_time, job_id)] = rows
        return deleted, EndPosition(end_time, job_id)

    async def expired_attempts(self, now: datetime, *, limit: int) -> list[tuple[str, AttemptRef]]:
        rows = await self._statement(
            sql.CLAIM_EXPIRED,
            {"now": now, "limit": limit, "claim_until": now + self._sweep_claim},
        )
        rows.sort(key=lambda row: (row[4], row[1], row[2]))  # RETURNING keeps no order
        return [
            (tenant, AttemptRef(job_id, task_id, attempt))
            for tenant, job_id, task_id, attempt, _ in rows
        ]

    async def renew_leases(
        self,
        tenant: str,
        agent_id: str,
        attempts: Sequence[AttemptRef],
        lease_until: datetime,
    ) -> list[AttemptRef]:
        if not attempts:
            return []
        if self._closing:
            raise RuntimeError("store is closed")
        params = {
            "job_ids": [ref.job_id for ref in attempts],
            "task_ids": [ref.task_id for ref in attempts],
            "attempts": [ref.attempt for ref in attempts],
            "tenant": tenant,
            "lease_until": lease_until,
            "agent_id": agent_id,
        }
        try:
            async with self._connection() as connection, connection.pipeline() as pipeline:
                await connection.execute("BEGIN")
                await connection.execute(sql.LOCK_JOBS_FOR_RENEWAL, params, prepare=False)
                renewed = await connection.execute(sql.RENEW, params, prepare=False)
                await connection.execute("COMMIT")
                await pipeline.sync()
                rows = await renewed.fetchall()
        except Exception as error:
            raise self._call_failure(error) from error
        current = {AttemptRef(job_id, task_id, attempt) for job_id, task_id, attempt in rows}
        return [ref for ref in attempts if ref not in current]

    # -- LAM messages -------------------------------------------------------------------------

    async def save_message(self, message: StoredMessage) -> None:
        future = self._future()
        key = f"message\0{message.tenant}\0{message.message_id}\0{message.inbound:d}"
        await self._submit(SaveMessage(order=(0, key), future=future, message=message))

    async def conversation_job(self, tenant: str, conversation_id: str) -> str | None:
        rows = await self._statement(
            "SELECT job_id FROM lam_messages WHERE tenant = %(tenant)s "
            "AND conversation_id = %(conversation_id)s AND job_id <> '' "
            "ORDER BY create_time LIMIT 1",
            {"tenant": tenant, "conversation_id": conversation_id},
        )
        return None if not rows else str(rows[0][0])

    async def tenant_load(self, tenant: str) -> tuple[int, int]:
        [(active, queued)] = await self._statement(_TENANT_LOAD_SQL, {"tenant": tenant})
        return int(active), int(queued)

    async def close(self) -> None:
        """Run the writes already submitted, wait for them, and close the pool."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            while self._waiting or self._batches:
                self._start_batches()
                if self._batches:
                    await asyncio.wait(set(self._batches))
            if self._recovery is not None:
                self._recovery.cancel()
                await asyncio.gather(self._recovery, return_exceptions=True)
            await self.close_probe()
            await self._pool.close()
        finally:
            self._closed.set()
