"""End-to-end throughput and latency of the embedded scheduler over real sockets.

Starts `cpa serve` (embedded SQLite store) and benchmark agents (bench_agent.py) as processes,
submits one-task jobs through gRPC, and prints:
  1. jobs/s end to end: N jobs from C concurrent submitters, first submit to last job SUCCEEDED;
  2. submit -> agent-start latency p50/p95/p99 at a paced rate (open loop);
  3. a DAG case: jobs of 10 parallel tasks and a join;
  4. where the machine's CPU went during case 1, per job and per process (the scheduler, the
     agents, the submitters, and in the distributed mode PostgreSQL and Redis), from /proc.
Times come from the server's job records and the agent's start stamps (one machine, one clock).

    python bench/bench_throughput.py [--jobs 5000] [--concurrency 32] [--rate 200]
    python bench/bench_throughput.py --distributed --replicas 3   # PostgreSQL + Redis
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # the throwaway database and prefix: tests/fixtures

import psycopg  # noqa: E402

from cpa.common.v1 import todo_pb2  # noqa: E402
from cpa.scheduler.v1 import job_pb2  # noqa: E402
from cpa_client import SchedulerClient  # noqa: E402
from cpa_scheduler.storage import records  # noqa: E402
from tests.fixtures.cluster import fresh_backends  # noqa: E402

ADMIN_URL = os.environ.get("CPA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CPA_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def _todo(task_id: str, action: str, depends_on: tuple[str, ...] = ()) -> todo_pb2.ToDo:
    return todo_pb2.ToDo(
        id=task_id,
        action=todo_pb2.ACTION_TYPE_CUSTOM,
        custom_action=action,
        depends_on=list(depends_on),
    )


ONE_TASK = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[_todo("t", "stamp")]))
DAG = job_pb2.JobSpec(
    todos=job_pb2.TodoList(
        todos=[_todo(f"p{i}", "noop") for i in range(10)]
        + [_todo("join", "noop", tuple(f"p{i}" for i in range(10)))]
    )
)


@dataclass
class Started:
    addresses: list[str] = field(default_factory=list)
    data_dirs: list[Path] = field(default_factory=list)
    pids: dict[str, list[int]] = field(default_factory=lambda: {"scheduler": [], "agents": []})


@contextmanager
def processes(
    *, replicas: int, agents_per_replica: int, slots: int, backend_env: dict[str, str]
) -> Iterator[Started]:
    """Scheduler replicas and agent processes (each agent on one replica)."""
    # Rate limits and authentication off (bench_rate_limits.py and bench_auth.py turn them on):
    # the bench is the only caller, on loopback.
    env = {
        **os.environ,
        "CPA_LOG_LEVEL": "WARNING",
        "CPA_RATE_LIMITS_ENABLED": "false",
        "CPA_INSECURE_LOCAL": "true",
        **backend_env,
    }
    started: list[subprocess.Popen[str]] = []
    result = Started()
    addresses = result.addresses
    try:
        for n in range(replicas):
            data_dir = tempfile.mkdtemp(prefix="cpa-bench-")
            result.data_dirs.append(Path(data_dir))
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cpa_cli",
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    data_dir,
                ],
                stdout=subprocess.PIPE,
                text=True,
                env={**env, "CPA_REPLICA_ID": f"r{n}"},
            )
            started.append(server)
            result.pids["scheduler"].append(server.pid)
            assert server.stdout is not None
            line = server.stdout.readline()
            if "serving on" not in line:
                raise RuntimeError(f"scheduler did not start: {line!r}")
            addresses.append(line.rsplit(" ", 1)[1].strip())
        for n, address in enumerate(addresses):
            for m in range(agents_per_replica):
                started.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(HERE / "bench_agent.py"),
                            "--server",
                            address,
                            "--agent-id",
                            f"bench-{n}-{m}",
                            "--slots",
                            str(slots),
                        ],
                        env={**env, "CPA_AGENT_LOG_LEVEL": "WARNING"},
                        text=True,
                    )
                )
        result.pids["agents"] = [p.pid for p in started[replicas:]]
        yield result
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for store_dir in result.data_dirs:  # the stores of a run are of no use after it
            shutil.rmtree(store_dir, ignore_errors=True)


def calibration_ms() -> float:
    """CPU time of a fixed pure-Python loop: this machine's speed right now. Shared virtual
    machines vary by tens of percent from run to run; compare CPU figures relative to it."""
    started = time.process_time()
    total = 0
    for n in range(2_000_000):
        total += n * n % 7
    return (time.process_time() - started) * 1000


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_of(command: str) -> list[int]:
    """Processes running `command` (e.g. every PostgreSQL backend and helper)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == command:
                    pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU used by each role between `start()` and `stop()`. Servers' processes (PostgreSQL,
    Redis) are found by name when the bench runs the distributed mode; a process started
    meanwhile (a new backend) counts from zero."""

    def __init__(self, pids: dict[str, list[int]], *, distributed: bool) -> None:
        self._fixed = pids
        self._servers = {"postgres": "postgres", "redis": "redis-server"} if distributed else {}
        self._before: dict[str, dict[int, float]] = {}
        self._started = 0.0
        self.elapsed_s = 0.0
        self.used_s: dict[str, float] = {}  # CPU seconds per role, set by stop()

    def _roles(self) -> dict[str, list[int]]:
        servers = {role: _pids_of(command) for role, command in self._servers.items()}
        return {**self._fixed, "submitters": [os.getpid()], **servers}

    def _sample(self) -> dict[str, dict[int, float]]:
        return {role: {pid: _cpu_s(pid) for pid in pids} for role, pids in self._roles().items()}

    def start(self) -> None:
        self._before = self._sample()
        self._started = time.monotonic()

    def stop(self) -> None:
        self.elapsed_s = time.monotonic() - self._started
        self.used_s = {
            role: sum(cpu - self._before.get(role, {}).get(pid, 0.0) for pid, cpu in used.items())
            for role, used in self._sample().items()
        }


def _fill_history(database_url: str, *, copies: int) -> None:
    """Make the database look like a live one: `copies` copies of the warm-up's finished jobs,
    and table statistics, as autovacuum keeps them. On empty tables without statistics the
    planner picks plans (scans) that no database in service would get."""
    key = "md5(job_id || '-' || copy)"
    with psycopg.connect(database_url, autocommit=True) as connection:
        for table, columns in (
            ("jobs", records.JOB_COLUMNS),
            ("tasks", records.TASK_COLUMNS),
            ("events", ("job_id", "sequence", "create_time", "terminal", "payload_json")),
        ):
            values = ", ".join(
                key if c == "job_id" else "''" if c == "request_id" else c for c in columns
            )
            connection.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} "
                f"FROM {table}, generate_series(1, %s) AS copy",
                (copies,),
            )
        connection.execute("ANALYZE")


async def _wait_agents(client: SchedulerClient, count: int) -> None:
    deadline = time.monotonic() + 30
    while len([a async for a in client.list_agents()]) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("agents did not connect")
        await asyncio.sleep(0.05)


TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED)


async def _wait_done(
    client: SchedulerClient, job_ids: list[str], meter: CpuMeter | None = None
) -> list[job_pb2.Job]:
    """Every job, once all are terminal (polled; this is a benchmark, not a test). Jobs end
    roughly in submission order: the last one is polled, then all are listed at once, so the
    polling costs the scheduler little (and the meter stops before the listing)."""
    while True:
        if (await client.get_job(job_ids[-1])).state in TERMINAL:
            break
        await asyncio.sleep(0.02)
    if meter is not None:
        meter.stop()
    wanted = set(job_ids)
    # FULL: the latencies are read from the tasks' outputs.
    listing = client.list_jobs(page_size=1000, view=job_pb2.JOB_VIEW_FULL)
    jobs = {j.job_id: j async for j in listing if j.job_id in wanted}
    for job_id in job_ids:
        while jobs.get(job_id) is None or jobs[job_id].state not in TERMINAL:
            jobs[job_id] = await client.get_job(job_id)
            if jobs[job_id].state not in TERMINAL:
                await asyncio.sleep(0.02)
    return [jobs[job_id] for job_id in job_ids]


def _ns(timestamp: object) -> int:
    return timestamp.ToNanoseconds()  # type: ignore[attr-defined,no-any-return]


async def throughput(
    clients: list[SchedulerClient],
    jobs: int,
    concurrency: int,
    spec: job_pb2.JobSpec,
    meter: CpuMeter | None = None,
    batch: int = 1,
) -> dict[str, float]:
    """`batch` > 1: each submitter sends its jobs `batch` at a time (BatchScheduleJobs)."""
    per_submitter = jobs // concurrency
    ids: list[str] = []

    async def submitter(client: SchedulerClient) -> None:
        left = per_submitter
        while left > 0:
            if batch > 1:
                answers = await client.batch_schedule_jobs([spec] * min(batch, left))
                ids.extend(a.job.job_id for a in answers)
            else:
                ids.append((await client.schedule_job(spec)).job.job_id)
            left -= max(1, batch)

    start_ns = time.time_ns()
    if meter is not None:
        meter.start()
    await asyncio.gather(*(submitter(clients[n % len(clients)]) for n in range(concurrency)))
    submitted_ns = time.time_ns()
    done = await _wait_done(clients[0], ids, meter)
    assert all(j.state == job_pb2.JOB_STATE_SUCCEEDED for j in done), "a job failed"
    end_ns = max(_ns(j.end_time) for j in done)
    job_latency_ms = [(_ns(j.end_time) - _ns(j.create_time)) / 1e6 for j in done]
    return {
        "jobs": len(done),
        "submit_per_s": len(done) / ((submitted_ns - start_ns) / 1e9),
        "end_to_end_per_s": len(done) / ((end_ns - start_ns) / 1e9),
        "job_p50_ms": statistics.median(job_latency_ms),
        "job_p99_ms": _percentile(job_latency_ms, 99),
    }


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


async def paced_latency(clients: list[SchedulerClient], jobs: int, rate: float) -> dict[str, float]:
    interval_s = 1.0 / rate
    submitted: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    in_flight: set[asyncio.Task[None]] = set()

    async def submit(client: SchedulerClient) -> None:
        before = time.time_ns()
        job_id = (await client.schedule_job(ONE_TASK)).job.job_id
        submitted[job_id] = before

    for n in range(jobs):
        delay = start + n * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(submit(clients[n % len(clients)]))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    achieved = jobs / (loop.time() - start)
    done = await _wait_done(clients[0], list(submitted))
    latencies_ms = [
        (int(str(j.tasks[0].outputs["started_ns"])) - submitted[j.job_id]) / 1e6 for j in done
    ]
    return {
        "rate_per_s": achieved,
        "p50_ms": statistics.median(latencies_ms),
        "p95_ms": _percentile(latencies_ms, 95),
        "p99_ms": _percentile(latencies_ms, 99),
    }


async def run(arguments: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        backends = (
            stack.enter_context(fresh_backends(ADMIN_URL, REDIS_URL, prefix="cpa_bench"))
            if arguments.distributed
            else None
        )
        backend_env = backends.env() if backends is not None else {}
        started = stack.enter_context(
            processes(
                replicas=arguments.replicas,
                agents_per_replica=arguments.agents,
                slots=arguments.slots,
                backend_env=backend_env,
            )
        )
        clients = [SchedulerClient(address, timeout_s=60) for address in started.addresses]
        meter = CpuMeter(started.pids, distributed=arguments.distributed)
        try:
            await _wait_agents(clients[0], arguments.agents * arguments.replicas)
            await throughput(clients, 200, 8, ONE_TASK)  # warm-up
            if backends is not None:
                _fill_history(backends.database_url, copies=arguments.history // 200)
            calibration = calibration_ms()
            one = await throughput(
                clients,
                arguments.jobs,
                arguments.concurrency,
                ONE_TASK,
                meter,
                batch=arguments.submit_batch,
            )
            calibration = (calibration + calibration_ms()) / 2
            paced = await paced_latency(clients, arguments.latency_jobs, arguments.rate)
            dag_submitters = max(1, arguments.concurrency // 4)
            dag = await throughput(clients, arguments.dag_jobs, dag_submitters, DAG)
        finally:
            for client in clients:
                await client.close()
    store = "PostgreSQL + Redis" if arguments.distributed else "embedded SQLite store"
    print(
        f"machine: {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    print(
        f"replicas: {arguments.replicas}, agents: {arguments.agents} per replica x "
        f"{arguments.slots} slots; {store}"
    )
    submitted = (
        f"BatchScheduleJobs of {arguments.submit_batch}"
        if arguments.submit_batch > 1
        else "ScheduleJob per job"
    )
    print(
        f"one-task jobs: {one['jobs']:.0f} jobs, {arguments.concurrency} submitters, "
        f"{submitted}: "
        f"{one['end_to_end_per_s']:.0f} jobs/s end to end (submit {one['submit_per_s']:.0f}/s), "
        f"job latency p50 {one['job_p50_ms']:.1f} ms p99 {one['job_p99_ms']:.1f} ms"
    )
    print(
        f"submit->agent-start at {paced['rate_per_s']:.0f} jobs/s: p50 {paced['p50_ms']:.2f} ms, "
        f"p95 {paced['p95_ms']:.2f} ms, p99 {paced['p99_ms']:.2f} ms"
    )
    print(
        f"CPU during the one-task jobs ({meter.elapsed_s:.1f} s), per job and in cores: "
        + ", ".join(
            f"{role} {1000 * used / one['jobs']:.2f} ms ({used / meter.elapsed_s:.2f})"
            for role, used in meter.used_s.items()
        )
        + f"; all {1000 * sum(meter.used_s.values()) / one['jobs']:.2f} ms "
        f"(calibration loop: {calibration:.0f} ms)"
    )
    print(
        f"DAG (10 parallel + join): {dag['jobs']:.0f} jobs: {dag['end_to_end_per_s']:.0f} jobs/s "
        f"({dag['end_to_end_per_s'] * 11:.0f} tasks/s), job latency p50 {dag['job_p50_ms']:.1f} ms "
        f"p99 {dag['job_p99_ms']:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--latency-jobs", type=int, default=2000)
    parser.add_argument("--dag-jobs", type=int, default=500)
    parser.add_argument(
        "--submit-batch",
        type=int,
        default=1,
        help="jobs per BatchScheduleJobs call in the one-task run (1: one ScheduleJob per job)",
    )
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument(
        "--distributed", action="store_true", help="PostgreSQL + Redis instead of SQLite"
    )
    parser.add_argument("--replicas", type=int, default=1, help="scheduler processes")
    parser.add_argument(
        "--history",
        type=int,
        default=20_000,
        help="finished jobs in the database before the measured runs (distributed mode)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
