"""PostgreSQL store for the distributed mode: the source of truth that every replica shares.

Writes issued in one event-loop iteration share a transaction (group commit); every job change
holds its job's row lock, so replicas writing one job take turns, and a change that fails
rolls back alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import psycopg
from psycopg import AsyncCursor, AsyncPipeline
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cpa_scheduler import json_text
from cpa_scheduler.domain import (
    AttemptRef,
    DomainError,
    Job,
    JobChanges,
    JobEvent,
    JobFilter,
    JobState,
    NotFound,
    PagePosition,
    Reason,
    RequestIdReused,
    is_terminal,
)

from . import codec
from .aggregate_cache import AggregateCache
from .interface import EndPosition, QueuedTask, StoredMessage
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

# Most writes in one transaction: a batch holds its jobs' row locks until it commits, so an
# unbounded one would make other replicas wait behind it.
MAX_BATCH_OPS: Final = 128
# Write transactions one replica runs at once. Few: the writes that arrive while they run join
# the next one, so under load transactions grow instead of multiplying (measured, one replica
# at full load: 5 at once made batches of ~2 writes and 230 jobs/s; 2 made batches of 4-7 and
# 400 jobs/s, with a third of the database's CPU per job). Two, not one, so that a batch
# waiting for a row lock another replica holds does not stop every write of this one.
MAX_BATCHES_IN_FLIGHT: Final = 2
# How long an attempt handed to one sweeper is hidden from the others.
SWEEP_CLAIM_S: Final = 30.0
# The server ends a session that sits idle in a transaction this long (a hung replica),
# releasing its row locks; inside a transaction the store only ever waits for the database.
IDLE_IN_TRANSACTION_TIMEOUT_MS: Final = 60_000
POOL_TIMEOUT_S: Final = 30.0
# Creations of a job whose request id is found taken, then released before its owner is read
# (the retention sweep between the two): each round creates it again; two always suffice
# unless the id is taken and released again in between, every time.
REQUEST_ID_ROUNDS: Final = 3
# A peer that vanishes without a reset (a cable, a frozen VM) is noticed in about a minute
# instead of the kernel's two hours, so a call waiting on it fails rather than hangs.
_KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

# -- SQL ----------------------------------------------------------------------------------------

_JOB_STATE_COLUMNS: Final = tuple(c for c in codec.JOB_STATE_COLUMNS if c != "job_id")
_EVENT_COLUMNS: Final = ("sequence", "create_time", "terminal", "payload_json")


def _rows_of(table: str, alias: str, parameter: str) -> str:
    """Rows typed as `table`'s from a JSON array of objects: one parameter for many rows,
    which psycopg passes far cheaper than one array per column."""
    return f"json_populate_recordset(NULL::{table}, %({parameter})s::json) AS {alias}"


_JOB_SELECT: Final = f"SELECT {', '.join(codec.JOB_COLUMNS)} FROM jobs"
_TASK_SELECT: Final = f"SELECT {', '.join(codec.TASK_COLUMNS)} FROM tasks"
# Statements whose best plan depends on the tables' size (`= ANY(array)`, joins with a JSON
# array) are sent unprepared (`prepare=False`): a prepared statement keeps the generic plan
# made when it was first used, and one made while a new database's tables were nearly empty
# scans them whole for ever after (seen: 2 ms per batch after 2 000 jobs, growing with every
# job). Planning them costs little: each runs once per batch.
_LOCK_JOBS: Final = (
    # ORDER BY: rows are locked in job_id order, the order every writer takes them in.
    f"{_JOB_SELECT} WHERE job_id = ANY(%(job_ids)s) ORDER BY job_id FOR UPDATE"
)
_SELECT_TASKS: Final = f"{_TASK_SELECT} WHERE job_id = ANY(%(job_ids)s) ORDER BY job_id, position"
# The task rows of the locked jobs, except those of jobs whose cached aggregate is still valid
# (its version is the row's last_event_sequence): see aggregate_cache.py.
# Chosen per job, so the rows of a job whose aggregate is kept are not even scanned.
_SELECT_UNCACHED_TASKS: Final = (
    f"{_TASK_SELECT} WHERE job_id IN (SELECT j.job_id FROM jobs j "
    "LEFT JOIN unnest(%(cached_ids)s::text[], %(cached_versions)s::bigint[]) "
    "AS c(job_id, version) ON c.job_id = j.job_id "
    "WHERE j.job_id = ANY(%(job_ids)s) "
    "AND (c.version IS NULL OR c.version <> j.last_event_sequence)) "
    "ORDER BY job_id, position"
)


# The creations of a batch, in one statement: the jobs, their labels, tasks and events, but
# none of a job whose tenant already used its request_id (a duplicate another replica is
# inserting right now is waited for, then counts as a conflict). Returns the inserted job ids;
# rows are inserted in the order of the JSON array (the batch's lock order).
_CREATE_JOBS: Final = f"""
    WITH job AS (
        INSERT INTO jobs ({", ".join(codec.JOB_COLUMNS)})
        SELECT {", ".join(f"j.{c}" for c in codec.JOB_COLUMNS)} FROM {_rows_of("jobs", "j", "jobs")}
        ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING
        RETURNING job_id
    ), label AS (
        INSERT INTO job_labels (job_id, key, value)
        SELECT l.job_id, l.key, l.value FROM {_rows_of("job_labels", "l", "labels")}
        WHERE l.job_id IN (SELECT job_id FROM job)
    ), task AS (
        INSERT INTO tasks ({", ".join(codec.TASK_COLUMNS)})
        SELECT {", ".join(f"t.{c}" for c in codec.TASK_COLUMNS)}
        FROM {_rows_of("tasks", "t", "tasks")}
        WHERE t.job_id IN (SELECT job_id FROM job)
    ), event AS (
        INSERT INTO events (job_id, {", ".join(_EVENT_COLUMNS)})
        SELECT e.job_id, {", ".join(f"e.{c}" for c in _EVENT_COLUMNS)}
        FROM {_rows_of("events", "e", "events")}
        WHERE e.job_id IN (SELECT job_id FROM job)
    )
    SELECT job_id FROM job
