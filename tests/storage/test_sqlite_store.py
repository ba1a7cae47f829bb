"""SQLite-only behaviour: files written by an older server are upgraded at open, newer ones refused;
closing waits for the checkpoint thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from cpa_scheduler.storage import SqliteStore, sqlite_store
from cpa_scheduler.storage.sqlite_schema import SCHEMA_VERSION

from .test_api_key_contract import check_tables_added_by_upgrades
from .test_store_contract import TENANT, at, create, new_job

# What each version added, undone: turns a file back into what an older server wrote.
_UNDO = {
    7: "DROP TABLE audit_entries; DROP TABLE audit_prune_gate;",
    6: "DROP TABLE api_keys;",
    5: "DROP TABLE callback_deliveries;",
    4: "ALTER TABLE jobs DROP COLUMN cancel_message;",
    3: (
        "DROP INDEX tasks_start_by; DROP INDEX jobs_request_age; "
        "ALTER TABLE tasks DROP COLUMN start_by; ALTER TABLE tasks DROP COLUMN timeout_at;"
    ),
    2: (
        "DROP INDEX jobs_deadline; ALTER TABLE jobs DROP COLUMN deadline; "
        "ALTER TABLE jobs DROP COLUMN cancel_reason;"
    ),
}


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
async def test_an_older_file_is_upgraded_and_keeps_its_jobs(tmp_path: Path, version: int) -> None:
    path = tmp_path / "cpa.sqlite3"
    store = await SqliteStore.open(path)
    await create(store, new_job("job-1"))
    await store.close()
    raw = sqlite3.connect(path)
    for undone in range(SCHEMA_VERSION, version, -1):
        raw.executescript(_UNDO[undone])
    raw.execute(f"PRAGMA user_version={version}")
    raw.close()

    upgraded = await SqliteStore.open(path)
    try:
        assert (await upgraded.get_job(TENANT, "job-1")).job_id == "job-1"
        await create(upgraded, new_job("job-2"))
        # The new columns work for new jobs (old rows have them empty, or kept).
        assert (TENANT, "job-2") in await upgraded.overdue_jobs(at(3601), limit=10)
        assert (TENANT, "job-2", "a") in await upgraded.unstarted_tasks(at(121), limit=10)
        await upgraded.update_job(TENANT, "job-1", lambda j: j.cancel(now=at(1), reason="why"))
        await check_tables_added_by_upgrades(upgraded)
    finally:
        await upgraded.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    row = check.execute("SELECT cancel_message FROM jobs WHERE job_id = 'job-1'").fetchone()
    assert row == ("why",)
    check.close()


async def test_a_file_from_a_newer_server_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cpa.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer than this server's"):
        await SqliteStore.open(path)


async def test_close_waits_for_a_checkpoint_running_on_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the checkpoint connection under its thread crashed the process (a segfault)."""
    started, release = threading.Event(), threading.Event()

    def slow_checkpoint(connection: sqlite3.Connection) -> None:
        started.set()
        release.wait(timeout=10)
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL_S", 0.0)
    monkeypatch.setattr(sqlite_store, "_checkpoint", slow_checkpoint)
    store = await SqliteStore.open(tmp_path / "cpa.sqlite3")
    await create(store, new_job("job-1"))
    await asyncio.to_thread(started.wait, 10)

    closing = asyncio.create_task(store.close())
    done, _ = await asyncio.wait({closing}, timeout=0.2)
    assert not done  # the checkpoint still runs: close waits for it
    release.set()
    await closing

    reopened = await SqliteStore.open(tmp_path / "cpa.sqlite3")
    assert (await reopened.get_job(TENANT, "job-1")).job_id == "job-1"
    await reopened.close()
