"""What only the PostgreSQL store has to get right: the schema check at start, several replicas
on one database (row locks, lock order, idempotent creation, sweeper claims), and broken
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from cpa_scheduler.domain import AttemptRef, Job, JobFilter, JobState, StaleAttempt, TaskState
from cpa_scheduler.storage import (
    DatabaseUnavailableError,
    InvalidDatabaseUrlError,
    PostgresStore,
    SchemaMismatchError,
    head_revision,
    migrate,
    postgres_batch,
    postgres_group_commit,
    postgres_sql,
    schema_revision,
)
from tests.fixtures.tcp_proxy import TcpProxy

from .conftest import database_url
from .test_api_key_contract import check_tables_added_by_upgrades
from .test_store_contract import TENANT, assigning, at, create, create_one, new_job, todo


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two scheduler replicas would have."""
    first = await PostgresStore.open(postgres_url, min_size=1, max_size=4)
    second = await PostgresStore.open(postgres_url, min_size=1, max_size=4)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


# -- the schema check at start -----------------------------------------------------------------


async def test_an_unmigrated_database_is_refused_with_the_command_to_run(
    postgres_database: str,
) -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        await PostgresStore.open(postgres_database)

    assert f"run `cpa migrate --database-url {postgres_database}`" in str(raised.value)
    assert schema_revision(postgres_database) is None


async def test_a_newer_schema_is_refused_as_the_server_being_older(postgres_database: str) -> None:
    migrate(postgres_database)
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_future'")

    with pytest.raises(SchemaMismatchError) as raised:
        await PostgresStore.open(postgres_database)

    assert "revision 9999_future" in str(raised.value)
    assert "the server is older than the schema" in str(raised.value)
    with pytest.raises(SchemaMismatchError, match="newer than this cpa knows"):
        migrate(postgres_database)


async def test_an_older_schema_is_refused_with_the_command_to_run_then_upgraded(
    postgres_database: str,
) -> None:
    migrate(postgres_database)
    # Back to revision 0001 as it really was, as if the database predated 0002 to 0011.
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute("DROP TABLE memory_records, memory_tenants")
        connection.execute("DROP TABLE audit_entries")
        connection.execute("DROP FUNCTION audit_entries_append_only()")
        connection.execute("DROP TABLE api_keys, callback_deliveries")
        connection.execute("DROP TABLE artifact_chunks, artifact_content")
        connection.execute("ALTER TABLE jobs DROP COLUMN cancel_message")
        connection.execute("DROP INDEX jobs_end")
        connection.execute("DROP INDEX jobs_request_age")
        connection.execute("DROP INDEX tasks_start_by")
        connection.execute("ALTER TABLE tasks DROP COLUMN timeout_at, DROP COLUMN start_by")
        connection.execute("DROP INDEX jobs_deadline")
        connection.execute("ALTER TABLE jobs DROP COLUMN deadline, DROP COLUMN cancel_reason")
        connection.execute("UPDATE alembic_version SET version_num = '0001'")

    with pytest.raises(SchemaMismatchError) as raised:
        await PostgresStore.open(postgres_database)

    message = str(raised.value)
    assert f"revision 0001, older than this server's {head_revision()}" in message
    assert f"run `cpa migrate --database-url {postgres_database}`" in message
    assert migrate(postgres_database) == head_revision()
    store = await PostgresStore.open(postgres_database)
    try:
        assert await store.overdue_jobs(datetime.now(UTC), limit=1) == []
        await check_tables_added_by_upgrades(store)
    finally:
        await store.close()


async def test_an_unreachable_server_is_reported_as_unavailable() -> None:
    with pytest.raises(
        DatabaseUnavailableError, match=r"cannot reach PostgreSQL at .*127\.0\.0\.1:1"
    ):
        await PostgresStore.open("postgresql://postgres@127.0.0.1:1/cpa")


@pytest.mark.parametrize("url", ["", "mysql://root@127.0.0.1/cpa", "no such thing"])
async def test_a_url_that_is_not_postgresql_is_refused(url: str) -> None:
    with pytest.raises(InvalidDatabaseUrlError):
        await PostgresStore.open(url)


