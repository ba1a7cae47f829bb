"""API keys in the embedded store (mixed into SqliteStore)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from cpa_scheduler.security.api_keys import ApiKey

from . import api_key_rows, codec

T = TypeVar("T")

_TIMES = ("create_time", "revoke_time")
_INSERT = (
    f"INSERT INTO api_keys ({', '.join(api_key_rows.COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in api_key_rows.COLUMNS)})"
)


def _from_row(row: sqlite3.Row) -> ApiKey:
    record = dict(row)
    for column in _TIMES:
        record[column] = codec.time_from_us(record[column])
    return api_key_rows.from_row(record)


class SqliteApiKeys:
    """ApiKeyStore on the store's connection; writes go through its group commit."""

    _db: sqlite3.Connection

    if TYPE_CHECKING:  # SqliteStore's

        def _write(self, operation: Callable[[], T]) -> asyncio.Future[T]: ...

    async def create_api_key(self, key: ApiKey) -> None:
        row: dict[str, Any] = api_key_rows.to_row(key)
        for column in _TIMES:
            row[column] = codec.time_to_us(row[column])
        await self._write(lambda: self._db.execute(_INSERT, row))

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        row = self._db.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else _from_row(row)

    async def list_api_keys(
        self,
        tenant: str | None,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[ApiKey]:
        clauses: list[str] = []
        arguments: list[Any] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            arguments.append(tenant)
        if after is not None:
            clauses.append("(create_time, key_id) < (?, ?)")
            arguments += [codec.time_to_us(after[0]), after[1]]
        query = "SELECT * FROM api_keys"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY create_time DESC, key_id DESC"
        if limit is not None:
            query += " LIMIT ?"
            arguments.append(limit)
        return [_from_row(row) for row in self._db.execute(query, arguments).fetchall()]

    async def revoke_api_key(self, tenant: str, key_id: str, when: datetime) -> ApiKey | None:
        def revoke() -> None:
            self._db.execute(
                "UPDATE api_keys SET revoke_time = ? "
                "WHERE tenant = ? AND key_id = ? AND revoke_time IS NULL",
                (codec.time_to_us(when), tenant, key_id),
            )

        await self._write(revoke)
        key = await self.get_api_key(key_id)
        return key if key is not None and key.tenant == tenant else None
