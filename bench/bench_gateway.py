"""What the Envoy gateway costs: REST/JSON and native gRPC through Envoy against gRPC direct.

Starts `cpa serve` (embedded SQLite store) and one agent (bench_agent.py, 64 slots, connected
straight to the scheduler) as processes, and a real Envoy in front of the scheduler
(cpa_cli.gateway: the config `cpa gateway` renders, access log on Envoy's stdout, which goes
to /dev/null here). This process is the load generator. Three paths, measured in the same run,
in rounds whose order rotates (a loaded machine drifts; each path gets early and late turns):

  gRPC direct      the Python SDK (ScheduleJob) or raw stubs (WatchJob) to the scheduler;
  gRPC via Envoy   the same calls to Envoy's port (native gRPC passing through the proxy);
  REST via Envoy   httpx async, HTTP/1.1 keep-alive (one pooled connection per caller):
                   POST /v1/jobs, and GET /v1/jobs/{id}:watch as Server-Sent Events.

Cases:
  1. submissions, closed loop: one-task jobs whose action no agent serves, so they stay QUEUED
     (`--jobs` per path and round): each path's peak rate. The scheduler does the same work
     for a job whatever path its submission took; leaving out the dispatch and the result keeps
     that shared work from diluting the gateway's share;
  2. the same submissions paced at `--rate` per second for every path: the scheduler's CPU per
     call depends on the arrival rate (more calls share a loop iteration at a higher rate), so
     the overhead goal is read from this case, where every path gets the same load;
  3. end to end: one `echo` task per job, from the first submission until every job SUCCEEDED
     (the cost per job a user sees; the agent's CPU is reported, not counted);
  4. WatchJob: `--watchers` concurrent streams, each replaying finished jobs of `--tasks` noop
     tasks from their first event to the terminal one, `--replays` times per round: delivery
     at full speed. Live events are one message each too, so Envoy's cost per event is the
     same; the scheduler's is not (no store reads, one encoding for all watchers).

CPU per call comes from /proc (user + system) of the scheduler and Envoy processes; the load
generator's own CPU is shown apart and counted nowhere. The overhead figure is
(scheduler + Envoy CPU per REST call) / (scheduler CPU per direct gRPC call) - 1 (goal <= 15 %).

    python bench/bench_gateway.py [--jobs 1500] [--paced-jobs 600 --rate 120] [--e2e-jobs 500]
                                  [--concurrency 32] [--watchers 16] [--rounds 2]
    python bench/bench_gateway.py --template my-envoy.yaml.j2   # a config experiment
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import httpx
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench_throughput's processes and CPU meter

from bench.bench_throughput import (  # noqa: E402
    CpuMeter,
    _wait_agents,
    _wait_done,
    calibration_ms,
    processes,
)
from bench.bench_watchers import WATCH_METHOD  # noqa: E402
from cpa.common.v1 import todo_pb2  # noqa: E402
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2  # noqa: E402
from cpa_cli.gateway import EnvoyGateway, GatewayConfig  # noqa: E402
from cpa_client import SchedulerClient  # noqa: E402
from cpa_scheduler.settings import Settings  # noqa: E402

PATHS = ("gRPC direct", "gRPC via Envoy", "REST via Envoy")
DIRECT, GRPC_ENVOY, REST = PATHS
# An action no agent advertises: the submission-only case's tasks stay QUEUED.
HELD_ACTION = "bench-held"
GOAL_PERCENT = 15.0
TIMEOUT_S = 120.0
Submit = Callable[[], Awaitable[str]]


def _one_task(action: str) -> scheduler_service_pb2.ScheduleJobRequest:
    todo = todo_pb2.ToDo(id="t", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action=action)
    todo.params.update({"greeting": "hello"})
    return scheduler_service_pb2.ScheduleJobRequest(
        spec=job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo]))
    )


def _many_tasks(count: int) -> job_pb2.JobSpec:
    todos = [
        todo_pb2.ToDo(id=f"t{n}", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="noop")
        for n in range(count)
    ]
    return job_pb2.JobSpec(todos=job_pb2.TodoList(todos=todos))


@dataclass
class Paths:
    """One client per path: a gRPC channel each to the scheduler and to Envoy, an HTTP pool."""

    channels: dict[str, grpc.aio.Channel]
    http: httpx.AsyncClient
    clients: dict[str, SchedulerClient] = field(init=False)

    def __post_init__(self) -> None:
        self.clients = {
            path: SchedulerClient("", channel=channel, timeout_s=TIMEOUT_S)
            for path, channel in self.channels.items()
        }

    def submitter(self, path: str, request: scheduler_service_pb2.ScheduleJobRequest) -> Submit:
        """A coroutine function that submits `request` once over `path` and returns the job id."""
        if path == REST:
            # The same request as JSON, encoded once: the client's cost stays out of the way.
            body = json_format.MessageToJson(request, preserving_proto_field_name=True).encode()
            headers = {"content-type": "application/json"}

            async def rest() -> str:
                response = await self.http.post("/v1/jobs", content=body, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"POST /v1/jobs: {response.status_code} {response.text}")
                job_id: str = response.json()["job"]["job_id"]
                return job_id

            return rest
        client = self.clients[path]

        async def native() -> str:
            return (await client.schedule_job(request.spec)).job.job_id

        return native

    async def watch(self, path: str, job_id: str) -> int:
        """Events of one WatchJob stream over `path`, read from the first to the terminal one."""
        if path == REST:
            count, tail = 0, b""
            async with self.http.stream("GET", f"/v1/jobs/{job_id}:watch") as response:
                if response.status_code != 200:
                    raise RuntimeError(f"watch {job_id}: {response.status_code}")
                # Each event is `data: {json}` and a blank line; compact JSON holds no raw
                # newline, so counting "\n\n" counts events without parsing them.
                async for chunk in response.aiter_raw():
                    count += (tail + chunk).count(b"\n\n")
                    tail = chunk[-1:]
            return count
        method = self.channels[path].unary_stream(
            WATCH_METHOD,
            request_serializer=scheduler_service_pb2.WatchJobRequest.SerializeToString,
            response_deserializer=None,  # raw bytes: counting costs the client little
        )
        count = 0
        async for _ in method(scheduler_service_pb2.WatchJobRequest(job_id=job_id)):
            count += 1
        return count

    async def close(self) -> None:
        await self.http.aclose()
        for channel in self.channels.values():
            await channel.close(grace=None)


@dataclass
class Tally:
    """Calls (or events) and the CPU they cost, summed over a path's rounds."""

    calls: int = 0
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)

    def add(self, calls: int, meter: CpuMeter) -> None:
        self.calls += calls
        self.seconds += meter.elapsed_s
        self.rates.append(calls / meter.elapsed_s)
        for role, used in meter.used_s.items():
            self.cpu_s[role] = self.cpu_s.get(role, 0.0) + used

    def per_call_ms(self, *roles: str) -> float:
        return 1000 * sum(self.cpu_s.get(role, 0.0) for role in roles) / max(1, self.calls)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


