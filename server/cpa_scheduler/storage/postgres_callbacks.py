"""The callback outbox of the PostgreSQL store: the deliverers' claims (any replica; `FOR
UPDATE SKIP LOCKED` and a claim that ends, so a replica killed mid-delivery leaves its rows to
another) and the calls of ListCallbacks/RetryCallbacks. The rows themselves are written with
their job change (postgres_batch.py, sql.INSERT_CALLBACKS)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from cpa_scheduler.domain import AuditCall

from .callback_records import CALLBACK_COLUMNS, callback_from_record, redrive_entry
from .interface import CallbackDelivery, CallbackOutcome, CallbackPosition, CallbackState
from .postgres_audit import APPEND, append_params
from .postgres_connections import Connection, Row

T = TypeVar("T")

_COLUMNS: Final = ", ".join(CALLBACK_COLUMNS)
_RETURNING: Final = ", ".join(f"c.{c}" for c in CALLBACK_COLUMNS)
_PENDING: Final = CallbackState.PENDING.value
_DEAD: Final = CallbackState.DEAD.value

# SKIP LOCKED passes over rows another replica is claiming or recording right now; the claim
# (claimed_until) hides the rows returned until it ends. A job's later messages wait while an
# earlier one is PENDING, so a receiver gets them in order.
_CLAIM: Final = f"""
    WITH due AS MATERIALIZED (
        SELECT d.delivery_id FROM callback_deliveries d
        WHERE d.state = '{_PENDING}' AND d.next_attempt_time <= %(now)s
            AND (d.claimed_until IS NULL OR d.claimed_until <= %(now)s)
            AND NOT EXISTS (SELECT 1 FROM callback_deliveries e WHERE e.job_id = d.job_id
                AND e.state = '{_PENDING}' AND e.sequence < d.sequence)
        ORDER BY d.next_attempt_time, d.delivery_id
        LIMIT %(limit)s
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE callback_deliveries c SET claimed_until = %(claim_until)s, claim_token = %(token)s
    FROM due WHERE c.delivery_id = due.delivery_id
    RETURNING {_RETURNING}
"""
_RECORD: Final = f"""
    UPDATE callback_deliveries SET state = %(state)s, attempts = attempts + 1,
        next_attempt_time = %(next_time)s, last_error = %(error)s, claimed_until = NULL,
        claim_token = '', update_time = %(now)s
    WHERE delivery_id = %(delivery_id)s AND state = '{_PENDING}' AND claim_token = %(token)s
    RETURNING delivery_id
"""
# The partial index of PENDING rows (callbacks_due) answers it without reading the table.
_COUNT_PENDING: Final = f"""
    SELECT count(*) FROM (
        SELECT 1 FROM callback_deliveries WHERE state = '{_PENDING}' LIMIT %(limit)s
    ) pending
"""
_REDRIVE: Final = f"""
    UPDATE callback_deliveries c SET state = '{_PENDING}', attempts = 0,
        next_attempt_time = %(now)s, claimed_until = NULL, claim_token = '', update_time = %(now)s
    WHERE c.delivery_id IN ({{chosen}})
    RETURNING {_RETURNING}
"""


def _delivery(row: Row) -> CallbackDelivery:
    return callback_from_record(dict(zip(CALLBACK_COLUMNS, row, strict=True)))


class PostgresCallbacks:
    """Mixed into PostgresStore, which provides `_statement` (one statement, its own
    transaction)."""

    async def _statement(self, query: str, params: Mapping[str, Any]) -> list[Row]:
        raise NotImplementedError  # PostgresStore (postgres_connections.Connections)

    async def claim_callbacks(
        self, now: datetime, *, limit: int, claim_until: datetime, claim_token: str
    ) -> list[CallbackDelivery]:
        rows = await self._statement(
            _CLAIM, {"now": now, "limit": limit, "claim_until": claim_until, "token": claim_token}
        )
        return sorted(map(_delivery, rows), key=lambda d: (d.next_attempt_time, d.delivery_id))

    async def record_callback_attempt(
        self, delivery_id: str, *, claim_token: str, now: datetime, outcome: CallbackOutcome
    ) -> bool:
        rows = await self._statement(
            _RECORD,
            {
                "state": outcome.state.value,
                "next_time": outcome.next_attempt_time or now,
                "error": outcome.last_error,
                "now": now,
                "delivery_id": delivery_id,
                "token": claim_token,
            },
        )
        return len(rows) == 1

    async def count_pending_callbacks(self, *, limit: int) -> int:
        rows = await self._statement(_COUNT_PENDING, {"limit": limit})
        count: int = rows[0][0]
        return count

    async def list_callbacks(
        self,
        tenant: str,
        *,
        state: CallbackState | None,
        job_id: str,
        after: CallbackPosition | None,
        limit: int,
    ) -> list[CallbackDelivery]:
        clauses = ["tenant = %(tenant)s"]
        if state is not None:
            clauses.append("state = %(state)s")
        if job_id:
            clauses.append("job_id = %(job_id)s")
        if after is not None:
            clauses.append("(create_time, delivery_id) > (%(after_time)s, %(after_id)s)")
        rows = await self._statement(
            f"SELECT {_COLUMNS} FROM callback_deliveries WHERE {' AND '.join(clauses)} "
            "ORDER BY create_time, delivery_id LIMIT %(limit)s",
            {
                "tenant": tenant,
                "state": None if state is None else state.value,
                "job_id": job_id,
                "after_time": None if after is None else after.create_time,
                "after_id": None if after is None else after.delivery_id,
                "limit": limit,
            },
        )
        return [_delivery(row) for row in rows]

    async def get_callbacks(
        self, tenant: str, delivery_ids: Sequence[str]
    ) -> list[CallbackDelivery]:
        rows = await self._statement(
            f"SELECT {_COLUMNS} FROM callback_deliveries "
            "WHERE tenant = %(tenant)s AND delivery_id = ANY(%(ids)s)",
            {"tenant": tenant, "ids": list(delivery_ids)},
        )
        return [_delivery(row) for row in rows]

    async def _transaction(self, run: Callable[[Connection], Awaitable[T]]) -> T:
        raise NotImplementedError  # PostgresStore (postgres_connections.Connections)

    async def redrive_callbacks(
        self,
        tenant: str,
        delivery_ids: Sequence[str] | None,
        *,
        now: datetime,
        limit: int,
        audit: AuditCall | None = None,
    ) -> list[CallbackDelivery]:
        chosen = (
            "SELECT delivery_id FROM callback_deliveries WHERE tenant = %(tenant)s "
            f"AND state = '{_DEAD}' "
        )
        if delivery_ids is None:
            chosen += "ORDER BY create_time, delivery_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
        else:
            chosen += "AND delivery_id = ANY(%(ids)s) FOR UPDATE"
        params = {"tenant": tenant, "now": now, "limit": limit, "ids": list(delivery_ids or [])}

        async def redrive(connection: Connection) -> list[CallbackDelivery]:
            cursor = await connection.execute(_REDRIVE.format(chosen=chosen), params)
            redriven = sorted(
                map(_delivery, await cursor.fetchall()),
                key=lambda d: (d.create_time, d.delivery_id),
            )
            if audit is not None and redriven:
                # In the re-drive's transaction: the entries exist exactly when it does.
                entries = [redrive_entry(audit, d, now) for d in redriven]
                await connection.execute(APPEND, append_params(entries))
            return redriven

        return await self._transaction(redrive)
