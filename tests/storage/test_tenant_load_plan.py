"""The quota's count of a tenant's active jobs (Store.tenant_load) goes through the partial index
jobs_unfinished in both stores, so it walks the tenant's unfinished jobs, not its history: a
tenant with a million finished jobs pays nothing for them at each quota refresh."""

from __future__ import annotations

from pathlib import Path

import psycopg

from cpa_scheduler.storage import postgres_store
from cpa_scheduler.storage.sqlite_schema import connect
from cpa_scheduler.storage.sqlite_store import _TENANT_LOAD_SQL as SQLITE_TENANT_LOAD


def test_sqlite_counts_active_jobs_through_the_index(tmp_path: Path) -> None:
    database = connect(tmp_path / "cpa.sqlite3")
    try:
        plan = database.execute(
            f"EXPLAIN QUERY PLAN {SQLITE_TENANT_LOAD}", ("acme", "acme")
        ).fetchall()
    finally:
        database.close()
    details = " ".join(str(row[-1]) for row in plan)
    assert "jobs_unfinished" in details, details


def test_postgres_counts_active_jobs_through_the_index(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as database:
        database.execute("SET plan_cache_mode = force_generic_plan")
        # An empty table: without this, a scan would win on cost even where the index serves.
        database.execute("SET enable_seqscan = off")
        plan = database.execute(
            f"EXPLAIN {postgres_store._TENANT_LOAD_SQL}", {"tenant": "acme"}, prepare=True
        ).fetchall()
    text = "\n".join(str(row[0]) for row in plan)
    assert "jobs_unfinished" in text, text
