"""The lookup of a request id's job goes through the partial unique index jobs_request_id in
both stores. A bound parameter does not prove the index's predicate (`request_id <> ''`), so a
query without it in words scanned every job: each submission with a request id (the SDKs send
one with every schedule) cost more as jobs accumulated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from cpa_scheduler.storage import postgres_sql
from cpa_scheduler.storage.sqlite_schema import connect
from cpa_scheduler.storage.sqlite_store import REQUEST_OWNER_SQL


def test_sqlite_finds_a_request_ids_job_through_the_index(tmp_path: Path) -> None:
    database = connect(tmp_path / "cpa.sqlite3")
    try:
        plan = database.execute(
            f"EXPLAIN QUERY PLAN {REQUEST_OWNER_SQL}", ("acme", "request-1")
        ).fetchall()
    finally:
        database.close()
    details = " ".join(str(row[-1]) for row in plan)
    assert "USING INDEX jobs_request_id" in details, details


def test_postgres_generic_plans_find_request_ids_jobs_through_the_index(
    postgres_url: str,
) -> None:
    # The driver prepares statements it runs often: their generic plan must use the index too.
    queries: dict[str, tuple[str, dict[str, Any]]] = {
        "owner": (postgres_sql.REQUEST_OWNER, {"tenant": "acme", "request_id": "r1"}),
        "owners": (
            postgres_sql.REQUEST_OWNERS,
            {"tenants": ["acme", "acme"], "request_ids": ["r1", "r2"]},
        ),
    }
    with psycopg.connect(postgres_url, autocommit=True) as database:
        database.execute("SET plan_cache_mode = force_generic_plan")
        # An empty table: without this, a scan would win on cost even where the index serves.
        database.execute("SET enable_seqscan = off")
        for name, (query, params) in queries.items():
            plan = database.execute(f"EXPLAIN {query}", params, prepare=True).fetchall()
            text = "\n".join(str(row[0]) for row in plan)
            assert "jobs_request_id" in text, f"{name}:\n{text}"
            assert "Seq Scan on jobs" not in text, f"{name}:\n{text}"
