"""The audit trail of the embedded store: rows written with the change they record (or alone,
for refused calls), listed newest first, pruned by age. There is no update path; the schema's
triggers refuse UPDATE always and DELETE outside the retention prune (sqlite_schema.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from cpa_scheduler.domain import AuditEntry, AuditPosition, AuditQuery

from . import codec
from .audit_records import AUDIT_COLUMNS, audit_from_record, audit_to_record

T = TypeVar("T")

_INSERT: Final = (
    f"INSERT INTO audit_entries ({', '.join(AUDIT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in AUDIT_COLUMNS)})"
)


def insert_audit(db: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    """Inside the transaction of the change they record (SqliteStore's writes)."""
    rows = []
    for entry in entries:
        row = audit_to_record(entry)
        row["create_time"] = codec.time_to_us(entry.create_time)
        rows.append(row)
    db.executemany(_INSERT, rows)


def _entry(row: sqlite3.Row) -> AuditEntry:
    record = dict(row)
    record["create_time"] = codec.time_from_us(record["create_time"])
    return audit_from_record(record)


class SqliteAudit:
    """Mixed into SqliteStore, which provides the connection and the group-committed writes."""

    _db: sqlite3.Connection

    def _write(self, operation: Callable[[], T]) -> asyncio.Future[T]:
        raise NotImplementedError  # SqliteStore._write

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if entries:
            await self._write(lambda: insert_audit(self._db, entries))

    async def list_audit(
        self, tenant: str, query: AuditQuery, *, after: AuditPosition | None, limit: int
    ) -> list[AuditEntry]:
        clauses = ["tenant = ?"]
        arguments: list[Any] = [tenant]
        for column, value in (
            ("job_id", query.job_id),
            ("subject", query.subject),
            ("action", query.action),
            ("result_code", query.result_code),
        ):
            if value:
                clauses.append(f"{column} = ?")
                arguments.append(value)
        if query.start_time is not None:
            clauses.append("create_time >= ?")
            arguments.append(codec.time_to_us(query.start_time))
        if query.end_time is not None:
            clauses.append("create_time < ?")
            arguments.append(codec.time_to_us(query.end_time))
        if after is not None:
            clauses.append("(create_time, entry_id) < (?, ?)")
            arguments += [codec.time_to_us(after.create_time), after.entry_id]
        rows = self._db.execute(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_entries "
            f"WHERE {' AND '.join(clauses)} ORDER BY create_time DESC, entry_id DESC LIMIT ?",
            (*arguments, limit),
        ).fetchall()
        return [_entry(row) for row in rows]

    async def prune_audit(self, created_before: datetime, *, limit: int) -> int:
        return await self._write(lambda: self._prune_audit(created_before, limit))

    def _prune_audit(self, created_before: datetime, limit: int) -> int:
        # The gate row opens the delete trigger for this transaction only (removed before the
        # commit); nothing else in the store deletes audit rows.
        self._db.execute("INSERT INTO audit_prune_gate (open) VALUES (1)")
        try:
            cursor = self._db.execute(
                "DELETE FROM audit_entries WHERE rowid IN (SELECT rowid FROM audit_entries "
                "WHERE create_time < ? ORDER BY create_time LIMIT ?)",
                (codec.time_to_us(created_before), limit),
            )
        finally:
            self._db.execute("DELETE FROM audit_prune_gate")
        return cursor.rowcount
