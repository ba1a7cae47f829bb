"""Scheduler CPU for the transitions of one very large job, through the embedded store.

Two shapes of N tasks: a chain (each task depends on the one before) and a fan-out/fan-in (a root,
N-2 parallel tasks, a sink depending on all of them). Every task is started and finished by real
transitions committed through SqliteStore.update_job (the orchestrator's path without sockets and
agents), on a throwaway file. Prints the CPU of this process (the event loop and SQLite: the
scheduler's work) for the whole job and per transition.

    PYTHONPATH=server .venv/bin/python bench/bench_large_graph.py [--tasks 10000] [--limit N]
    ... --postgres postgresql://postgres@127.0.0.1:5432/postgres   # the distributed store too

--postgres also runs both shapes through PostgresStore on a throwaway database made next to the
given one (and dropped after); its CPU is this process's only, not PostgreSQL's.

--limit stops after N tasks have finished (to measure a slow build without waiting for the end);
the per-transition figure is then over those transitions only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # the throwaway database: tests/fixtures

from cpa_scheduler.domain import Job, JobOptions, JobSource, SourceKind, TaskGraph, ToDo  # noqa: E402
from cpa_scheduler.storage import PostgresStore, SqliteStore, Store, migrate  # noqa: E402
from tests.fixtures.cluster import create_database, drop_database  # noqa: E402

TENANT = "bench"


def chain(size: int) -> list[ToDo]:
    return [
        ToDo(id=f"t{i}", action="click", depends_on=(f"t{i - 1}",) if i else ())
        for i in range(size)
    ]


def fan(size: int) -> list[ToDo]:
    middle = [f"w{i}" for i in range(size - 2)]
    return [
        ToDo(id="root", action="click"),
        *(ToDo(id=task_id, action="click", depends_on=("root",)) for task_id in middle),
        ToDo(id="sink", action="click", depends_on=tuple(middle)),
    ]


def cpu_s() -> tuple[float, float]:
    """(user, system) CPU of this process so far, every thread (SQLite's checkpointer too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def domain_only(shape: str, todos: list[ToDo], *, limit: int, parallelism: int) -> None:
    """The same transitions on the aggregate alone: the domain's share, without SQLite."""
    now = datetime.now(UTC)
    job = Job.create(
        job_id=f"{shape}-job",
        tenant=TENANT,
        graph=TaskGraph.from_todos(todos),
        source=JobSource(kind=SourceKind.TODOS),
        options=JobOptions(max_parallelism=parallelism),
        now=now,
    )
    queued = list(job.take_changes().queued)
    finished = 0
    lease = now + timedelta(seconds=60)
    cpu = time.process_time()
    while queued and finished < limit:
        task_id = queued.pop(0)
        job.assign(task_id, attempt=1, agent_id="agent", lease_until=lease, now=now)
        job.take_changes()
        job.succeed(task_id, attempt=1, outputs={"ok": 1}, now=now)
        queued.extend(job.take_changes().queued)
        finished += 1
    run_cpu = time.process_time() - cpu
    print(
        f"{shape:>8} {len(todos):>6} tasks, domain only: {finished} tasks run "
        f"({2 * finished} transitions) in {run_cpu:6.2f} s CPU, "
        f"{run_cpu / max(2 * finished, 1) * 1e6:6.1f} us per transition; job {job.state.value}"
    )


OpenStore = Callable[[], contextlib.AbstractAsyncContextManager[Store]]


@contextlib.asynccontextmanager
async def sqlite_store() -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory() as directory:
        store = await SqliteStore.open(Path(directory) / "bench.db")
        try:
            yield store
        finally:
            await store.close()


def postgres_store(admin_url: str) -> OpenStore:
    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Store]:
        url = create_database(admin_url, prefix="cpa_bench")
        try:
            migrate(url)
            store = await PostgresStore.open(url, min_size=1, max_size=4)
            try:
                yield store
            finally:
                await store.close()
        finally:
            drop_database(admin_url, url)

    return open_store


async def drive(
    shape: str,
    todos: list[ToDo],
    *,
    limit: int,
    parallelism: int,
    open_store: OpenStore = sqlite_store,
    name: str = "SQLite",
) -> None:
    async with open_store() as store:
        now = datetime.now(UTC)
        cpu = time.process_time()
        job = Job.create(
            job_id=f"{shape}-job",
            tenant=TENANT,
            graph=TaskGraph.from_todos(todos),
            source=JobSource(kind=SourceKind.TODOS),
            options=JobOptions(max_parallelism=parallelism),
            now=now,
        )
        [(_, changes)] = await store.create_jobs([job])
        assert changes is not None
        create_cpu = time.process_time() - cpu
        queued = list(changes.queued)
        finished = transitions = 0
        lease = now + timedelta(seconds=60)
        user, system = cpu_s()
        while queued and finished < limit:
            task_id = queued.pop(0)

            def start(j: Job, t: str = task_id) -> None:
                j.assign(t, attempt=1, agent_id="agent", lease_until=lease, now=now)

            def finish(j: Job, t: str = task_id) -> None:
                j.succeed(t, attempt=1, outputs={"ok": 1}, now=now)

            await store.update_job(TENANT, job.job_id, start)
            _, _, changes = await store.update_job(TENANT, job.job_id, finish)
            queued.extend(changes.queued)
            finished += 1
            transitions += 2
        user_end, system_end = cpu_s()
        run_user, run_system = user_end - user, system_end - system
        run_cpu = run_user + run_system
        final = await store.get_job(TENANT, job.job_id)
    print(
        f"{shape:>8} {len(todos):>6} tasks, {name}: create {create_cpu * 1000:7.1f} ms CPU; "
        f"{finished} tasks run ({transitions} transitions) in {run_cpu:6.2f} s CPU "
        f"({run_user:.2f} user + {run_system:.2f} system), "
        f"{run_cpu / max(transitions, 1) * 1e6:7.1f} us per transition; job {final.state.value}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=None, help="stop after N tasks finished")
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--postgres", metavar="ADMIN_URL", help="also through PostgresStore")
    args = parser.parse_args()
    limit = args.limit if args.limit is not None else args.tasks
    domain_only("chain", chain(args.tasks), limit=limit, parallelism=args.parallelism)
    domain_only("fan", fan(args.tasks), limit=limit, parallelism=args.parallelism)
    asyncio.run(drive("chain", chain(args.tasks), limit=limit, parallelism=args.parallelism))
    asyncio.run(drive("fan", fan(args.tasks), limit=limit, parallelism=args.parallelism))
    if args.postgres:
        for shape, todos in (("chain", chain(args.tasks)), ("fan", fan(args.tasks))):
            asyncio.run(
                drive(
                    shape,
                    todos,
                    limit=limit,
                    parallelism=args.parallelism,
                    open_store=postgres_store(args.postgres),
                    name="PostgreSQL",
                )
            )


if __name__ == "__main__":
    main()