"""
# The changes of a batch, in one statement: every changed job's state columns, every dirty
# task, every new event (one row each: a job changed twice in the batch is written once, as
# it ended). `= ANY(%(job_ids)s)` tells the planner how few rows change (it assumes a JSON
# array holds 100), so that it looks them up by key instead of scanning the tables.
_WRITE_CHANGES: Final = f"""
    WITH job AS (
        UPDATE jobs SET {", ".join(f"{c} = j.{c}" for c in _JOB_STATE_COLUMNS)}
        FROM {_rows_of("jobs", "j", "jobs")}
        WHERE jobs.job_id = ANY(%(job_ids)s) AND jobs.job_id = j.job_id
    ), task AS (
        UPDATE tasks SET {", ".join(f"{c} = t.{c}" for c in codec.TASK_STATE_COLUMNS)},
            -- a transition ends a sweeper's claim: it was on an attempt that is now over
            sweep_claim_until = NULL
        FROM {_rows_of("tasks", "t", "tasks")}
        WHERE tasks.job_id = ANY(%(job_ids)s) AND tasks.job_id = t.job_id
            AND tasks.task_id = t.task_id
    )
    INSERT INTO events (job_id, {", ".join(_EVENT_COLUMNS)})
    SELECT e.job_id, {", ".join(f"e.{c}" for c in _EVENT_COLUMNS)}
    FROM {_rows_of("events", "e", "events")}
"""
# Who holds these request ids (pairs of tenant and request id).
_REQUEST_OWNERS: Final = """
    SELECT j.tenant, j.request_id, j.job_id, j.request_fingerprint
    FROM unnest(%(tenants)s::text[], %(request_ids)s::text[]) AS w (tenant, request_id)
    JOIN jobs j ON j.tenant = w.tenant AND j.request_id = w.request_id
"""
_SELECT_EVENTS: Final = """
    SELECT e.sequence, e.create_time, e.terminal, e.payload_json
    FROM jobs j
    LEFT JOIN LATERAL (
        SELECT sequence, create_time, terminal, payload_json FROM events
        WHERE events.job_id = j.job_id AND events.sequence > %(after)s
        ORDER BY sequence LIMIT %(limit)s
    ) e ON true
    WHERE j.job_id = %(job_id)s AND j.tenant = %(tenant)s
    ORDER BY e.sequence
