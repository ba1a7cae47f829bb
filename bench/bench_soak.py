"""Soak: thousands of jobs through a cluster whose agents and replicas are killed at random.

Starts its own cluster (tests/fixtures/cluster.py): a fresh PostgreSQL database and Redis key
prefix, --replicas `cpa serve` processes and --agents `cpa_agent` processes, each agent preferring
another replica and failing over to the rest. It submits --jobs jobs (a chain: `wait` --task-s,
then `echo`) at --rate per second, spread over the replicas; a submission carries a request id
and is retried on another replica until one answers, so a replica's death creates no duplicate.
Meanwhile it SIGKILLs a random agent or replica every --kill-min-s to --kill-max-s seconds and
restarts it (same id, same port) after --down-min-s to --down-max-s.

When every job is submitted the kills stop, every process runs again, and it waits (at most
--settle-s) until every job is terminal. Then it reads every job and its whole event log through
the API (tests/fixtures/history.py) and prints:

    submitted  jobs asked for (each request id once)
    succeeded  jobs that ended SUCCEEDED
    failed     jobs that ended FAILED or CANCELLED
    lost       submitted jobs that are missing or not terminal at the end
    duplicated jobs with a result committed twice (two successful attempts of a task or two
               TaskStateChanged -> SUCCEEDED events), plus jobs created twice for one request id

and exits 1 when lost or duplicated is not 0, or any other defect of a job's history was found
(a gap or a repeat in its event sequence, attempts not numbered 1..n, no single terminal event).

    .venv/bin/python bench/bench_soak.py [--jobs 10000] [--replicas 3] [--agents 4] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the cluster and the history check live in tests/fixtures

from cpa.common.v1 import todo_pb2  # noqa: E402
from cpa.scheduler.v1 import job_pb2  # noqa: E402
from cpa_client import CpaError, SchedulerClient  # noqa: E402
from tests.fixtures.cluster import (  # noqa: E402
    DEFAULT_SETTINGS,
    AgentProcess,
    Cluster,
    Replica,
    fresh_backends,
)
from tests.fixtures.history import (  # noqa: E402
    TERMINAL_JOB_STATES,
    agents_connected,
    describe,
    duplicate_successes,
    history_problems,
    stored_events,
)

ADMIN_URL = os.environ.get("CPA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CPA_BENCH_REDIS", "redis://127.0.0.1:6379/0")
CALL_TIMEOUT_S = 10.0
SUBMIT_GIVE_UP_S = 120.0
AUDIT_CONCURRENCY = 16


def job_spec(task_s: float) -> job_pb2.JobSpec:
    custom = todo_pb2.ACTION_TYPE_CUSTOM
    wait = todo_pb2.ToDo(id="work", action=custom, custom_action="wait")
    wait.params.update({"seconds": task_s})
    echo = todo_pb2.ToDo(id="report", action=custom, custom_action="echo", depends_on=["work"])
    echo.params.update({"done": True})
    return job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[wait, echo]))


@dataclass
class Soak:
    """The cluster, what was submitted and what the chaos did."""

    cluster: Cluster
    replicas: list[Replica]
    agents: list[AgentProcess]
    agent_targets: list[list[str]]
    slots: int
    clients: list[SchedulerClient] = field(default_factory=list)
    job_ids: dict[str, str] = field(default_factory=dict)  # request id -> job id
    unconfirmed: list[str] = field(default_factory=list)  # request ids never answered
    submit_retries: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    first_submit_s: float = 0.0

    def start_agent(self, index: int) -> AgentProcess:
        return self.cluster.agent(
            f"soak-agent-{index}", *self.agent_targets[index], slots=self.slots
        )


@contextmanager
def started_cluster(arguments: argparse.Namespace) -> Iterator[Soak]:
    keep = arguments.keep
    with fresh_backends(ADMIN_URL, REDIS_URL, prefix="cpa_soak", keep=keep) as backends:
        cluster = Cluster.on(backends, CPA_LOG_LEVEL=arguments.log_level)
        try:
            replicas = [cluster.replica(f"r{n}") for n in range(arguments.replicas)]
            targets = [r.target for r in replicas]
            # Agent i prefers replica i mod N and fails over to the others (gRPC pick_first).
            agent_targets = [
                targets[i % len(targets) :] + targets[: i % len(targets)]
                for i in range(arguments.agents)
            ]
            soak = Soak(
                cluster=cluster,
                replicas=replicas,
                agents=[],
                agent_targets=agent_targets,
                slots=arguments.slots,
            )
            soak.agents = [soak.start_agent(i) for i in range(arguments.agents)]
            yield soak
        finally:
            cluster.stop_all(keep_logs=keep)
            if keep:
                print(
                    f"kept: database {backends.database_url}, Redis prefix "
                    f"{backends.redis_prefix}, logs {' '.join(map(str, cluster.logs))}",
                    file=sys.stderr,
                )


async def submit_one(soak: Soak, n: int, spec: job_pb2.JobSpec) -> None:
    """One job, by request id; on an error the same request goes to the next replica."""
    request_id = uuid.uuid4().hex
    give_up = time.monotonic() + SUBMIT_GIVE_UP_S
    replica = n
    while True:
        client = soak.clients[replica % len(soak.clients)]
        try:
            response = await client.schedule_job(spec, request_id=request_id)
        except CpaError as error:
            if error.code == grpc.StatusCode.INVALID_ARGUMENT or time.monotonic() > give_up:
                soak.unconfirmed.append(request_id)
                print(f"submission {request_id} given up: {error}", file=sys.stderr)
                return
            soak.submit_retries += 1
            replica += 1
            await asyncio.sleep(0.2)
            continue
        soak.job_ids[request_id] = response.job.job_id
        return


async def submit_all(soak: Soak, jobs: int, rate: float, spec: job_pb2.JobSpec) -> None:
    """Open loop: job n goes out at n / rate seconds, whatever happened to the ones before."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    soak.first_submit_s = time.time()
    in_flight: set[asyncio.Task[None]] = set()
    for n in range(jobs):
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(submit_one(soak, n, spec))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        if n % 1000 == 999:
            print(f"  {n + 1} submitted, kills so far {dict(soak.kills)}", file=sys.stderr)
    await asyncio.gather(*in_flight)


