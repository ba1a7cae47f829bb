"""The callback outbox of the embedded store: rows written with their job change, and the calls
of the deliverer and of ListCallbacks/RetryCallbacks (one process writes the file, so a claim
needs no locking beyond the store's single writer)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from cpa_scheduler.domain import AuditCall, OutboundCallback

from . import codec
from .callback_records import (
    CALLBACK_COLUMNS,
    CALLBACK_TIME_COLUMNS,
    callback_from_record,
    callback_to_record,
    redrive_entry,
)
from .interface import CallbackDelivery, CallbackOutcome, CallbackPosition, CallbackState
from .sqlite_audit import insert_audit

T = TypeVar("T")

_INSERT: Final = (
    f"INSERT OR IGNORE INTO callback_deliveries ({', '.join(CALLBACK_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in CALLBACK_COLUMNS)})"
)
_PENDING: Final = CallbackState.PENDING.value
_DEAD: Final = CallbackState.DEAD.value


def insert_callbacks(
    db: sqlite3.Connection, tenant: str, job_id: str, callbacks: Sequence[OutboundCallback]
) -> None:
    """Inside the transaction of the change that made them (SqliteStore's writes)."""
    rows = []
    for callback in callbacks:
        row = callback_to_record(tenant, job_id, callback)
        for column in CALLBACK_TIME_COLUMNS:
            row[column] = codec.time_to_us(row[column])
        rows.append(row)
    db.executemany(_INSERT, rows)


def _delivery(row: sqlite3.Row) -> CallbackDelivery:
    record = dict(row)
    for column in CALLBACK_TIME_COLUMNS:
        record[column] = codec.time_from_us(record[column])
    return callback_from_record(record)


class SqliteCallbacks:
    """Mixed into SqliteStore, which provides the connection and the group-committed writes."""

    _db: sqlite3.Connection

    def _write(self, operation: Callable[[], T]) -> asyncio.Future[T]:
        raise NotImplementedError  # SqliteStore._write

    async def claim_callbacks(
        self, now: datetime, *, limit: int, claim_until: datetime, claim_token: str
    ) -> list[CallbackDelivery]:
        return await self._write(lambda: self._claim(now, limit, claim_until, claim_token))

    def _claim(
        self, now: datetime, limit: int, claim_until: datetime, claim_token: str
    ) -> list[CallbackDelivery]:
        now_us = codec.time_to_us(now)
        rows = self._db.execute(
            "UPDATE callback_deliveries SET claimed_until = ?, claim_token = ? "
            "WHERE delivery_id IN (SELECT c.delivery_id FROM callback_deliveries c "
            "WHERE c.state = ? AND c.next_attempt_time <= ? "
            "AND (c.claimed_until IS NULL OR c.claimed_until <= ?) "
            "AND NOT EXISTS (SELECT 1 FROM callback_deliveries e WHERE e.job_id = c.job_id "
            "AND e.state = ? AND e.sequence < c.sequence) "
            "ORDER BY c.next_attempt_time, c.delivery_id LIMIT ?) RETURNING *",
            (codec.time_to_us(claim_until), claim_token, _PENDING, now_us, now_us, _PENDING, limit),
        ).fetchall()
        return sorted(map(_delivery, rows), key=lambda d: (d.next_attempt_time, d.delivery_id))

    async def record_callback_attempt(
        self, delivery_id: str, *, claim_token: str, now: datetime, outcome: CallbackOutcome
    ) -> bool:
        return await self._write(lambda: self._record(delivery_id, claim_token, now, outcome))

    def _record(
        self, delivery_id: str, claim_token: str, now: datetime, outcome: CallbackOutcome
    ) -> bool:
        next_time = outcome.next_attempt_time or now
        cursor = self._db.execute(
            "UPDATE callback_deliveries SET state = ?, attempts = attempts + 1, "
            "next_attempt_time = ?, last_error = ?, claimed_until = NULL, claim_token = '', "
            "update_time = ? WHERE delivery_id = ? AND state = ? AND claim_token = ?",
            (
                outcome.state.value,
                codec.time_to_us(next_time),
                outcome.last_error,
                codec.time_to_us(now),
                delivery_id,
                _PENDING,
                claim_token,
            ),
        )
        return cursor.rowcount == 1

    async def count_pending_callbacks(self, *, limit: int) -> int:
        # The partial index of PENDING rows (callbacks_due) answers it without reading the table
        # (the state written out: SQLite matches a partial index's condition only to a literal).
        (count,) = self._db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM callback_deliveries "
            f"WHERE state = '{_PENDING}' LIMIT ?)",
            (limit,),
        ).fetchone()
        return int(count)

    async def list_callbacks(
        self,
        tenant: str,
        *,
        state: CallbackState | None,
        job_id: str,
        after: CallbackPosition | None,
        limit: int,
    ) -> list[CallbackDelivery]:
        clauses = ["tenant = ?"]
        arguments: list[Any] = [tenant]
        if state is not None:
            clauses.append("state = ?")
            arguments.append(state.value)
        if job_id:
            clauses.append("job_id = ?")
            arguments.append(job_id)
        if after is not None:
            clauses.append("(create_time, delivery_id) > (?, ?)")
            arguments += [codec.time_to_us(after.create_time), after.delivery_id]
        rows = self._db.execute(
            f"SELECT * FROM callback_deliveries WHERE {' AND '.join(clauses)} "
            "ORDER BY create_time, delivery_id LIMIT ?",
            (*arguments, limit),
        ).fetchall()
        return [_delivery(row) for row in rows]

    async def get_callbacks(
        self, tenant: str, delivery_ids: Sequence[str]
    ) -> list[CallbackDelivery]:
        rows = self._db.execute(
            "SELECT * FROM callback_deliveries WHERE tenant = ? AND delivery_id IN "
            f"({', '.join('?' for _ in delivery_ids)})",
            (tenant, *delivery_ids),
        ).fetchall()
        return [_delivery(row) for row in rows]

    async def redrive_callbacks(
        self,
        tenant: str,
        delivery_ids: Sequence[str] | None,
        *,
        now: datetime,
        limit: int,
        audit: AuditCall | None = None,
    ) -> list[CallbackDelivery]:
        return await self._write(lambda: self._redrive(tenant, delivery_ids, now, limit, audit))

    def _redrive(
        self,
        tenant: str,
        delivery_ids: Sequence[str] | None,
        now: datetime,
        limit: int,
        audit: AuditCall | None,
    ) -> list[CallbackDelivery]:
        if delivery_ids is None:
            chosen = "SELECT delivery_id FROM callback_deliveries WHERE tenant = ? AND state = ? "
            chosen += "ORDER BY create_time, delivery_id LIMIT ?"
            arguments: tuple[Any, ...] = (tenant, _DEAD, limit)
        else:
            chosen = (
                "SELECT delivery_id FROM callback_deliveries WHERE tenant = ? AND state = ? "
                f"AND delivery_id IN ({', '.join('?' for _ in delivery_ids)})"
            )
            arguments = (tenant, _DEAD, *delivery_ids)
        now_us = codec.time_to_us(now)
        rows = self._db.execute(
            "UPDATE callback_deliveries SET state = ?, attempts = 0, next_attempt_time = ?, "
            "claimed_until = NULL, claim_token = '', update_time = ? "
            f"WHERE delivery_id IN ({chosen}) RETURNING *",
            (_PENDING, now_us, now_us, *arguments),
        ).fetchall()
        redriven = sorted(map(_delivery, rows), key=lambda d: (d.create_time, d.delivery_id))
        if audit is not None:
            insert_audit(self._db, [redrive_entry(audit, d, now) for d in redriven])
        return redriven