"""
# Claims what it returns, so a second sweeper (another replica) does not do the same work:
# SKIP LOCKED passes over tasks, and jobs, that another transaction is changing right now, and
# the claim hides the returned attempts until `claim_until`. A sweeper that dies before
# handling them leaves them to the next sweep after that. Never waits for a lock.
_CLAIM_EXPIRED: Final = """
    WITH expired AS MATERIALIZED (
        SELECT t.job_id, t.task_id, j.tenant FROM tasks t JOIN jobs j ON j.job_id = t.job_id
        WHERE t.state = 'RUNNING' AND t.lease_until < %(now)s
            AND (t.sweep_claim_until IS NULL OR t.sweep_claim_until <= %(now)s)
        ORDER BY t.lease_until, t.job_id, t.task_id
        LIMIT %(limit)s
        FOR UPDATE OF t SKIP LOCKED
        FOR KEY SHARE OF j SKIP LOCKED
    )
    UPDATE tasks t SET sweep_claim_until = %(claim_until)s
    FROM expired e
    WHERE t.job_id = e.job_id AND t.task_id = e.task_id
    RETURNING e.tenant, t.job_id, t.task_id, t.attempt, t.lease_until
"""
# A renewal first takes its jobs' rows (KEY SHARE: renewals do not exclude each other, job
# changes do), in job_id order, so it never holds a task a job change needs while waiting for
# that change's job.
_LOCK_JOBS_FOR_RENEWAL: Final = """
    SELECT 1 FROM jobs WHERE job_id = ANY(%(job_ids)s) AND tenant = %(tenant)s
    ORDER BY job_id FOR KEY SHARE
"""
# The fence: only the current attempt of a RUNNING task of this tenant, held by the renewing
# agent, is renewed. Tasks are locked in (job_id, task_id) order, so two renewals of one task
# never wait in a cycle.
_RENEW: Final = """
    WITH wanted (job_id, task_id, attempt) AS (
        SELECT * FROM unnest(%(job_ids)s::text[], %(task_ids)s::text[], %(attempts)s::int[])
    ), current AS MATERIALIZED (
        SELECT t.job_id, t.task_id FROM tasks t
        JOIN wanted w ON t.job_id = w.job_id AND t.task_id = w.task_id AND t.attempt = w.attempt
        WHERE t.state = 'RUNNING' AND t.agent_id = %(agent_id)s
            AND EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = t.job_id AND j.tenant = %(tenant)s)
        ORDER BY t.job_id, t.task_id
        FOR UPDATE OF t
    )
    -- LEAST ignores NULL: never past the attempt's timeout, where the server stops waiting.
    UPDATE tasks t SET lease_until = LEAST(%(lease_until)s, t.timeout_at)
    FROM current c
    WHERE t.job_id = c.job_id AND t.task_id = c.task_id
    RETURNING t.job_id, t.task_id, t.attempt
"""
_INSERT_MESSAGE: Final = """
    INSERT INTO lam_messages (tenant, message_id, inbound, conversation_id, performative,
        sender, job_id, body_json, create_time)
    VALUES (%(tenant)s, %(message_id)s, %(inbound)s, %(conversation_id)s, %(performative)s,
        %(sender)s, %(job_id)s, %(body_json)s, %(create_time)s)
    ON CONFLICT (tenant, message_id, inbound) DO NOTHING
"""

# -- the writes a batch carries ------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _Op:
    """One write waiting for its batch. `order` fixes its place in the batch: the lock order."""

    order: tuple[int, str]
    future: asyncio.Future[Any]
    result: Any = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class _CreationRecords:
    """A new job's rows, for _CREATE_JOBS."""

    jobs: list[codec.Data]
    labels: list[codec.Data]
    tasks: list[codec.Data]
    events: list[codec.Data]

    @classmethod
    def of(cls, job: Job, changes: JobChanges) -> _CreationRecords:
        return cls(
            jobs=[codec.job_to_record(job)],
            labels=[
                {"job_id": job.job_id, "key": key, "value": value}
                for key, value in job.options.labels.items()
            ],
            tasks=[
                codec.task_to_record(job.job_id, i, task)
                for i, task in enumerate(job.tasks.values())
            ],
            events=list(_event_records(job.job_id, changes.events)),
        )

    @staticmethod
    def params(creations: Sequence[_CreationRecords]) -> dict[str, str]:
        """The parameters of _CREATE_JOBS for these creations, in this order."""
        return {
            "jobs": _json_rows(r for c in creations for r in c.jobs),
            "labels": _json_rows(r for c in creations for r in c.labels),
            "tasks": _json_rows(r for c in creations for r in c.tasks),
            "events": _json_rows(r for c in creations for r in c.events),
        }


