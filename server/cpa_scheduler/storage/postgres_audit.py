"""The audit trail of the PostgreSQL store: entries that record no change (refused calls),
listings, and the retention prune. Entries of a change are written with it (postgres_batch.py,
sql.INSERT_AUDIT). The table's trigger refuses UPDATE, and DELETE unless the transaction set
`cpa.audit_prune` (migration 0009): only prune_audit does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from cpa_scheduler import json_text
from cpa_scheduler.domain import AuditEntry, AuditPosition, AuditQuery

from .audit_records import AUDIT_COLUMNS, audit_from_record, audit_to_record
from .postgres_connections import Connection, Row

T = TypeVar("T")

_COLUMNS: Final = ", ".join(AUDIT_COLUMNS)
# Refused calls name jobs that may not exist (that is often why they were refused).
APPEND: Final = f"""
    INSERT INTO audit_entries ({_COLUMNS})
    SELECT {", ".join(f"a.{c}" for c in AUDIT_COLUMNS)}
    FROM json_populate_recordset(NULL::audit_entries, %(audit)s::json) AS a
"""
_PRUNE: Final = """
    DELETE FROM audit_entries WHERE entry_id IN (
        SELECT entry_id FROM audit_entries WHERE create_time < %(before)s
        ORDER BY create_time LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
"""


def append_params(entries: Sequence[AuditEntry]) -> dict[str, str]:
    """The parameters of APPEND: `entries` as one JSON array."""
    return {"audit": json_text.dumps([audit_to_record(e) for e in entries])}


def _entry(row: Row) -> AuditEntry:
    return audit_from_record(dict(zip(AUDIT_COLUMNS, row, strict=True)))


class PostgresAudit:
    """Mixed into PostgresStore, which provides `_statement` and `_connection`."""

    async def _statement(self, query: str, params: Mapping[str, Any]) -> list[Row]:
        raise NotImplementedError  # PostgresStore (postgres_connections.Connections)

    async def _transaction(self, run: Callable[[Connection], Awaitable[T]]) -> T:
        raise NotImplementedError  # PostgresStore (postgres_connections.Connections)

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if entries:
            await self._statement(APPEND, append_params(entries))

    async def list_audit(
        self, tenant: str, query: AuditQuery, *, after: AuditPosition | None, limit: int
    ) -> list[AuditEntry]:
        clauses = ["tenant = %(tenant)s"]
        for column in ("job_id", "subject", "action", "result_code"):
            if getattr(query, column):
                clauses.append(f"{column} = %({column})s")
        if query.start_time is not None:
            clauses.append("create_time >= %(start)s")
        if query.end_time is not None:
            clauses.append("create_time < %(end)s")
        if after is not None:
            clauses.append("(create_time, entry_id) < (%(after_time)s, %(after_id)s)")
        rows = await self._statement(
            f"SELECT {_COLUMNS} FROM audit_entries WHERE {' AND '.join(clauses)} "
            "ORDER BY create_time DESC, entry_id DESC LIMIT %(limit)s",
            {
                "tenant": tenant,
                "job_id": query.job_id,
                "subject": query.subject,
                "action": query.action,
                "result_code": query.result_code,
                "start": query.start_time,
                "end": query.end_time,
                "after_time": None if after is None else after.create_time,
                "after_id": None if after is None else after.entry_id,
                "limit": limit,
            },
        )
        return [_entry(row) for row in rows]

    async def prune_audit(self, created_before: datetime, *, limit: int) -> int:
        # SET LOCAL (set_config's `true`): the trigger lets this transaction's DELETE through,
        # and the setting ends with it.
        async def prune(connection: Connection) -> int:
            await connection.execute("SELECT set_config('cpa.audit_prune', 'on', true)")
            cursor = await connection.execute(_PRUNE, {"before": created_before, "limit": limit})
            return cursor.rowcount

        return await self._transaction(prune)
