"""The writes a batch of the PostgreSQL store carries, and how they are applied: new jobs'
rows, updates run on the locked aggregates, messages; what a batch changed, merged per row.

Used by postgres_group_commit.py, which forms the batches and runs their transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncCursor, AsyncPipeline

from cpa_scheduler import json_text
from cpa_scheduler.domain import Job, JobChanges, JobEvent, NotFound, Reason, RequestIdReused

from . import codec, records
from . import postgres_sql as sql
from .audit_records import audit_to_record
from .callback_records import callback_to_record
from .interface import StoredMessage
from .postgres_connections import Connection, Row

# -- the writes a batch carries ------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Op:
    """One write waiting for its batch. `order` fixes its place in the batch: the lock order."""

    order: tuple[int, str]
    future: asyncio.Future[Any]
    result: Any = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class CreationRecords:
    """A new job's rows, for sql.CREATE_JOBS."""

    jobs: list[codec.Data]
    labels: list[codec.Data]
    tasks: list[codec.Data]
    events: list[codec.Data]
    callbacks: list[codec.Data]
    audit: list[codec.Data]

    @classmethod
    def of(cls, job: Job, changes: JobChanges) -> CreationRecords:
        return cls(
            jobs=[records.job_to_record(job)],
            labels=[
                {"job_id": job.job_id, "key": key, "value": value}
                for key, value in job.options.labels.items()
            ],
            tasks=[
                records.task_to_record(job.job_id, i, task)
                for i, task in enumerate(job.tasks.values())
            ],
            events=list(_event_records(job.job_id, changes.events)),
            callbacks=[callback_to_record(job.tenant, job.job_id, c) for c in changes.callbacks],
            audit=[audit_to_record(e) for e in changes.audit],
        )

    @staticmethod
    def params(creations: Sequence[CreationRecords]) -> dict[str, str]:
        """The parameters of sql.CREATE_JOBS for these creations, in this order."""
        return {
            "jobs": _json_rows(r for c in creations for r in c.jobs),
            "labels": _json_rows(r for c in creations for r in c.labels),
            "tasks": _json_rows(r for c in creations for r in c.tasks),
            "events": _json_rows(r for c in creations for r in c.events),
        }

    @staticmethod
    def side_inserts(creations: Sequence[CreationRecords]) -> list[tuple[str, dict[str, str]]]:
        """The outbox and audit rows of these creations: (statement, parameters) of
        sql.INSERT_CALLBACKS and sql.INSERT_AUDIT, each only when it has rows (jobs without a
        callback URL cost no statement)."""
        return _side_inserts(
            [r for c in creations for r in c.callbacks], [r for c in creations for r in c.audit]
        )


@dataclass(slots=True)
class Insertion:
    """A batch's creation statement: it returns the ids of the jobs it inserted."""

    cursor: AsyncCursor[Row]
    _ids: set[str] | None = None

    async def ids(self) -> set[str]:
        if self._ids is None:
            self._ids = {job_id for (job_id,) in await self.cursor.fetchall()}
        return self._ids


@dataclass(slots=True, kw_only=True)
class Create(Op):
    """New jobs, stored together or not at all."""

    jobs: list[Job]
    changes: list[JobChanges]
    insertion: Insertion | None = None

    @property
    def alone(self) -> bool:
        """Several jobs with request ids get a transaction of their own: when one's request id
        turns out taken by a different request, the others must be undone before the commit,
        and only a transaction holding nothing else can simply roll back."""
        return len(self.jobs) > 1 and any(job.request_id for job in self.jobs)


@dataclass(slots=True, kw_only=True)
class Update(Op):
    tenant: str
    job_id: str
    mutate: Callable[[Job], Any]


@dataclass(slots=True, kw_only=True)
class SaveMessage(Op):
    message: StoredMessage


@dataclass(slots=True)
class Progress:
    """How far a batch got: once its COMMIT is sent, a broken connection leaves it unknown
    whether the batch was stored."""

    committing: bool = False


@dataclass(slots=True)
class Writes:
    """What the updates of a batch changed, merged per row for one sql.WRITE_CHANGES: the last
    state of each job and dirty task, and every new event."""

    jobs: dict[str, codec.Data] = field(default_factory=dict)
    tasks: dict[tuple[str, str], codec.Data] = field(default_factory=dict)
    events: list[codec.Data] = field(default_factory=list)
    callbacks: list[codec.Data] = field(default_factory=list)
    audit: list[codec.Data] = field(default_factory=list)

    def add(self, job: Job, changes: JobChanges) -> None:
        """Encode first, then record: a change that cannot be encoded leaves nothing behind."""
        job_record = records.job_state_to_record(job)
        task_records = [
            records.task_state_to_record(job.job_id, job.tasks[task_id])
            for task_id in sorted(changes.dirty_tasks)
        ]
        events = list(_event_records(job.job_id, changes.events))
        callbacks = [callback_to_record(job.tenant, job.job_id, c) for c in changes.callbacks]
        audit = [audit_to_record(e) for e in changes.audit]
        self.jobs[job.job_id] = job_record
        self.callbacks += callbacks
        self.audit += audit
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

    def side_inserts(self) -> list[tuple[str, dict[str, str]]]:
        """As CreationRecords.side_inserts, for the batch's changes."""
        return _side_inserts(self.callbacks, self.audit)


