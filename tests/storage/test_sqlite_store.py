"""SQLite-only behaviour: files written by an older server are upgraded at open; newer refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cpa_scheduler.storage import SqliteStore
from cpa_scheduler.storage.sqlite_store import SCHEMA_VERSION

from .test_store_contract import TENANT, at, create, new_job


async def test_a_version_1_file_is_upgraded_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "cpa.sqlite3"
    store = await SqliteStore.open(path)
    await create(store, new_job("job-1"))
    await store.close()
    # Turn the file back into what version 1 wrote (no deadline or cancel_reason columns).
    raw = sqlite3.connect(path)
    raw.executescript(
        "DROP INDEX jobs_deadline; ALTER TABLE jobs DROP COLUMN deadline; "
        "ALTER TABLE jobs DROP COLUMN cancel_reason; PRAGMA user_version=1;"
    )
    raw.close()

    upgraded = await SqliteStore.open(path)
    try:
        assert (await upgraded.get_job(TENANT, "job-1")).job_id == "job-1"
        await create(upgraded, new_job("job-2"))
        assert await upgraded.overdue_jobs(at(3601), limit=10) == [(TENANT, "job-2")]
    finally:
        await upgraded.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()


async def test_a_file_from_a_newer_server_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cpa.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer than this server's"):
        await SqliteStore.open(path)