@dataclass(slots=True)
class _Insertion:
    """A batch's creation statement: it returns the ids of the jobs it inserted."""

    cursor: AsyncCursor[Row]
    _ids: set[str] | None = None

    async def ids(self) -> set[str]:
        if self._ids is None:
            self._ids = {job_id for (job_id,) in await self.cursor.fetchall()}
        return self._ids


@dataclass(slots=True, kw_only=True)
class _Create(_Op):
    """New jobs, stored together or not at all."""

    jobs: list[Job]
    changes: list[JobChanges]
    insertion: _Insertion | None = None

    @property
    def alone(self) -> bool:
        """Several jobs with request ids get a transaction of their own: when one's request id
        turns out taken by a different request, the others must be undone before the commit,
        and only a transaction holding nothing else can simply roll back."""
        return len(self.jobs) > 1 and any(job.request_id for job in self.jobs)


@dataclass(slots=True, kw_only=True)
class _Update(_Op):
    tenant: str
    job_id: str
    mutate: Callable[[Job], Any]


@dataclass(slots=True, kw_only=True)
class _SaveMessage(_Op):
    message: StoredMessage


@dataclass(slots=True)
class _Progress:
    """How far a batch got: once its COMMIT is sent, a broken connection leaves it unknown
    whether the batch was stored."""

    committing: bool = False


@dataclass(slots=True)
class _Writes:
    """What the updates of a batch changed, merged per row for one _WRITE_CHANGES: the last
    state of each job and dirty task, and every new event."""

    jobs: dict[str, codec.Data] = field(default_factory=dict)
    tasks: dict[tuple[str, str], codec.Data] = field(default_factory=dict)
    events: list[codec.Data] = field(default_factory=list)

    def add(self, job: Job, changes: JobChanges) -> None:
        """Encode first, then record: a change that cannot be encoded leaves nothing behind."""
        job_record = codec.job_state_to_record(job)
        task_records = [
            codec.task_state_to_record(job.job_id, job.tasks[task_id])
            for task_id in sorted(changes.dirty_tasks)
        ]
        events = list(_event_records(job.job_id, changes.events))
        self.jobs[job.job_id] = job_record
        for record in task_records:
            self.tasks[(job.job_id, record["task_id"])] = record
        self.events += events

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def params(self) -> dict[str, Any]:
        return {
            "job_ids": sorted(self.jobs),
            "jobs": _json_rows(self.jobs.values()),
            "tasks": _json_rows(self.tasks.values()),
            "events": _json_rows(self.events),
        }


@dataclass(slots=True)
class _Loaded:
    """The jobs a batch locked: their rows as read, and as aggregates. A job whose mutation
    failed may be half changed: `stale` ones are rebuilt from the rows and the batch's writes
    so far (what the database would return) before their next use."""

    job_rows: dict[str, Row] = field(default_factory=dict)
    task_rows: dict[str, list[Row]] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    # Jobs taken from the aggregate cache: their task rows were not read.
    cached: set[str] = field(default_factory=set)

    @classmethod
    def of(
        cls,
        job_rows: Iterable[Row],
        task_rows: Iterable[Row],
        cached: Mapping[str, Job] | None = None,
    ) -> _Loaded:
        """The aggregates: from `cached` where still valid (same last_event_sequence as the
        row; _SELECT_UNCACHED_TASKS then read no task rows for it), else from the rows."""
        loaded = cls()
        for row in task_rows:
            loaded.task_rows.setdefault(row[_TASK_JOB_ID], []).append(row)
        loaded.job_rows = {row[_JOB_ID]: row for row in job_rows}
        for job_id, row in loaded.job_rows.items():
            kept = (cached or {}).get(job_id)
            if kept is not None and kept.last_event_sequence == row[_JOB_VERSION]:
                loaded.jobs[job_id] = kept
                loaded.cached.add(job_id)
            else:
                loaded.jobs[job_id] = loaded._build(job_id, _Writes())
        return loaded

    def job(self, job_id: str, writes: _Writes) -> Job | None:
        if job_id in self.stale:
            if job_id in self.cached:
                raise _RowsNeededError(job_id)
            self.stale.discard(job_id)
            self.jobs[job_id] = self._build(job_id, writes)
        return self.jobs.get(job_id)

    def committed(self) -> Iterator[Job]:
        """After the commit: the aggregates that are what was stored (not half-changed)."""
        return (job for job_id, job in self.jobs.items() if job_id not in self.stale)

    def _build(self, job_id: str, writes: _Writes) -> Job:
        record = dict(zip(codec.JOB_COLUMNS, self.job_rows[job_id], strict=True))
        record.update(writes.jobs.get(job_id, {}))
        tasks = []
        for row in self.task_rows.get(job_id, []):
            task = dict(zip(codec.TASK_COLUMNS, row, strict=True))
            task.update(writes.tasks.get((job_id, task["task_id"]), {}))
            tasks.append(codec.task_from_record(task))
        return codec.job_from_records(record, tasks)