async def _submit_all(submit: Submit, jobs: int, concurrency: int) -> list[str]:
    ids: list[str] = []

    async def caller(share: int) -> None:
        for _ in range(share):
            ids.append(await submit())

    shares = [
        jobs // concurrency + (1 if n < jobs % concurrency else 0) for n in range(concurrency)
    ]
    await asyncio.gather(*(caller(share) for share in shares if share))
    return ids


async def closed_loop(submit: Submit, jobs: int, concurrency: int, meter: CpuMeter) -> int:
    """`jobs` submissions from `concurrency` callers, each calling again as soon as answered."""
    meter.start()
    ids = await _submit_all(submit, jobs, concurrency)
    meter.stop()
    return len(ids)


async def paced(submit: Submit, jobs: int, rate: float, concurrency: int, meter: CpuMeter) -> int:
    """`jobs` submissions started at `rate` per second (at most `concurrency` in flight): every
    path at the same offered load, so the scheduler batches its work alike for each."""
    in_flight = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    calls: list[asyncio.Task[None]] = []

    async def one() -> None:
        try:
            await submit()
        finally:
            in_flight.release()

    meter.start()
    start = loop.time()
    for n in range(jobs):
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await in_flight.acquire()
        calls.append(asyncio.create_task(one()))
    await asyncio.gather(*calls)
    meter.stop()
    return jobs


