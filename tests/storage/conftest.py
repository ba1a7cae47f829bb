"""Fixtures of the storage suites: each backend on an empty state per test, PostgreSQL databases,
and a TCP proxy that cuts connections.

The PostgreSQL server is probed once per session by `postgres_server_url` (tests/fixtures/
services.py): under CI=true an unreachable server fails these tests, elsewhere it skips them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from cpa_scheduler.storage import PostgresStore, SqliteStore, Store, migrate
from tests.fixtures.tcp_proxy import TcpProxy

BACKENDS = ["sqlite", "postgres"]
_TABLES = (
    "jobs, job_labels, tasks, events, lam_messages, artifact_content, artifact_chunks, "
    "callback_deliveries, api_keys, audit_entries"
)

OpenStore = Callable[[], Awaitable[Store]]


def database_url(server_url: str, name: str, *, port: int | None = None) -> str:
    """The URL of database `name` on the server of `server_url` (optionally via another port)."""
    params = conninfo.conninfo_to_dict(server_url)
    params["dbname"] = name
    if port is not None:
        params["host"], params["port"] = "127.0.0.1", str(port)
    return conninfo.make_conninfo("", **params)


@pytest.fixture(scope="module")
def migrated_database(postgres_server_url: str) -> Iterator[str]:
    """One migrated database per test module (tests empty it first); dropped afterwards."""
    name = f"cpa_storage_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url(postgres_server_url, name)
        migrate(url)
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(migrated_database: str) -> str:
    """The module's migrated database, emptied for this test."""
    # Synchronous: the parametrised async fixture below asks for it by name, which only works
    # for fixtures that need no event loop.
    with psycopg.connect(migrated_database, autocommit=True) as database:
        database.execute(f"TRUNCATE {_TABLES}")
    return migrated_database


@pytest.fixture(params=BACKENDS)
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens stores of one backend on one (initially empty) state; closes them at teardown.

    More than one open store means more than one replica (PostgreSQL), or a reopening after
    close (both)."""
    opened: list[Store] = []
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")

        async def open_one() -> Store:
            store = await PostgresStore.open(url, min_size=1, max_size=4)
            opened.append(store)
            return store

    else:

        async def open_one() -> Store:
            store = await SqliteStore.open(tmp_path / "cpa.sqlite3")
            opened.append(store)
            return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    """A store of each backend (parametrised: sqlite, postgres) on an empty state."""
    return await open_store()


@pytest.fixture
async def tcp_proxy(postgres_server_url: str) -> AsyncIterator[TcpProxy]:
    """A cuttable proxy in front of the test PostgreSQL server."""
    params = conninfo.conninfo_to_dict(postgres_server_url)
    proxy = TcpProxy(
        target_host=str(params.get("host") or "127.0.0.1"),
        target_port=int(params.get("port") or 5432),
    )
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
