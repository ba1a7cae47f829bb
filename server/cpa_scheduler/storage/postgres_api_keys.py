"""API keys in the PostgreSQL store (mixed into PostgresStore): single statements, no batch."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cpa_scheduler.security.api_keys import ApiKey

from . import api_key_rows

Row = tuple[Any, ...]

_SELECT = f"SELECT {', '.join(api_key_rows.COLUMNS)} FROM api_keys"
_INSERT = (
    f"INSERT INTO api_keys ({', '.join(api_key_rows.COLUMNS)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in api_key_rows.COLUMNS)})"
)


def _from_row(row: Row) -> ApiKey:
    return api_key_rows.from_row(dict(zip(api_key_rows.COLUMNS, row, strict=True)))


class PostgresApiKeys:
    """ApiKeyStore on the store's pool."""

    if TYPE_CHECKING:  # PostgresStore's

        async def _statement(self, query: str, params: Mapping[str, Any]) -> list[Row]: ...

    async def create_api_key(self, key: ApiKey) -> None:
        await self._statement(_INSERT, api_key_rows.to_row(key))

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        rows = await self._statement(_SELECT + " WHERE key_id = %(key_id)s", {"key_id": key_id})
        return _from_row(rows[0]) if rows else None

    async def list_api_keys(
        self,
        tenant: str | None,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[ApiKey]:
        clauses = []
        if tenant is not None:
            clauses.append("tenant = %(tenant)s")
        if after is not None:
            clauses.append("(create_time, key_id) < (%(after_time)s, %(after_id)s)")
        query = _SELECT
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY create_time DESC, key_id DESC"
        if limit is not None:
            query += " LIMIT %(limit)s"
        rows = await self._statement(
            query,
            {
                "tenant": tenant,
                "after_time": None if after is None else after[0],
                "after_id": None if after is None else after[1],
                "limit": limit,
            },
        )
        return [_from_row(row) for row in rows]

    async def revoke_api_key(self, tenant: str, key_id: str, when: datetime) -> ApiKey | None:
        # COALESCE: a second revocation keeps the first time.
        rows = await self._statement(
            "UPDATE api_keys SET revoke_time = COALESCE(revoke_time, %(when)s) "
            f"WHERE tenant = %(tenant)s AND key_id = %(key_id)s RETURNING "
            f"{', '.join(api_key_rows.COLUMNS)}",
            {"tenant": tenant, "key_id": key_id, "when": when},
        )
        return _from_row(rows[0]) if rows else None
