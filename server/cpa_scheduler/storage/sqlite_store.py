"""SQLite store for the embedded mode: one file, WAL, and group commit of concurrent writes.

Writes from one event-loop iteration run in a single transaction, each inside its own
savepoint (a failing write rolls back alone), so a burst of submissions and results costs one
commit instead of one each. SQLite
calls run on the loop thread: with WAL and synchronous=NORMAL a commit is a few microseconds of
work and no fsync, cheaper than a hop to a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cpa_scheduler.domain import (
    AttemptRef,
    Job,
    JobChanges,
    JobEvent,
    JobFilter,
    JobState,
    NotFound,
    PagePosition,
    Reason,
    RequestIdReused,
    TaskState,
    is_terminal,
)

from . import codec, records
from .data_dir import DataDirectoryLock, make_private_file
from .interface import EndPosition, QueuedTask, StoredMessage
from .sqlite_api_keys import SqliteApiKeys
from .sqlite_audit import SqliteAudit, insert_audit
from .sqlite_callbacks import SqliteCallbacks, insert_callbacks
from .sqlite_schema import connect

_TENANT_LOAD_SQL = records.tenant_load_sql("?")
# `request_id != ''` lets SQLite use the partial unique index jobs_request_id: without it, a
# bound parameter does not prove the predicate and every submission with a request id scanned
# the whole jobs table.
REQUEST_OWNER_SQL = (
    "SELECT job_id, request_fingerprint FROM jobs "
    "WHERE tenant = ? AND request_id = ? AND request_id != ''"
)

T = TypeVar("T")

CHECKPOINT_INTERVAL_S = 1.0

_JOB_COLUMNS = records.JOB_COLUMNS
_TASK_COLUMNS = records.TASK_COLUMNS
_INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _JOB_COLUMNS)})"
)
_UPDATE_JOB = (
    "UPDATE jobs SET "
    + ", ".join(f"{c} = :{c}" for c in records.JOB_STATE_COLUMNS if c != "job_id")
    + " WHERE job_id = :job_id"
)
_INSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _TASK_COLUMNS)})"
)
_UPDATE_TASK = (
    "UPDATE tasks SET "
    + ", ".join(f"{c} = :{c}" for c in records.TASK_STATE_COLUMNS)
    + " WHERE job_id = :job_id AND task_id = :task_id"
)
_INSERT_EVENT = (
    "INSERT INTO events (job_id, sequence, create_time, terminal, payload_json) "
    "VALUES (?, ?, ?, ?, ?)"
)


def _to_row(record: Mapping[str, Any], time_columns: Iterable[str]) -> dict[str, Any]:
    row = dict(record)
    for column in time_columns:
        if column in row:
            row[column] = codec.time_to_us(row[column])
    return row


def _from_row(row: sqlite3.Row, time_columns: Iterable[str]) -> dict[str, Any]:
    record = dict(row)
    for column in time_columns:
        record[column] = codec.time_from_us(record[column])
    return record


def _checkpoint(connection: sqlite3.Connection) -> None:
    """On a worker thread. PASSIVE never blocks the writer; pages still in use wait for the
    next round."""
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")


class SqliteStore(SqliteApiKeys, SqliteCallbacks, SqliteAudit):
    """The embedded store. Open with `await SqliteStore.open(path)`; close with `close()`."""

    def __init__(
        self, connection: sqlite3.Connection, lock: DataDirectoryLock | None = None
    ) -> None:
        self._db = connection
        self._lock = lock
        # Aggregates of unfinished jobs, as last committed. This process is the only writer of
        # the file, so they stay true; loading a job per transition was most of the write cost.
        self._live: dict[str, Job] = {}
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._closed = False
        self._checkpointer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path | str) -> SqliteStore:
        """Open (or create) the store at `path`, holding its directory's lock (data_dir.py) until
        close(); DataDirectoryInUseError when another process holds it."""
        if str(path) == ":memory:":
            return cls._open(path, None)
        lock = DataDirectoryLock.acquire(Path(path).parent)
        try:
            make_private_file(Path(path))
            return cls._open(path, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open(cls, path: Path | str, lock: DataDirectoryLock | None) -> SqliteStore:
        connection = connect(path)
        store = cls(connection, lock)
        store._checkpointer = asyncio.create_task(store._checkpoint_forever(str(path)))
        return store

    async def _checkpoint_forever(self, path: str) -> None:
        if path == ":memory:":
            return
        checkpoints = sqlite3.connect(path, check_same_thread=False)
        running: asyncio.Future[None] | None = None
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_INTERVAL_S)
                running = asyncio.ensure_future(asyncio.to_thread(_checkpoint, checkpoints))
                await asyncio.shield(running)
        finally:
            if running is not None and not running.done():
                # Stopped mid-checkpoint: the thread still uses the connection, and closing it
                # under the thread crashes the process (seen: a segfault in close()).
                await asyncio.wait({running})
            checkpoints.close()

    # -- group commit ---------------------------------------------------------------------

    def _write(self, operation: Callable[[], T]) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((operation, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        # A lone operation needs no savepoint: if it is refused, the whole transaction is
        # rolled back (two statements fewer per commit when changes come one at a time).
        alone = len(batch) == 1
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for operation, future in batch:
                if not alone:
                    self._db.execute("SAVEPOINT op")
                try:
                    result = operation()
                except Exception as rejected:
                    self._db.execute("ROLLBACK" if alone else "ROLLBACK TO op")
                    results.append((future, None, rejected))
                else:
                    results.append((future, result, None))
                if not alone:
                    self._db.execute("RELEASE op")
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        except BaseException as failure:  # the whole batch failed: nothing was stored
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(failure, Exception):
                raise
            return
        for future, result, rejection in results:
            if future.done():
                continue  # the caller went away; the write is stored all the same
            if rejection is None:
                future.set_result(result)
            else:
                future.set_exception(rejection)

    # -- jobs -----------------------------------------------------------------------------

    async def create_jobs(self, jobs: Sequence[Job]) -> list[tuple[Job, JobChanges | None]]:
        return await self._write(lambda: self._create_jobs(jobs))

    def _create_jobs(self, jobs: Sequence[Job]) -> list[tuple[Job, JobChanges | None]]:
        """One write (savepoint): a refused job rolls the others back with it."""
        created = []
        try:
            for index, job in enumerate(jobs):
                created.append(self._create_job(job, index))
        except BaseException:
            for job in jobs:
                self._live.pop(job.job_id, None)
            raise
        return created

    def _create_job(self, job: Job, index: int) -> tuple[Job, JobChanges | None]:
        if job.request_id:
            existing = self._db.execute(REQUEST_OWNER_SQL, (job.tenant, job.request_id)).fetchone()
            if existing is not None:
                if existing["request_fingerprint"] != job.request_fingerprint:
                    raise RequestIdReused(job.request_id, existing["job_id"], index=index)
                return self._load(job.tenant, existing["job_id"]), None
        changes = job.take_changes()
        self._db.execute(_INSERT_JOB, _to_row(records.job_to_record(job), records.JOB_TIME_COLUMNS))
        self._db.executemany(
            "INSERT INTO job_labels (job_id, key, value) VALUES (?, ?, ?)",
            [(job.job_id, k, v) for k, v in job.options.labels.items()],
        )
        self._db.executemany(
            _INSERT_TASK,
            [
                _to_row(records.task_to_record(job.job_id, i, task), records.TASK_TIME_COLUMNS)
                for i, task in enumerate(job.tasks.values())
            ],
        )
        self._insert_events(changes.events)
        if changes.callbacks:
            insert_callbacks(self._db, job.tenant, job.job_id, changes.callbacks)
        if changes.audit:
            insert_audit(self._db, changes.audit)
        self._live[job.job_id] = job
        return job, changes

    async def update_job(
        self, tenant: str, job_id: str, mutate: Callable[[Job], T]
    ) -> tuple[Job, T, JobChanges]:
        return await self._write(lambda: self._update_job(tenant, job_id, mutate))

    def _update_job(
        self, tenant: str, job_id: str, mutate: Callable[[Job], T]
    ) -> tuple[Job, T, JobChanges]:
        job = self._live.get(job_id)
        if job is None or job.tenant != tenant:
            job = self._load(tenant, job_id)
        try:
            result = mutate(job)
        except BaseException:
            # The transaction rolls back; the in-memory aggregate may be half-changed.
            self._live.pop(job_id, None)
            raise
        changes = job.take_changes()
        self._db.execute(
            _UPDATE_JOB, _to_row(records.job_state_to_record(job), records.JOB_TIME_COLUMNS)
        )
        self._db.executemany(
            _UPDATE_TASK,
            [
                _to_row(
                    records.task_state_to_record(job.job_id, job.tasks[task_id]),
                    records.TASK_TIME_COLUMNS,
                )
                for task_id in changes.dirty_tasks
            ],
        )
        self._insert_events(changes.events)
        if changes.callbacks:
            insert_callbacks(self._db, job.tenant, job.job_id, changes.callbacks)
        if changes.audit:
            insert_audit(self._db, changes.audit)
        if job.is_terminal:
            self._live.pop(job_id, None)
        else:
            self._live[job_id] = job
        return job, result, changes

    def _insert_events(self, events: Sequence[JobEvent]) -> None:
        self._db.executemany(
            _INSERT_EVENT,
            [
                (
                    e.job_id,
                    e.sequence,
                    codec.time_to_us(e.create_time),
                    e.terminal,
                    records.event_payload_json(e),
                )
                for e in events
            ],
        )

    def _load(self, tenant: str, job_id: str) -> Job:
        row = self._db.execute(
            "SELECT * FROM jobs WHERE job_id = ? AND tenant = ?", (job_id, tenant)
        ).fetchone()
        if row is None:
            raise NotFound(f"job {job_id!r} not found", reason=Reason.JOB_NOT_FOUND, field="job_id")
        return self._job_from_row(row)

    def _job_from_row(self, row: sqlite3.Row) -> Job:
        task_rows = self._db.execute(
            "SELECT * FROM tasks WHERE job_id = ? ORDER BY position", (row["job_id"],)
        ).fetchall()
        tasks = [
            records.task_from_record(_from_row(t, records.TASK_TIME_COLUMNS)) for t in task_rows
        ]
        return records.job_from_records(_from_row(row, records.JOB_TIME_COLUMNS), tasks)

    async def get_job(self, tenant: str, job_id: str) -> Job:
        return self._load(tenant, job_id)

    async def list_jobs(
        self, tenant: str, job_filter: JobFilter, *, after: PagePosition | None, limit: int
    ) -> list[Job]:
        clauses = ["tenant = ?"]
        arguments: list[Any] = [tenant]
        if job_filter.states:
            clauses.append(f"state IN ({', '.join('?' for _ in job_filter.states)})")
            arguments += sorted(state.value for state in job_filter.states)
        if job_filter.intent is not None:
            clauses.append("intent = ?")
            arguments.append(job_filter.intent)
        for key, value in sorted(job_filter.labels.items()):
            clauses.append("job_id IN (SELECT job_id FROM job_labels WHERE key = ? AND value = ?)")
            arguments += [key, value]
        if job_filter.created_after is not None:
            clauses.append("create_time > ?")
            arguments.append(codec.time_to_us(job_filter.created_after))
        if job_filter.created_before is not None:
            clauses.append("create_time < ?")
            arguments.append(codec.time_to_us(job_filter.created_before))
        if job_filter.dead_lettered is not None:
            clauses.append("dead_lettered = ?")
            arguments.append(job_filter.dead_lettered)
        if after is not None:
            clauses.append("(create_time < ? OR (create_time = ? AND job_id < ?))")
            position_us = codec.time_to_us(after.create_time)
            arguments += [position_us, position_us, after.job_id]
        rows = self._db.execute(
            f"SELECT * FROM jobs WHERE {' AND '.join(clauses)} "
            "ORDER BY create_time DESC, job_id DESC LIMIT ?",
            [*arguments, limit],
        ).fetchall()
        return [self._job_from_row(row) for row in rows]

    async def list_events(
        self, tenant: str, job_id: str, *, after_sequence: int, limit: int
    ) -> list[JobEvent]:
        if (
            self._db.execute(
                "SELECT 1 FROM jobs WHERE job_id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
            is None
        ):
            raise NotFound(f"job {job_id!r} not found", reason=Reason.JOB_NOT_FOUND, field="job_id")
        rows = self._db.execute(
            "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (job_id, after_sequence, limit),
        ).fetchall()
        return [
            JobEvent(
                tenant=tenant,
                job_id=job_id,
                sequence=row["sequence"],
                create_time=codec.time_from_us(row["create_time"]) or datetime.min,
                terminal=bool(row["terminal"]),
                payload=codec.payload_from_data(json.loads(row["payload_json"])),
            )
            for row in rows
        ]

    # -- dispatch support -------------------------------------------------------------------

    async def queued_tasks(
        self, *, limit: int, queued_before: datetime | None = None
    ) -> list[QueuedTask]:
        before_us = codec.time_to_us(queued_before) if queued_before is not None else None
        rows = self._db.execute(
            "SELECT jobs.tenant, tasks.job_id, tasks.todo_json, tasks.attempt, "
            "tasks.next_attempt_time, tasks.agent_id FROM tasks JOIN jobs USING (job_id) "
            "WHERE tasks.state = ? AND (? IS NULL OR tasks.queue_time < ?) "
            "ORDER BY tasks.queue_time LIMIT ?",
            (TaskState.QUEUED.value, before_us, before_us, limit),
        ).fetchall()
        return [
            codec.queued_task(
                tenant=row["tenant"],
                job_id=row["job_id"],
                todo=codec.todo_from_data(json.loads(row["todo_json"])),
                attempt=row["attempt"],
                not_before=codec.time_from_us(row["next_attempt_time"]),
                agent_id=row["agent_id"],
            )
            for row in rows
        ]

    async def expired_attempts(self, now: datetime, *, limit: int) -> list[tuple[str, AttemptRef]]:
        rows = self._db.execute(
            "SELECT jobs.tenant, tasks.job_id, tasks.task_id, tasks.attempt "
            "FROM tasks JOIN jobs USING (job_id) "
            "WHERE tasks.state = ? AND tasks.lease_until < ? LIMIT ?",
            (TaskState.RUNNING.value, codec.time_to_us(now), limit),
        ).fetchall()
        return [
            (row["tenant"], AttemptRef(row["job_id"], row["task_id"], row["attempt"]))
            for row in rows
        ]

    async def overdue_jobs(self, now: datetime, *, limit: int) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT tenant, job_id FROM jobs WHERE deadline < ? AND cancel_requested = 0 "
            "AND state IN (?, ?, ?) ORDER BY deadline LIMIT ?",
            (
                codec.time_to_us(now),
                JobState.PENDING.value,
                JobState.RUNNING.value,
                JobState.WAITING_APPROVAL.value,
                limit,
            ),
        ).fetchall()
        return [(row["tenant"], row["job_id"]) for row in rows]

    async def unstarted_tasks(self, now: datetime, *, limit: int) -> list[tuple[str, str, str]]:
        rows = self._db.execute(
            "SELECT jobs.tenant, tasks.job_id, tasks.task_id FROM tasks JOIN jobs USING (job_id) "
            "WHERE tasks.start_by < ? AND tasks.state = ? ORDER BY tasks.start_by LIMIT ?",
            (codec.time_to_us(now), TaskState.QUEUED.value, limit),
        ).fetchall()
        return [(row["tenant"], row["job_id"], row["task_id"]) for row in rows]

    async def forget_request_ids(self, created_before: datetime, *, limit: int) -> int:
        return await self._write(lambda: self._forget_request_ids(created_before, limit))

    def _forget_request_ids(self, created_before: datetime, limit: int) -> int:
        rows = self._db.execute(
            "UPDATE jobs SET request_id = '', request_fingerprint = '' WHERE job_id IN "
            "(SELECT job_id FROM jobs WHERE request_id != '' AND create_time < ? LIMIT ?) "
            "RETURNING job_id",
            (codec.time_to_us(created_before), limit),
        ).fetchall()
        for row in rows:
            if (live := self._live.get(row["job_id"])) is not None:
                live.request_id = live.request_fingerprint = ""
        return len(rows)

    async def prune_events(
        self, ended_before: datetime, *, after: EndPosition | None, limit: int
    ) -> tuple[int, EndPosition | None]:
        return await self._write(lambda: self._prune_events(ended_before, after, limit))

    def _prune_events(
        self, ended_before: datetime, after: EndPosition | None, limit: int
    ) -> tuple[int, EndPosition | None]:
        terminal = [state.value for state in JobState if is_terminal(state)]
        clauses = [f"state IN ({', '.join('?' for _ in terminal)})", "end_time < ?"]
        arguments: list[Any] = [*terminal, codec.time_to_us(ended_before)]
        if after is not None:
            clauses.append("(end_time > ? OR (end_time = ? AND job_id > ?))")
            after_us = codec.time_to_us(after.end_time)
            arguments += [after_us, after_us, after.job_id]
        rows = self._db.execute(
            "SELECT job_id, last_event_sequence, end_time FROM jobs "
            f"WHERE end_time IS NOT NULL AND {' AND '.join(clauses)} "
            "ORDER BY end_time, job_id LIMIT ?",
            [*arguments, limit],
        ).fetchall()
        if not rows:
            return 0, after
        before = self._db.total_changes
        self._db.executemany(
            "DELETE FROM events WHERE job_id = ? AND sequence < ?",
            [(row["job_id"], row["last_event_sequence"]) for row in rows],
        )
        last = rows[-1]
        end_time = codec.time_from_us(last["end_time"])
        assert end_time is not None  # selected so
        return self._db.total_changes - before, EndPosition(end_time, last["job_id"])

    async def renew_leases(
        self,
        tenant: str,
        agent_id: str,
        attempts: Sequence[AttemptRef],
        lease_until: datetime,
    ) -> list[AttemptRef]:
        if not attempts:
            return []
        return await self._write(lambda: self._renew(tenant, agent_id, attempts, lease_until))

    def _renew(
        self, tenant: str, agent_id: str, attempts: Sequence[AttemptRef], lease_until: datetime
    ) -> list[AttemptRef]:
        stale = []
        until_us = codec.time_to_us(lease_until)
        for ref in attempts:
            # The fence: only the current attempt of a RUNNING task of this tenant, held by
            # this agent, is renewed.
            cursor = self._db.execute(
                # Never past the attempt's timeout: there the server stops waiting for it.
                "UPDATE tasks SET lease_until = min(?, coalesce(timeout_at, ?)) "
                "WHERE agent_id = ? AND job_id = ? AND task_id = ? AND attempt = ? AND state = ? "
                "AND job_id IN (SELECT job_id FROM jobs WHERE tenant = ?)",
                (
                    until_us,
                    until_us,
                    agent_id,
                    ref.job_id,
                    ref.task_id,
                    ref.attempt,
                    TaskState.RUNNING.value,
                    tenant,
                ),
            )
            if cursor.rowcount == 0:
                stale.append(ref)
        return stale

    # -- LAM messages -------------------------------------------------------------------------

    async def save_message(self, message: StoredMessage) -> None:
        await self._write(lambda: self._save_message(message))

    def _save_message(self, message: StoredMessage) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO lam_messages (tenant, message_id, inbound, conversation_id, "
            "performative, sender, job_id, body_json, create_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.tenant,
                message.message_id,
                message.inbound,
                message.conversation_id,
                message.performative,
                message.sender,
                message.job_id,
                message.body_json,
                codec.time_to_us(message.create_time),
            ),
        )

    async def conversation_job(self, tenant: str, conversation_id: str) -> str | None:
        row = self._db.execute(
            "SELECT job_id FROM lam_messages WHERE tenant = ? AND conversation_id = ? "
            "AND job_id != '' ORDER BY create_time LIMIT 1",
            (tenant, conversation_id),
        ).fetchone()
        return None if row is None else str(row["job_id"])

    async def ping(self) -> None:
        if self._closed:
            raise RuntimeError("store is closed")
        self._db.execute("SELECT 1").fetchone()

    async def tenant_load(self, tenant: str) -> tuple[int, int]:
        row = self._db.execute(_TENANT_LOAD_SQL, (tenant, tenant)).fetchone()
        return int(row[0]), int(row[1])

    async def close(self) -> None:
        if self._closed:
            return
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        if self._pending:
            self._flush()
        self._closed = True
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        if self._lock is not None:
            self._lock.release()