async def restart_replica(soak: Soak, index: int) -> None:
    old = soak.replicas[index]
    for attempt in range(10):
        try:
            soak.replicas[index] = await asyncio.to_thread(
                soak.cluster.replica, old.name, port=old.port
            )
            return
        except AssertionError:  # the port may linger for a moment
            if attempt == 9:
                raise
            await asyncio.sleep(0.5)


async def chaos(soak: Soak, arguments: argparse.Namespace, stop: asyncio.Event) -> None:
    """Kills a random agent or replica (SIGKILL) now and then, and restarts it."""
    rng = random.Random(arguments.seed)
    while not stop.is_set():
        try:
            await asyncio.wait_for(
                stop.wait(), rng.uniform(arguments.kill_min_s, arguments.kill_max_s)
            )
            return
        except TimeoutError:
            pass
        down_s = rng.uniform(arguments.down_min_s, arguments.down_max_s)
        kill_replica = len(soak.replicas) > 1 and rng.random() < arguments.replica_share
        if kill_replica:
            index = rng.randrange(len(soak.replicas))
            soak.replicas[index].kill()
            soak.kills["replica"] += 1
            await asyncio.sleep(down_s)
            await restart_replica(soak, index)
        else:
            index = rng.randrange(len(soak.agents))
            soak.agents[index].kill()
            soak.kills["agent"] += 1
            await asyncio.sleep(down_s)
            soak.agents[index] = soak.start_agent(index)


async def all_jobs(client: SchedulerClient) -> dict[str, job_pb2.Job]:
    return {job.job_id: job async for job in client.list_jobs(page_size=1000)}


async def settle(soak: Soak, timeout_s: float) -> dict[str, job_pb2.Job]:
    """Every job, once no submitted one is open any more (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    client = soak.clients[0]
    open_filter = "(state = PENDING OR state = RUNNING OR state = WAITING_APPROVAL)"
    while time.monotonic() < deadline:
        open_jobs = [job async for job in client.list_jobs(filter=open_filter, page_size=1000)]
        if not open_jobs:
            break
        print(f"  waiting for {len(open_jobs)} jobs to end", file=sys.stderr)
        await asyncio.sleep(2.0)
    return await all_jobs(client)


@dataclass
class Audit:
    duplicated: set[str] = field(default_factory=set)
    defects: dict[str, list[str]] = field(default_factory=dict)


async def audit(soak: Soak, jobs: dict[str, job_pb2.Job]) -> Audit:
    """Reads every terminal job's whole event log and checks its history."""
    result = Audit()
    semaphore = asyncio.Semaphore(AUDIT_CONCURRENCY)

    async def check(job: job_pb2.Job) -> None:
        async with semaphore:
            events = await stored_events(soak.clients[0], job.job_id)
        if duplicate_successes(job, events):
            result.duplicated.add(job.job_id)
        problems = history_problems(job, events, expected_state=job.state)
        if problems:
            result.defects[job.job_id] = problems

    await asyncio.gather(*(check(j) for j in jobs.values() if j.state in TERMINAL_JOB_STATES))
    return result