def test_migrations_running_at_once_take_turns(postgres_database: str) -> None:
    # Separate processes, as two replicas' deploy jobs would be: the advisory lock orders them.
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "cpa_cli", "migrate", "--database-url", postgres_database],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [run.communicate(timeout=50) for run in runs]

    assert [run.returncode for run in runs] == [0, 0, 0], outcomes
    # In this process too, threads included; and again when already at head.
    threads = [threading.Thread(target=migrate, args=(postgres_database,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert migrate(postgres_database) == head_revision()
    assert schema_revision(postgres_database) == head_revision()


def test_the_sqlalchemy_spelling_of_the_url_works(postgres_database: str) -> None:
    url = postgres_database.replace("postgresql://", "postgresql+psycopg://", 1)

    assert migrate(url) == head_revision()


# -- replicas -----------------------------------------------------------------------------------


async def test_replicas_assigning_one_task_at_once_start_it_exactly_once(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = replicas
    await create(first, new_job("job-1"))

    calls = [
        (first if n % 2 else second).update_job(TENANT, "job-1", assigning("a", agent_id=f"a{n}"))
        for n in range(50)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)

    started = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(started) == 1
    assert all(isinstance(error, StaleAttempt) for error in refused), refused
    job = await second.get_job(TENANT, "job-1")
    assert (job.tasks["a"].state, job.tasks["a"].attempt) == (TaskState.RUNNING, 1)
    assert len(job.tasks["a"].attempts) == 1
    events = await first.list_events(TENANT, "job-1", after_sequence=0, limit=100)
    assert [e.sequence for e in events] == list(range(1, job.last_event_sequence + 1))


async def test_replicas_changing_the_same_jobs_in_any_order_neither_deadlock_nor_lose_changes(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    jobs = [f"job-{n:02d}" for n in range(12)]
    for job_id in jobs:
        await create(replicas[0], new_job(job_id))
        await replicas[0].update_job(TENANT, job_id, assigning("a"))
    rng = random.Random(7)
    rounds = 5

    async def burst(store: PostgresStore) -> None:
        for _ in range(rounds):
            order = jobs * 2
            rng.shuffle(order)  # each batch touches the jobs in another order
            await asyncio.gather(
                *(
                    store.update_job(
                        TENANT,
                        job_id,
                        lambda j: j.progress("a", attempt=1, percent=None, message="", now=at(1)),
                    )
                    for job_id in order
                )
            )

    await asyncio.gather(burst(replicas[0]), burst(replicas[1]))

    for job_id in jobs:
        events = await replicas[1].list_events(TENANT, job_id, after_sequence=0, limit=1000)
        # creation (2) + assignment (2) + every progress report of both replicas
        assert len(events) == 4 + 2 * rounds * 2
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_replicas_creating_one_request_at_once_make_one_job(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = replicas

    results = await asyncio.gather(
        *(
            create_one(store, new_job(f"job-{n}", request_id="req-1"))
            for n, store in enumerate([first, second] * 5)
        )
    )

    created = [job.job_id for job, changes in results if changes is not None]
    assert len(created) == 1
    assert {job.job_id for job, _ in results} == set(created)


def _releases_request_ids(postgres_url: str, store: PostgresStore) -> list[int]:
    """Makes the store's owner lookups find nobody: the first one releases every request id
    (as the retention sweep of another replica would, on a connection of its own and
    committed) just before the store reads the owner. Returns the lookups counted so far."""
    lookups: list[int] = []

    async def release() -> None:
        lookups.append(len(lookups))
        if len(lookups) == 1:
            async with await psycopg.AsyncConnection.connect(postgres_url) as sweeper:
                await sweeper.execute(
                    "UPDATE jobs SET request_id = '', request_fingerprint = '' "
                    "WHERE request_id <> ''"
                )

    store.before_owner_lookup = release
    return lookups


async def test_a_request_id_released_before_its_owner_is_read_creates_the_job(
    replicas: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    first, second = replicas
    owner = await create(first, new_job("job-1", request_id="req-1"))
    lookups = _releases_request_ids(postgres_url, second)

    # The repeat finds req-1 taken, then its owner gone (after the commit): it is created.
    job, changes = await create_one(second, new_job("job-2", request_id="req-1"))

    assert lookups == [0]
    assert changes is not None
    assert (job.job_id, job.request_id) == ("job-2", "req-1")
    assert (await second.get_job(TENANT, "job-2")).request_id == "req-1"
    assert (await second.get_job(TENANT, owner.job_id)).request_id == ""


async def test_a_request_id_released_inside_a_batch_creation_creates_the_job(
    replicas: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    first, second = replicas
    await create(first, new_job("job-1", request_id="req-1"))
    lookups = _releases_request_ids(postgres_url, second)

    # Several jobs with request ids are checked inside their transaction: req-1 is found taken,
    # its owner is gone when read there; job-3 is stored, job-2 created again after the commit.
    results = await second.create_jobs(
        [new_job("job-2", request_id="req-1"), new_job("job-3", request_id="req-2")]
    )

    assert len(lookups) == 2  # in the transaction, then after the commit
    assert [(job.job_id, changes is not None) for job, changes in results] == [
        ("job-2", True),
        ("job-3", True),
    ]
    assert (await second.get_job(TENANT, "job-2")).request_id == "req-1"


async def test_changes_of_existing_jobs_are_written_before_new_jobs_waiting_longer(
    postgres_url: str,
) -> None:
    """Under a flood of submissions, a result does not queue behind them: the next batch takes
    the pending changes first, then fills up with new jobs."""
    store = await PostgresStore.open(postgres_url, max_batches_in_flight=1, max_batch_ops=2)
    try:
        await create(store, new_job("job-held"))
        await create(store, new_job("job-1"))
        ended: list[str] = []

        def track(name: str, write: Awaitable[object]) -> asyncio.Future[object]:
            future = asyncio.ensure_future(write)
            future.add_done_callback(lambda _: ended.append(name))
            return future

        with psycopg.connect(postgres_url, autocommit=True) as blocker:
            # The first batch waits for this row lock; the writes below pile up meanwhile.
            blocker.execute("BEGIN")
            blocker.execute("SELECT 1 FROM jobs WHERE job_id = 'job-held' FOR UPDATE")
            writes = [track("held", store.update_job(TENANT, "job-held", assigning("a")))]
            await _batch_waiting_for_a_lock(postgres_url)
            writes += [track(f"new-{n}", create(store, new_job(f"job-new-{n}"))) for n in range(4)]
            writes.append(track("change", store.update_job(TENANT, "job-1", assigning("a"))))
            await asyncio.sleep(0)  # every write is submitted before the lock goes
            blocker.execute("COMMIT")
            await asyncio.gather(*writes)

        assert ended.index("change") < ended.index("new-1")
    finally:
        await store.close()


async def _batch_waiting_for_a_lock(postgres_url: str) -> None:
    """Until some session of the database waits for a row lock."""
    with psycopg.connect(postgres_url, autocommit=True) as watcher:
        for _ in range(500):
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("no batch waited for the lock")


async def test_replicas_creating_overlapping_groups_at_once_make_each_job_once(
    replicas: tuple[PostgresStore, PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    """Groups of the same requests in opposite orders, on two replicas at once: creations take
    request ids in one order everywhere, so neither waits for the other in a cycle (PostgreSQL
    would end one with a deadlock error, and its batch would run again write by write) and
    each request makes one job."""
    caplog.set_level(logging.INFO, logger=postgres_group_commit.__name__)
    requests = [f"req-{n:03}" for n in range(300)]

    def group(replica: int, order: list[str]) -> list[Job]:
        return [new_job(f"job-{replica}-{r}", request_id=r) for r in order]

    results = await asyncio.gather(
        replicas[0].create_jobs(group(0, requests)),
        replicas[1].create_jobs(group(1, requests[::-1])),
    )

    owners = {r: job.job_id for r, (job, _) in zip(requests, results[0], strict=True)}
    assert {r: job.job_id for r, (job, _) in zip(requests[::-1], results[1], strict=True)} == owners
    created = [job.job_id for result in results for job, changes in result if changes is not None]
    assert sorted(created) == sorted(owners.values())
    assert "refused" not in caplog.text


async def test_sweepers_of_two_replicas_split_the_expired_attempts(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = replicas
    for n in range(10):
        await create(first, new_job(f"job-{n}"))
        await first.update_job(TENANT, f"job-{n}", assigning("a", lease_until=at(n)))

    taken = await asyncio.gather(
        first.expired_attempts(at(60), limit=6), second.expired_attempts(at(60), limit=6)
    )

    refs = [ref for batch in taken for _, ref in batch]
    assert len(refs) == len(set(refs)) == 10
    # A sweeper that died before handling its share: after the claim ends another takes it.
    assert await second.expired_attempts(at(60) + timedelta(seconds=29), limit=20) == []
    again = await second.expired_attempts(at(60) + timedelta(seconds=31), limit=20)
    assert len(again) == 10


async def test_a_new_attempt_is_not_hidden_by_the_claim_on_the_old_one(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    store = replicas[0]
    await create(store, new_job("job-1"))
    await store.update_job(TENANT, "job-1", assigning("a", lease_until=at(1)))
    assert await store.expired_attempts(at(2), limit=10) == [(TENANT, AttemptRef("job-1", "a", 1))]
    await store.update_job(
        TENANT, "job-1", lambda j: j.lose("a", attempt=1, max_redeliveries=3, now=at(2))
    )
    await store.update_job(TENANT, "job-1", assigning("a", 2, lease_until=at(3)))

    assert await store.expired_attempts(at(4), limit=10) == [(TENANT, AttemptRef("job-1", "a", 2))]


# -- costs that must not grow with the tables ---------------------------------------------------


@pytest.mark.parametrize("request_id", ["", "req-new"])
async def test_creating_a_job_reads_none_of_the_jobs_already_stored(
    postgres_url: str, request_id: str
) -> None:
    """A prepared creation (as psycopg prepares it after a few uses, with PostgreSQL's generic
    plan) once looked a request_id's owner up among every job of the tenant, at each creation."""
    store = await PostgresStore.open(postgres_url, min_size=1, max_size=2)
    try:
        for start in range(0, 300, 50):
            await asyncio.gather(
                *(create(store, new_job(f"old-{n}")) for n in range(start, start + 50))
            )
    finally:
        await store.close()
    job = new_job("new-1", request_id=request_id)
    records = postgres_batch.CreationRecords.of(job, job.take_changes())

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as connection:
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        async with connection.transaction():
            inserted = await connection.execute(
                postgres_sql.CREATE_JOBS,
                postgres_batch.CreationRecords.params([records]),
                prepare=True,
            )
            assert await inserted.fetchall() == [("new-1",)]
            read = await connection.execute(
                "SELECT pg_stat_get_xact_tuples_returned('jobs'::regclass) "
                "+ pg_stat_get_xact_tuples_fetched('jobs'::regclass)"
            )
            assert await read.fetchone() == (0,)


# -- broken connections -------------------------------------------------------------------------


async def test_a_cut_connection_fails_the_call_in_flight_and_the_store_recovers(
    postgres_url: str, postgres_server_url: str, tcp_proxy: TcpProxy
) -> None:
    name = psycopg.conninfo.conninfo_to_dict(postgres_url)["dbname"]
    url = database_url(postgres_server_url, str(name), port=tcp_proxy.port)
    store = await PostgresStore.open(url, min_size=2, max_size=4)
    try:
        await create(store, new_job("job-1"))
        # Another session holds the job's row, so the store's update waits in the database.
        async with await psycopg.AsyncConnection.connect(postgres_url) as holder:
            await holder.execute("SELECT 1 FROM jobs WHERE job_id = 'job-1' FOR UPDATE")
            in_flight = asyncio.ensure_future(store.update_job(TENANT, "job-1", assigning("a")))
            await _until_waiting_on_a_lock(postgres_url)

            tcp_proxy.cut()

            with pytest.raises(DatabaseUnavailableError, match="nothing was stored"):
                await asyncio.wait_for(in_flight, timeout=10)
            await holder.rollback()

        job, _, _ = await store.update_job(TENANT, "job-1", assigning("a"))
        assert job.tasks["a"].state is TaskState.RUNNING
        assert (await store.get_job(TENANT, "job-1")).state is JobState.RUNNING
    finally:
        await store.close()


async def test_connections_cut_while_idle_fail_at_most_the_next_call(
    postgres_url: str, postgres_server_url: str, tcp_proxy: TcpProxy
) -> None:
    name = psycopg.conninfo.conninfo_to_dict(postgres_url)["dbname"]
    url = database_url(postgres_server_url, str(name), port=tcp_proxy.port)
    store = await PostgresStore.open(url, min_size=3, max_size=3)
    try:
        await create(store, new_job("job-1"))
        tcp_proxy.cut()

        # The pool may hand out a connection the cut broke: that call fails...
        with contextlib.suppress(DatabaseUnavailableError):
            await store.update_job(TENANT, "job-1", assigning("a"))
        # ...and every later one gets a working connection: the store checked the idle ones.
        results = await asyncio.gather(
            *(store.get_job(TENANT, "job-1") for _ in range(5)),
            store.list_jobs(TENANT, JobFilter(), after=None, limit=10),
        )
        assert len(results) == 6
        job, _, _ = await store.update_job(TENANT, "job-1", assigning("a", agent_id="again"))
        assert job.tasks["a"].state is TaskState.RUNNING
    finally:
        await store.close()


async def test_sessions_killed_by_the_server_are_replaced(
    postgres_url: str, replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    store = replicas[0]
    await create(store, new_job("job-1"))
    name = psycopg.conninfo.conninfo_to_dict(postgres_url)["dbname"]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        # What a server restart does to every session.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )

    with contextlib.suppress(DatabaseUnavailableError):
        await store.get_job(TENANT, "job-1")  # may draw a killed session
    job, _, _ = await store.update_job(TENANT, "job-1", assigning("a"))
    assert job.tasks["a"].state is TaskState.RUNNING


async def _until_waiting_on_a_lock(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as watcher:
        for _ in range(200):
            cursor = await watcher.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the update never waited for the row lock")


# -- aggregates kept between transitions ---------------------------------------------------------


def _succeeding(task_id: str) -> Any:
    return lambda job: job.succeed(task_id, attempt=1, outputs={"n": task_id}, now=at(1))


async def test_a_transition_reuses_the_aggregate_it_committed_without_reading_task_rows(
    postgres_url: str,
) -> None:
    store = await PostgresStore.open(postgres_url, min_size=1, max_size=2)
    try:
        await create(store, new_job("job-1", todo("a"), todo("b", "a")))
        await store.update_job(TENANT, "job-1", assigning("a"))
        # Behind the store's back, without a new event (the version): a transition that read
        # the task rows again would see it.
        with psycopg.connect(postgres_url, autocommit=True) as database:
            database.execute(
                "UPDATE tasks SET agent_id = 'edited' WHERE job_id = 'job-1' AND task_id = 'a'"
            )

        job, _, _ = await store.update_job(TENANT, "job-1", _succeeding("a"))

        assert job.tasks["a"].agent_id == "agent-1"
        assert job.tasks["b"].state is TaskState.QUEUED
    finally:
        await store.close()


async def test_a_change_by_another_replica_is_seen_through_the_version(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = replicas
    await create(first, new_job("job-1", todo("a"), todo("b", "a")))
    await first.update_job(TENANT, "job-1", assigning("a"))  # kept by the first replica

    await second.update_job(TENANT, "job-1", _succeeding("a"))  # b is now QUEUED
    job, _, _ = await first.update_job(TENANT, "job-1", assigning("b"))

    assert job.tasks["a"].state is TaskState.SUCCEEDED
    assert job.tasks["a"].outputs == {"n": "a"}
    assert job.tasks["b"].state is TaskState.RUNNING
    assert job == await second.get_job(TENANT, "job-1")


async def test_a_kept_aggregate_half_changed_by_a_failed_write_is_not_used_again(
    replicas: tuple[PostgresStore, PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=postgres_group_commit.__name__)
    first, _ = replicas
    await create(first, new_job("job-1", todo("a"), todo("b")))
    await first.update_job(TENANT, "job-1", assigning("a"))  # kept

    def cancel_then_refuse(job: Job) -> None:
        job.cancel(now=at(1))
        raise StaleAttempt("refused after changing the job")

    results = await asyncio.gather(
        first.update_job(TENANT, "job-1", cancel_then_refuse),
        first.update_job(TENANT, "job-1", assigning("b")),  # needs the job again
        return_exceptions=True,
    )

    assert isinstance(results[0], StaleAttempt)
    assert not isinstance(results[1], BaseException), results[1]
    # One batch: the second write needed the job that the first left half-changed, whose task
    # rows were not read, so the batch ran again write by write.
    assert "a batch of 2 writes was refused, running each alone" in caplog.text
    for job in (results[1][0], await first.get_job(TENANT, "job-1")):
        assert not job.cancel_requested
        assert job.tasks["b"].state is TaskState.RUNNING
    job, _, _ = await first.update_job(TENANT, "job-1", _succeeding("b"))
    assert not job.cancel_requested