class PostgresStore:
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
        self._pool = pool
        self._max_in_flight = max_batches_in_flight
        self._max_batch_ops = max_batch_ops
        self._sweep_claim = timedelta(seconds=sweep_claim_s)
        # Writes waiting for a batch: changes of existing jobs before new jobs (_next_batch).
        self._pending: list[_Op] = []
        self._pending_creations: list[_Create] = []
        self._start_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()
        # Cleared while the pool is being checked after a connection broke: calls wait for the
        # check instead of drawing the other connections the same failure broke.
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._recovery: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        # A test seam: awaited between finding a request id taken and reading its owner (in
        # the creating transaction, and after its commit), where the retention sweep of any
        # replica may release the id; tests release it there to force that race.
        self.before_owner_lookup: Callable[[], Awaitable[None]] | None = None
        # Aggregates this replica committed last, reused while no other replica changed them.
        self._aggregates = AggregateCache()

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
        in_flight = max_batches_in_flight or MAX_BATCHES_IN_FLIGHT
        return cls(
            pool,
            max_batches_in_flight=min(in_flight, max_size),
            max_batch_ops=max_batch_ops,
            sweep_claim_s=sweep_claim_s,
        )

    # -- group commit ---------------------------------------------------------------------

    def _submit(self, op: _Op) -> asyncio.Future[Any]:
        if self._closing:
            raise RuntimeError("store is closed")
        if isinstance(op, _Create):
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

    def _next_batch(self) -> list[_Op]:
        """Up to max_batch_ops jobs' worth of pending writes (at least one), the oldest first,
        changes of existing jobs before new jobs: under a flood of submissions, the results and
        assignments of running work do not queue behind it (work in progress ends first, and
        new work waits for it, not the other way round). A creation that must run alone
        (_Create.alone) makes a batch of its own."""
        batch: list[_Op] = self._pending[: self._max_batch_ops]
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

    async def _run_batch(self, batch: list[_Op]) -> None:
        progress = _Progress()
        try:
            async with self._connection() as connection, connection.pipeline() as pipeline:
                try:
                    await self._run_fast(connection, pipeline, batch, progress)
                except (psycopg.DatabaseError, _RowsNeededError) as refused:
                    if connection.broken or connection.closed:
                        raise
                    # The database refused a statement (or a half-changed cached aggregate
                    # is needed again: _RowsNeededError), so nothing was stored. Once more,
                    # each write on its own: only the one the database refuses fails.
                    log.info(
                        "a batch of %d writes was refused, running each alone: %s",
                        len(batch),
                        _first_line(refused),
                    )
                    progress.committing = False
                    await _discard_pipeline(pipeline)
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
        batch: list[_Op],
        progress: _Progress,
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
        if await _request_ids_refused(connection, pipeline, batch, self.before_owner_lookup):
            # Only a write that runs alone is refused here (_Create.alone): undo its batch.
            await connection.execute("ROLLBACK")
            await pipeline.sync()
            return
        updates = [op for op in batch if isinstance(op, _Update)]
        if updates:
            job_ids = sorted({op.job_id for op in updates})
            cached = self._aggregates.take(job_ids)
            jobs = await connection.execute(_LOCK_JOBS, {"job_ids": job_ids}, prepare=False)
            # A second statement, after the locks are granted: one that waited for a lock
            # still sees the rows as they were before the wait.
            tasks = await connection.execute(
                _SELECT_UNCACHED_TASKS,
                {
                    "job_ids": job_ids,
                    "cached_ids": list(cached),
                    "cached_versions": [job.last_event_sequence for job in cached.values()],
                },
                prepare=False,
            )
            await pipeline.sync()
            loaded = _Loaded.of(await jobs.fetchall(), await tasks.fetchall(), cached)
            writes = _Writes()
            for op in updates:
                _mutate(op, loaded, writes)
            if writes:
                await connection.execute(_WRITE_CHANGES, writes.params(), prepare=False)
        await connection.execute("COMMIT")
        progress.committing = True
        await pipeline.sync()
        if updates:
            for job in loaded.committed():
                self._aggregates.put(job)
        await _creation_results(batch)

    async def _run_carefully(
        self,
        connection: Connection,
        pipeline: AsyncPipeline,
        batch: list[_Op],
        progress: _Progress,
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
                await _discard_pipeline(pipeline)
                await connection.execute("ROLLBACK TO SAVEPOINT op")
                await connection.execute("RELEASE SAVEPOINT op")
                op.result, op.error = None, rejected
        await connection.execute("COMMIT")
        progress.committing = True
        await pipeline.sync()
        await _creation_results([op for op in batch if op.error is None])

    async def _apply_alone(self, connection: Connection, pipeline: AsyncPipeline, op: _Op) -> None:
        if not isinstance(op, _Update):
            await self._insert(connection, [op])
            if await _request_ids_refused(connection, pipeline, [op], self.before_owner_lookup):
                assert op.error is not None
                raise op.error
            return
        # The lock serializes every change of this job across replicas until the commit, or
        # until this op rolls back to its savepoint.
        params = {"job_ids": [op.job_id]}
        jobs = await connection.execute(_LOCK_JOBS, params, prepare=False)
        tasks = await connection.execute(_SELECT_TASKS, params, prepare=False)
        await pipeline.sync()
        loaded = _Loaded.of(await jobs.fetchall(), await tasks.fetchall())
        writes = _Writes()
        _mutate(op, loaded, writes)
        if op.error is not None:
            raise op.error
        await connection.execute(_WRITE_CHANGES, writes.params(), prepare=False)

    async def _insert(self, connection: Connection, ops: Sequence[_Op]) -> None:
        """The creations among `ops` in one statement (its cursor kept for _creation_results),
        and the messages."""
        creations: list[tuple[_Create, list[_CreationRecords]]] = []
        for op in ops:
            if isinstance(op, _Create):
                # In (tenant, request_id) order, the order every writer takes them in: two
                # creations waiting for each other's request id never wait in a cycle.
                jobs = sorted(
                    zip(op.jobs, op.changes, strict=True), key=lambda p: _request_key(p[0])
                )
                try:
                    records = [_CreationRecords.of(job, changes) for job, changes in jobs]
                except Exception as rejected:  # e.g. a value that is no JSON: it fails alone
                    op.error = rejected
                    continue
                creations.append((op, records))
            elif isinstance(op, _SaveMessage):
                await connection.execute(_INSERT_MESSAGE, _message_params(op.message))
        if creations:
            params = _CreationRecords.params([r for _, records in creations for r in records])
            insertion = _Insertion(await connection.execute(_CREATE_JOBS, params))
            for op, _ in creations:
                op.insertion = insertion

    def _batch_failure(self, failure: Exception, *, committing: bool) -> Exception:
        if not _connection_failure(failure):
            return failure
        self._connection_failed()
        if committing:
            return DatabaseUnavailableError(
                "the connection to PostgreSQL failed during commit; the change may or may not "
                f"have been stored ({_first_line(failure)})"
            )
        return DatabaseUnavailableError(
            f"the connection to PostgreSQL failed; nothing was stored ({_first_line(failure)})"
        )

    # -- connections ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        await self._healthy.wait()
        async with self._pool.connection() as connection:
            try:
                yield connection
            except Exception as error:
                if connection.broken or connection.closed:
                    raise _BrokenConnectionError(str(error)) from error
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

    def _call_failure(self, error: Exception) -> Exception:
        if not _connection_failure(error):
            return error
        self._connection_failed()
        return DatabaseUnavailableError(
            f"the connection to PostgreSQL failed ({_first_line(error)})"
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
            op = _Create(
                # Creations go first, in (tenant, request_id) order: see _run_fast.
                order=(0, "\0".join(("job", *min(_request_key(jobs[i]) for i in pending)))),
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
            "SELECT job_id, request_fingerprint FROM jobs "
            "WHERE tenant = %(tenant)s AND request_id = %(request_id)s",
            {"tenant": job.tenant, "request_id": job.request_id},
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
        op = _Update(order=(1, job_id), future=future, tenant=tenant, job_id=job_id, mutate=mutate)
        result: tuple[Job, T, JobChanges] = await self._submit(op)
        return result

    async def get_job(self, tenant: str, job_id: str) -> Job:
        async def run(connection: Connection, pipeline: AsyncPipeline) -> Job:
            jobs = await connection.execute(
                f"{_JOB_SELECT} WHERE job_id = %s AND tenant = %s", (job_id, tenant)
            )
            tasks = await connection.execute(_SELECT_TASKS, {"job_ids": [job_id]}, prepare=False)
            await pipeline.sync()
            job = _jobs_from_rows(await jobs.fetchall(), await tasks.fetchall()).get(job_id)
            if job is None:
                raise _job_not_found(job_id)
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
            f"{_JOB_SELECT} WHERE {' AND '.join(clauses)} "
            "ORDER BY create_time DESC, job_id DESC LIMIT %s"
        )

        async def run(connection: Connection, pipeline: AsyncPipeline) -> list[Job]:
            jobs = await connection.execute(query, [*arguments, limit])
            await pipeline.sync()
            job_rows = await jobs.fetchall()
            if not job_rows:
                return []
            job_ids = [row[_JOB_ID] for row in job_rows]
            tasks = await connection.execute(_SELECT_TASKS, {"job_ids": job_ids}, prepare=False)
            await pipeline.sync()
            loaded = _jobs_from_rows(job_rows, await tasks.fetchall())
            return [loaded[job_id] for job_id in job_ids]

        return await self._read(run)

    async def list_events(
        self, tenant: str, job_id: str, *, after_sequence: int, limit: int
    ) -> list[JobEvent]:
        rows = await self._statement(
            _SELECT_EVENTS,
            {"after": after_sequence, "limit": limit, "job_id": job_id, "tenant": tenant},
        )
        if not rows:
            raise _job_not_found(job_id)
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
            _CLAIM_EXPIRED,
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
                await connection.execute(_LOCK_JOBS_FOR_RENEWAL, params, prepare=False)
                renewed = await connection.execute(_RENEW, params, prepare=False)
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
        await self._submit(_SaveMessage(order=(0, key), future=future, message=message))

    async def conversation_job(self, tenant: str, conversation_id: str) -> str | None:
        rows = await self._statement(
            "SELECT job_id FROM lam_messages WHERE tenant = %(tenant)s "
            "AND conversation_id = %(conversation_id)s AND job_id <> '' "
            "ORDER BY create_time LIMIT 1",
            {"tenant": tenant, "conversation_id": conversation_id},
        )
        return None if not rows else str(rows[0][0])

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
            await self._pool.close()
        finally:
            self._closed.set()


# -- helpers ------------------------------------------------------------------------------------

_JOB_ID = codec.JOB_COLUMNS.index("job_id")
_JOB_VERSION = codec.JOB_COLUMNS.index("last_event_sequence")
_TASK_JOB_ID = codec.TASK_COLUMNS.index("job_id")


class _RowsNeededError(Exception):
    """A mutation failed half-way on a cached aggregate and a later write of the batch needs the
    job: it cannot be rebuilt without its task rows, so the batch runs again the careful way."""


class _BrokenConnectionError(psycopg.OperationalError):
    """The connection itself failed (as opposed to a statement the database refused)."""


def _connection_failure(error: BaseException) -> bool:
    return isinstance(error, _BrokenConnectionError | PoolTimeout)


async def _discard_pipeline(pipeline: AsyncPipeline) -> None:
    """After a refused statement (psycopg may report it at any later execute, not only at a
    sync): sync, so the server stops skipping statements, and drop what is still queued."""
    with contextlib.suppress(psycopg.DatabaseError):
        await pipeline.sync()


def _job_not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id!r} not found", reason=Reason.JOB_NOT_FOUND, field="job_id")


def _jobs_from_rows(job_rows: Iterable[Row], task_rows: Iterable[Row]) -> dict[str, Job]:
    """Aggregates from rows of _JOB_SELECT and of _TASK_SELECT (ordered by job, position)."""
    return _Loaded.of(job_rows, task_rows).jobs


def _json_rows(records: Iterable[Mapping[str, Any]]) -> str:
    return json_text.dumps(list(records))


def _event_records(job_id: str, events: Sequence[JobEvent]) -> Iterator[codec.Data]:
    for e in events:
        yield {
            "job_id": job_id,
            "sequence": e.sequence,
            "create_time": e.create_time,
            "terminal": e.terminal,
            "payload_json": codec.event_payload_json(e),
        }


def _mutate(op: _Update, loaded: _Loaded, writes: _Writes) -> None:
    """Apply one update to its loaded job and record what it changed in `writes`; on failure
    set op.error and leave the job to be rebuilt (_Loaded.stale)."""
    job = loaded.job(op.job_id, writes)
    if job is None or job.tenant != op.tenant:
        op.error = _job_not_found(op.job_id)
        return
    try:
        result = op.mutate(job)
        changes = job.take_changes()
        writes.add(job, changes)
    except Exception as rejected:
        op.error = rejected
        loaded.stale.add(op.job_id)
        return
    op.result = (job, result, changes)


def _message_params(message: StoredMessage) -> dict[str, Any]:
    return {
        "tenant": message.tenant,
        "message_id": message.message_id,
        "inbound": message.inbound,
        "conversation_id": message.conversation_id,
        "performative": message.performative,
        "sender": message.sender,
        "job_id": message.job_id,
        "body_json": message.body_json,
        "create_time": message.create_time,
    }


async def _creation_results(ops: Iterable[_Op]) -> None:
    """After the commit: each creation's outcome, from the ids its statement inserted."""
    for op in ops:
        if isinstance(op, _Create) and op.insertion is not None and op.error is None:
            inserted = await op.insertion.ids()
            # None: the request_id was taken (create_jobs looks up by whom).
            op.result = [
                changes if job.job_id in inserted else None
                for job, changes in zip(op.jobs, op.changes, strict=True)
            ]
            op.insertion = None


async def _request_ids_refused(
    connection: Connection,
    pipeline: AsyncPipeline,
    ops: Iterable[_Op],
    before_lookup: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Before the commit, for the creations that run alone (_Create.alone): whether one of
    their jobs found its request id taken by a different request (the op's error says which).
    The owners are read after the creation statement, which waited for any of them still
    being inserted, so they are committed and visible; an owner gone by then (its id released
    by the retention sweep meanwhile) refuses nothing: create_jobs creates that job again."""
    checked = [op for op in ops if isinstance(op, _Create) and op.alone and op.error is None]
    refused = False
    for op in checked:
        assert op.insertion is not None
        await pipeline.sync()
        inserted = await op.insertion.ids()
        taken = [(i, job) for i, job in enumerate(op.jobs) if job.job_id not in inserted]
        if not taken:
            continue
        if before_lookup is not None:
            await before_lookup()
        cursor = await connection.execute(
            _REQUEST_OWNERS,
            {
                "tenants": [job.tenant for _, job in taken],
                "request_ids": [job.request_id for _, job in taken],
            },
            prepare=False,
        )
        await pipeline.sync()
        owners = {
            (tenant, request_id): (owner, fingerprint)
            for tenant, request_id, owner, fingerprint in await cursor.fetchall()
        }
        for index, job in taken:
            found = owners.get((job.tenant, job.request_id))
            if found is None:
                continue  # released since: not inserted now, created again after the commit
            owner, fingerprint = found
            if fingerprint != job.request_fingerprint:
                op.error = RequestIdReused(job.request_id, owner, index=index)
                refused = True
                break
    return refused


def _request_key(job: Job) -> tuple[str, str]:
    return (job.tenant, job.request_id)


async def _configure(connection: Connection) -> None:
    # UTC: timestamptz values come back with tzinfo=UTC, like every time in the domain.
    await connection.execute(
        "SELECT set_config('TimeZone', 'UTC', false), "
        "set_config('idle_in_transaction_session_timeout', %s, false)",
        (str(IDLE_IN_TRANSACTION_TIMEOUT_MS),),
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