async def run(arguments: argparse.Namespace) -> int:
    spec = job_spec(arguments.task_s)
    with started_cluster(arguments) as soak:
        soak.clients = [SchedulerClient(r.target, timeout_s=CALL_TIMEOUT_S) for r in soak.replicas]
        try:
            await agents_connected(soak.clients[0], *(a.agent_id for a in soak.agents))
            stop = asyncio.Event()
            chaos_task = asyncio.create_task(chaos(soak, arguments, stop))
            await submit_all(soak, arguments.jobs, arguments.rate, spec)
            submitted_s = time.time()
            stop.set()
            await chaos_task  # ends with every process running again
            jobs = await settle(soak, arguments.settle_s)
            settled_s = time.time()
            checked = await audit(soak, jobs)
        finally:
            for client in soak.clients:
                await client.close()

    # Accounting by request id (the database holds only this run's jobs).
    by_request: dict[str, list[job_pb2.Job]] = {}
    for job in jobs.values():
        by_request.setdefault(job.request_id, []).append(job)
    requests = [*soak.job_ids, *soak.unconfirmed]
    created_twice = sum(1 for r in requests if len(by_request.get(r, [])) > 1)
    ours = [by_request[r][0] for r in requests if by_request.get(r)]
    submitted = len(requests)
    succeeded = sum(1 for j in ours if j.state == job_pb2.JOB_STATE_SUCCEEDED)
    failed = sum(
        1 for j in ours if j.state in (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
    )
    lost = submitted - succeeded - failed  # missing, or not terminal at the end
    duplicated = len(checked.duplicated) + created_twice
    other_defects = {k: v for k, v in checked.defects.items() if k not in checked.duplicated}
    ended = [j for j in ours if j.state in TERMINAL_JOB_STATES]
    last_end_s = max((j.end_time.ToNanoseconds() / 1e9 for j in ended), default=settled_s)
    attempts = Counter(
        job_pb2.AttemptState.Name(a.state).removeprefix("ATTEMPT_STATE_")
        for j in ended
        for t in j.tasks
        for a in t.attempts
    )
    failures = Counter(
        job_pb2.JobState.Name(j.state) + " " + j.error.code
        for j in ended
        if j.state != job_pb2.JOB_STATE_SUCCEEDED
    )

    print(
        f"machine: {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    print(
        f"cluster: {arguments.replicas} replicas, {arguments.agents} agents x {arguments.slots} "
        f"slots, PostgreSQL + Redis; lease {DEFAULT_SETTINGS['CPA_LEASE_DURATION_S']} s, "
        f"heartbeat {DEFAULT_SETTINGS['CPA_HEARTBEAT_INTERVAL_S']} s"
    )
    print(
        f"jobs: wait {arguments.task_s:g} s -> echo, offered at {arguments.rate:g}/s; "
        f"submission retries (replica down): {soak.submit_retries}"
    )
    print(
        f"chaos: {soak.kills['agent']} agent and {soak.kills['replica']} replica SIGKILLs, one "
        f"every {arguments.kill_min_s:g}-{arguments.kill_max_s:g} s, each restarted after "
        f"{arguments.down_min_s:g}-{arguments.down_max_s:g} s (seed {arguments.seed})"
    )
    by_state = ", ".join(f"{k} {v}" for k, v in attempts.most_common())
    print(f"attempts: {sum(attempts.values())} ({by_state})")
    if failures:
        print(f"failures: {', '.join(f'{k}: {v}' for k, v in failures.most_common())}")
    print(
        f"throughput: {len(ended) / (last_end_s - soak.first_submit_s):.1f} jobs/s "
        f"(first submit to last job end, {last_end_s - soak.first_submit_s:.0f} s; "
        f"submitting took {submitted_s - soak.first_submit_s:.0f} s)"
    )
    print(f"submitted:  {submitted}")
    print(f"succeeded:  {succeeded}")
    print(f"failed:     {failed}")
    print(f"lost:       {lost}")
    print(f"duplicated: {duplicated}")
    missing = [r for r in requests if not by_request.get(r)]
    if missing:
        print(f"lost: {len(missing)} request ids without a job, e.g. {missing[:5]}")
    for job in [j for j in ours if j.state not in TERMINAL_JOB_STATES][:20]:
        print(f"lost: {describe(job)}")
    for job_id, problems in list(other_defects.items())[:20]:
        print(f"defect: job {job_id}: {'; '.join(problems)}")
    if other_defects:
        print(f"jobs with other history defects: {len(other_defects)}")
    return 1 if lost or duplicated or other_defects else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=50.0, help="jobs offered per second")
    parser.add_argument("--task-s", type=float, default=0.2, help="seconds of the wait task")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8, help="slots per agent")
    parser.add_argument("--kill-min-s", type=float, default=1.0)
    parser.add_argument("--kill-max-s", type=float, default=4.0)
    parser.add_argument("--down-min-s", type=float, default=0.5)
    parser.add_argument("--down-max-s", type=float, default=2.0)
    parser.add_argument(
        "--replica-share", type=float, default=0.4, help="share of kills that hit a replica"
    )
    parser.add_argument(
        "--settle-s", type=float, default=300.0, help="longest wait for the last jobs to end"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="WARNING", help="of the replicas")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database, Redis keys and logs afterwards"
    )
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