def _side_inserts(
    callbacks: list[codec.Data], audit: list[codec.Data]
) -> list[tuple[str, dict[str, str]]]:
    inserts = []
    if callbacks:
        inserts.append((sql.INSERT_CALLBACKS, {"callbacks": _json_rows(callbacks)}))
    if audit:
        inserts.append((sql.INSERT_AUDIT, {"audit": _json_rows(audit)}))
    return inserts


@dataclass(slots=True)
class Loaded:
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
    ) -> Loaded:
        """The aggregates: from `cached` where still valid (same last_event_sequence as the
        row; sql.SELECT_UNCACHED_TASKS then read no task rows for it), else from the rows."""
        loaded = cls()
        for row in task_rows:
            loaded.task_rows.setdefault(row[_TASK_JOB_ID], []).append(row)
        loaded.job_rows = {row[JOB_ID]: row for row in job_rows}
        for job_id, row in loaded.job_rows.items():
            kept = (cached or {}).get(job_id)
            if kept is not None and kept.last_event_sequence == row[_JOB_VERSION]:
                loaded.jobs[job_id] = kept
                loaded.cached.add(job_id)
            else:
                loaded.jobs[job_id] = loaded._build(job_id, Writes())
        return loaded

    def job(self, job_id: str, writes: Writes) -> Job | None:
        if job_id in self.stale:
            if job_id in self.cached:
                raise RowsNeededError(job_id)
            self.stale.discard(job_id)
            self.jobs[job_id] = self._build(job_id, writes)
        return self.jobs.get(job_id)

    def committed(self) -> Iterator[Job]:
        """After the commit: the aggregates that are what was stored (not half-changed)."""
        return (job for job_id, job in self.jobs.items() if job_id not in self.stale)

    def _build(self, job_id: str, writes: Writes) -> Job:
        record = dict(zip(records.JOB_COLUMNS, self.job_rows[job_id], strict=True))
        record.update(writes.jobs.get(job_id, {}))
        tasks = []
        for row in self.task_rows.get(job_id, []):
            task = dict(zip(records.TASK_COLUMNS, row, strict=True))
            task.update(writes.tasks.get((job_id, task["task_id"]), {}))
            tasks.append(records.task_from_record(task))
        return records.job_from_records(record, tasks)


JOB_ID = records.JOB_COLUMNS.index("job_id")
_JOB_VERSION = records.JOB_COLUMNS.index("last_event_sequence")
_TASK_JOB_ID = records.TASK_COLUMNS.index("job_id")


class RowsNeededError(Exception):
    """A mutation failed half-way on a cached aggregate and a later write of the batch needs the
    job: it cannot be rebuilt without its task rows, so the batch runs again the careful way."""


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id!r} not found", reason=Reason.JOB_NOT_FOUND, field="job_id")


def jobs_from_rows(job_rows: Iterable[Row], task_rows: Iterable[Row]) -> dict[str, Job]:
    """Aggregates from rows of sql.JOB_SELECT and of sql.TASK_SELECT (ordered by job, position)."""
    return Loaded.of(job_rows, task_rows).jobs


def _json_rows(records: Iterable[Mapping[str, Any]]) -> str:
    return json_text.dumps(list(records))


def _event_records(job_id: str, events: Sequence[JobEvent]) -> Iterator[codec.Data]:
    for e in events:
        yield {
            "job_id": job_id,
            "sequence": e.sequence,
            "create_time": e.create_time,
            "terminal": e.terminal,
            "payload_json": records.event_payload_json(e),
        }


def mutate(op: Update, loaded: Loaded, writes: Writes) -> None:
    """Apply one update to its loaded job and record what it changed in `writes`; on failure
    set op.error and leave the job to be rebuilt (Loaded.stale)."""
    job = loaded.job(op.job_id, writes)
    if job is None or job.tenant != op.tenant:
        op.error = job_not_found(op.job_id)
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


def message_params(message: StoredMessage) -> dict[str, Any]:
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


async def creation_results(ops: Iterable[Op]) -> None:
    """After the commit: each creation's outcome, from the ids its statement inserted."""
    for op in ops:
        if isinstance(op, Create) and op.insertion is not None and op.error is None:
            inserted = await op.insertion.ids()
            # None: the request_id was taken (create_jobs looks up by whom).
            op.result = [
                changes if job.job_id in inserted else None
                for job, changes in zip(op.jobs, op.changes, strict=True)
            ]
            op.insertion = None


async def request_ids_refused(
    connection: Connection,
    pipeline: AsyncPipeline,
    ops: Iterable[Op],
    before_lookup: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Before the commit, for the creations that run alone (Create.alone): whether one of
    their jobs found its request id taken by a different request (the op's error says which).
    The owners are read after the creation statement, which waited for any of them still
    being inserted, so they are committed and visible; an owner gone by then (its id released
    by the retention sweep meanwhile) refuses nothing: create_jobs creates that job again."""
    checked = [op for op in ops if isinstance(op, Create) and op.alone and op.error is None]
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
            sql.REQUEST_OWNERS,
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


def request_key(job: Job) -> tuple[str, str]:
    return (job.tenant, job.request_id)