async def end_to_end(
    submit: Submit, direct: SchedulerClient, jobs: int, concurrency: int, meter: CpuMeter
) -> int:
    meter.start()
    ids = await _submit_all(submit, jobs, concurrency)
    done = await _wait_done(direct, ids, meter)  # stops the meter once the last job ended
    failed = [j.job_id for j in done if j.state != job_pb2.JOB_STATE_SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} end-to-end jobs did not succeed, e.g. {failed[0]}")
    return len(done)


async def sse_replays(
    paths: Paths, path: str, expected: dict[str, int], watchers: int, replays: int, meter: CpuMeter
) -> int:
    job_ids = list(expected)

    async def watcher(n: int) -> int:
        total = 0
        for r in range(replays):
            job_id = job_ids[(n + r) % len(job_ids)]
            got = await paths.watch(path, job_id)
            if got != expected[job_id]:
                raise RuntimeError(f"{path}: {got} events of {job_id}, expected {expected[job_id]}")
            total += got
        return total

    meter.start()
    counts = await asyncio.gather(*(watcher(n) for n in range(watchers)))
    meter.stop()
    return sum(counts)


async def _finished_jobs(direct: SchedulerClient, jobs: int, tasks: int) -> dict[str, int]:
    """`jobs` jobs of `tasks` noop tasks, run to the end; their event counts (read directly)."""
    ids = [(await direct.schedule_job(_many_tasks(tasks))).job.job_id for _ in range(jobs)]
    await _wait_done(direct, ids)
    counts = {}
    for job_id in ids:
        counts[job_id] = len([event async for event in direct.watch_job(job_id)])
    return counts


def _gateway(upstream: str, template: str, stdout: IO[str]) -> EnvoyGateway:
    config = GatewayConfig.build("127.0.0.1:0", [upstream], Settings())
    if template:  # an experiment: the same variables into another template
        config = dataclasses.replace(config, template_path=Path(template).resolve())
    # Access log lines (JSON, one per call) are formatted and written as in service; Envoy's
    # own log at "error": its shutdown notice is not news here.
    return EnvoyGateway(config, log_level="error", stdout=stdout)


def _rotated(round_no: int) -> list[str]:
    shift = round_no % len(PATHS)
    return list(PATHS[shift:] + PATHS[:shift])


CASES = ("closed", "paced", "e2e", "sse")
Tallies = dict[str, dict[str, Tally]]  # case -> path -> tally


@dataclass
class Results:
    tallies: Tallies
    calibration_ms: list[float]
    idle_cores: dict[str, float]
    events_per_job: list[int]
    connections: str = ""


# Envoy's counters of connections opened over the whole run: keep-alive is really kept (no
# connection per call), and how many HTTP/2 connections carry the calls to the scheduler.
CONNECTION_STATS = {
    "http.cpa_gateway.downstream_cx_http1_total": "HTTP/1.1 from callers",
    "http.cpa_gateway.downstream_cx_http2_total": "HTTP/2 from callers",
    "http.cpa_gateway.downstream_rq_total": "requests",
    "cluster.cpa_scheduler.upstream_cx_total": "HTTP/2 to the scheduler",
}


def _envoy_connections(admin_address: str) -> str:
    url = f"http://{admin_address}/stats?filter=_total$"
    with urllib.request.urlopen(url, timeout=10) as response:  # our own loopback admin
        lines = response.read().decode().splitlines()
    values = dict(line.split(": ", 1) for line in lines if ": " in line)
    return ", ".join(f"{label} {values.get(name, '?')}" for name, label in CONNECTION_STATS.items())


async def measure(
    arguments: argparse.Namespace, pids: dict[str, list[int]], addresses: list[str]
) -> Results:
    direct_address, envoy_address = addresses
    pool = max(arguments.concurrency, arguments.watchers)
    paths = Paths(
        channels={
            DIRECT: grpc.aio.insecure_channel(direct_address),
            GRPC_ENVOY: grpc.aio.insecure_channel(envoy_address),
        },
        http=httpx.AsyncClient(
            base_url=f"http://{envoy_address}",
            timeout=TIMEOUT_S,
            trust_env=False,
            # Idle connections are kept between the cases (httpx closes them after 5 s by
            # default), so Envoy's counters show connections opened by load, not by pauses.
            limits=httpx.Limits(
                max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=None
            ),
        ),
    )
    direct = paths.clients[DIRECT]
    meter = CpuMeter(pids, distributed=False)
    tallies: Tallies = {case: {path: Tally() for path in PATHS} for case in CASES}
    concurrency = arguments.concurrency
    try:
        await _wait_agents(direct, 1)
        held, echo = _one_task(HELD_ACTION), _one_task("echo")
        for path in PATHS:  # warm-up: connections, pools, code paths
            await closed_loop(paths.submitter(path, held), 100, concurrency, meter)
            await end_to_end(paths.submitter(path, echo), direct, 50, concurrency, meter)
        expected = await _finished_jobs(direct, arguments.watch_jobs, arguments.tasks)
        for path in PATHS:
            await sse_replays(paths, path, expected, min(4, arguments.watchers), 1, meter)
        # What the processes use doing nothing (health checks, timers): part of every figure.
        meter.start()
        await asyncio.sleep(arguments.idle_seconds)
        meter.stop()
        idle = {role: used / meter.elapsed_s for role, used in meter.used_s.items()}
        calibration = [calibration_ms()]
        for round_no in range(arguments.rounds):
            order = _rotated(round_no)
            for path in order:
                calls = await closed_loop(
                    paths.submitter(path, held), arguments.jobs, concurrency, meter
                )
                tallies["closed"][path].add(calls, meter)
            for path in order:
                submit = paths.submitter(path, held)
                calls = await paced(
                    submit, arguments.paced_jobs, arguments.rate, concurrency, meter
                )
                tallies["paced"][path].add(calls, meter)
            for path in order:
                submit = paths.submitter(path, echo)
                jobs = await end_to_end(submit, direct, arguments.e2e_jobs, concurrency, meter)
                tallies["e2e"][path].add(jobs, meter)
            for path in order:
                events = await sse_replays(
                    paths, path, expected, arguments.watchers, arguments.replays, meter
                )
                tallies["sse"][path].add(events, meter)
        calibration.append(calibration_ms())
    finally:
        await paths.close()
    return Results(tallies, calibration, idle, sorted(set(expected.values())))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cells[n]) for cells in [headers, *rows]) for n in range(len(headers))]
    for cells in [headers, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")


def _report(
    title: str, tallies: dict[str, Tally], unit: str, *, micro: bool = False, agent: bool = False
) -> None:
    """One case's table: rate, CPU per call by process, and the overhead lines."""
    scale, cpu_unit = (1000.0, "us") if micro else (1.0, "ms")
    print(f"\n{title}")
    base = tallies[DIRECT].per_call_ms("scheduler")
    headers = [
        "path",
        f"{unit}s/s",
        "per round",
        f"scheduler {cpu_unit}",
        f"Envoy {cpu_unit}",
        f"sched+Envoy {cpu_unit}",
        "vs direct",
        *([f"agent {cpu_unit}"] if agent else []),
        f"client {cpu_unit} (cores)",
    ]
    rows = []
    for path in PATHS:
        t = tallies[path]
        both = t.per_call_ms("scheduler", "envoy")
        client = t.per_call_ms("submitters")
        rows.append(
            [
                path + (" (SSE)" if micro and path == REST else ""),
                f"{t.rate:.0f}",
                " / ".join(f"{r:.0f}" for r in t.rates),
                f"{scale * t.per_call_ms('scheduler'):.3g}",
                f"{scale * t.per_call_ms('envoy'):.3g}",
                f"{scale * both:.3g}",
                f"{100 * (both / base - 1):+.0f} %" if base else "-",
                *([f"{scale * t.per_call_ms('agents'):.3g}"] if agent else []),
                f"{scale * client:.3g} ({client * t.rate / 1000:.2f})",
            ]
        )
    _table(headers, rows)
    rest, via = tallies[REST], tallies[GRPC_ENVOY]
    rest_cpu, via_cpu = (
        rest.per_call_ms("scheduler", "envoy"),
        via.per_call_ms("scheduler", "envoy"),
    )
    if base:
        print(
            f"Envoy adds {100 * (rest_cpu / base - 1):.0f} % to the CPU of a REST {unit} "
            f"((scheduler + Envoy) per REST {unit} / scheduler per direct gRPC {unit} - 1; "
            f"goal <= {GOAL_PERCENT:.0f} %); native gRPC through Envoy: "
            f"{100 * (via_cpu / base - 1):+.0f} %"
        )
    else:
        print(f"Envoy adds: not measured (too few {unit}s for /proc's clock ticks)")
    if via_cpu and via.rate:
        print(
            f"REST vs native gRPC, both through Envoy: {rest.rate / via.rate:.2f}x the rate, "
            f"{rest_cpu / via_cpu:.2f}x the scheduler + Envoy CPU per {unit}"
        )


def report(arguments: argparse.Namespace, results: Results) -> None:
    tallies = results.tallies
    print(
        f"machine: {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}; calibration loop "
        + " / ".join(f"{c:.0f}" for c in results.calibration_ms)
        + " ms (before / after)"
    )
    print(
        f"{arguments.rounds} rounds (path order rotating), {arguments.concurrency} concurrent "
        "callers; REST: httpx async, HTTP/1.1 keep-alive, one pooled connection per caller. "
        "CPU per call from /proc; client = this load generator, counted in no other column; "
        "idle (cores): "
        + ", ".join(f"{role} {cores:.3f}" for role, cores in results.idle_cores.items())
    )
    print(f"Envoy over the whole run: {results.connections}")
    _report(
        f"1. submissions, closed loop: {arguments.jobs} one-task jobs per path and round "
        "(tasks stay QUEUED); the rates",
        tallies["closed"],
        "submission",
    )
    _report(
        f"2. submissions paced at {arguments.rate:g}/s for every path: {arguments.paced_jobs} "
        "per path and round (tasks stay QUEUED); the overhead figure",
        tallies["paced"],
        "submission",
    )
    _report(
        f"3. end to end: {arguments.e2e_jobs} one-task echo jobs per path and round, closed "
        "loop, first submission to last SUCCEEDED",
        tallies["e2e"],
        "job",
        agent=True,
    )
    _report(
        f"4. WatchJob delivery: {arguments.watchers} concurrent streams, each replaying "
        f"{arguments.replays} finished jobs of {arguments.tasks} noop tasks "
        f"({'/'.join(map(str, results.events_per_job))} events each) per round",
        tallies["sse"],
        "event",
        micro=True,
    )


def run(arguments: argparse.Namespace) -> None:
    with (
        processes(replicas=1, agents_per_replica=1, slots=64, backend_env={}) as started,
        open(os.devnull, "w") as devnull,
    ):
        gateway = _gateway(started.addresses[0], arguments.template, devnull)
        try:
            envoy_address = gateway.start()
            pids = {
                "scheduler": started.pids["scheduler"],
                "agents": started.pids["agents"],
                "envoy": [gateway.process.pid] if gateway.process else [],
            }
            addresses = [started.addresses[0], envoy_address]
            results = asyncio.run(measure(arguments, pids, addresses))
            results.connections = _envoy_connections(gateway.admin_address)
        finally:
            gateway.stop()
    report(arguments, results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1500, help="submissions per path and round")
    parser.add_argument(
        "--paced-jobs", type=int, default=600, help="paced submissions per path and round"
    )
    parser.add_argument(
        "--rate", type=float, default=120.0, help="paced submissions/s (under REST's peak)"
    )
    parser.add_argument("--e2e-jobs", type=int, default=500, help="jobs per path and round")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    parser.add_argument("--watchers", type=int, default=16, help="concurrent WatchJob streams")
    parser.add_argument("--replays", type=int, default=4, help="jobs each watcher reads a round")
    parser.add_argument("--watch-jobs", type=int, default=4, help="finished jobs to replay")
    parser.add_argument("--tasks", type=int, default=100, help="noop tasks per watched job")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="idle CPU sample")
    parser.add_argument(
        "--template", default="", help="another envoy.yaml.j2 to render (experiments)"
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
