"""Watchers under progress: how many events one replica delivers, at what CPU cost, and whether
agents' heartbeats still get their acks in time while it does.

Starts `cpa serve` (embedded), a producer agent process whose `tick` tasks report progress at
`--rate` events/s each (one task per job, `--jobs` jobs), `--client-processes` processes that
open `--watchers` WatchJob streams between them (spread evenly over the jobs, read as raw bytes
so the clients spend little CPU), and a probe: a hand-driven agent stream that holds one running
attempt and sends a heartbeat every `--heartbeat-interval` s and a progress report (with a
report id) every `--progress-interval` s, timing the server's heartbeat acks and report acks.

Once every watcher is open it measures for `--seconds` (after `--warmup`) and prints
deliveries/s, the scheduler's CPU per delivered event, the watchers' delivery lag (event
creation to receipt, sampled) and the probe's heartbeat and progress ack latency p50/p99/max.

    python bench/bench_watchers.py [--watchers 1000] [--jobs 50] [--rate 5] [--seconds 20]
                                   [--client-nice 19]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench_throughput's CPU meter

from bench.bench_throughput import CpuMeter, calibration_ms  # noqa: E402
from cpa.common.v1 import agent_capabilities_pb2, todo_pb2  # noqa: E402
from cpa.executor.v1 import executor_service_pb2 as ex  # noqa: E402
from cpa.executor.v1 import executor_service_pb2_grpc  # noqa: E402
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2  # noqa: E402
from cpa_client import SchedulerClient  # noqa: E402

WATCH_METHOD = "/cpa.scheduler.v1.SchedulerService/WatchJob"
# Streams per client channel (one TCP connection each).
STREAMS_PER_CHANNEL = 250
# Streams being opened at once per client process (each until its first message), and how
# often an open refused by the server is tried.
OPENING_AT_ONCE = 200
OPEN_ATTEMPTS = 5
# One delivered message in this many is decoded to measure its lag.
LAG_SAMPLE_EVERY = 50


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _summary_ms(values_s: list[float]) -> str:
    if not values_s:
        return "no samples"
    p50, p99 = (_percentile(values_s, fraction) * 1000 for fraction in (0.5, 0.99))
    worst = max(values_s) * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms ({len(values_s)} samples)"


def _window_from_stdin() -> tuple[float, float]:
    """The measuring window (wall-clock start, end) the main process sends once all are ready."""
    start, end = sys.stdin.readline().split()
    return float(start), float(end)


# -- the producer: an agent whose tasks report progress ------------------------------------------


def run_producer(server: str, slots: int) -> None:
    from cpa_agent import Agent, AgentSettings, ExecutionContext, builtin_registry

    class Tick:
        """Reports progress every params["interval_s"] until cancelled, once the file
        params["go_file"] exists (the watchers open while nothing happens)."""

        action = "tick"

        async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
            interval_s = float(ctx.params["interval_s"])
            go_file = Path(str(ctx.params["go_file"]))
            # Another process creates the file: polling it is the simple way to hear of it.
            while not go_file.exists():  # noqa: ASYNC110, ASYNC240
                await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            next_s = loop.time()
            n = 0
            while True:
                n += 1
                await ctx.progress(float(n % 100), f"tick {n}")
                next_s += interval_s
                await asyncio.sleep(max(0.0, next_s - loop.time()))

    registry = builtin_registry()
    registry.register(Tick())
    settings = AgentSettings(server=server, agent_id="producer", slots=slots)
    Agent(settings=settings, registry=registry).run()


# -- the watchers ------------------------------------------------------------------------------


async def _watchers(server: str, job_ids: list[str]) -> None:
    channels = [
        grpc.aio.insecure_channel(server, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, -(-len(job_ids) // STREAMS_PER_CHANNEL)))
    ]
    window: list[float] = [float("inf"), float("inf")]
    counts = [0]
    lags: list[float] = []
    first = asyncio.Event()
    opened = [0]
    failures: dict[str, int] = {}

    opening = asyncio.Semaphore(OPENING_AT_ONCE)
    latest: dict[str, int] = {}
    get_job = channels[0].unary_unary(
        "/cpa.scheduler.v1.SchedulerService/GetJob",
        request_serializer=scheduler_service_pb2.GetJobRequest.SerializeToString,
        response_deserializer=scheduler_service_pb2.GetJobResponse.FromString,
    )
    for job_id in set(job_ids):
        response = await get_job(scheduler_service_pb2.GetJobRequest(job_id=job_id))
        latest[job_id] = response.job.last_event_sequence
    retried = [0]

    def one_open() -> None:
        opened[0] += 1
        if opened[0] == len(job_ids):
            first.set()

    async def watch(index: int, job_id: str) -> None:
        channel = channels[index % len(channels)]
        method = channel.unary_stream(
            WATCH_METHOD,
            request_serializer=scheduler_service_pb2.WatchJobRequest.SerializeToString,
            response_deserializer=None,  # raw bytes: counting costs the client little
        )
        seen = 0
        await opening.acquire()
        for attempt in range(OPEN_ATTEMPTS):
            # From the newest event this process has seen of the job: the watchers follow the
            # live feed, they do not all replay the job's (growing) history.
            request = scheduler_service_pb2.WatchJobRequest(
                job_id=job_id, after_sequence=max(0, latest[job_id] - 1)
            )
            try:
                async for raw in method(request):
                    seen += 1
                    if seen == 1:
                        sequence = scheduler_service_pb2.WatchJobResponse.FromString(
                            raw
                        ).event.sequence
                        latest[job_id] = max(latest[job_id], sequence)
                        opening.release()
                        one_open()
                    now = time.time()
                    if window[0] <= now < window[1]:
                        counts[0] += 1
                        if counts[0] % LAG_SAMPLE_EVERY == 0:
                            sampled = scheduler_service_pb2.WatchJobResponse.FromString(raw)
                            if sampled.HasField("event"):  # not a heartbeat
                                created = sampled.event.create_time.ToNanoseconds() / 1e9
                                lags.append(now - created)
                return
            except grpc.aio.AioRpcError as error:
                if seen == 0 and attempt + 1 < OPEN_ATTEMPTS:
                    retried[0] += 1  # refused while opening: try again, as a client would
                    if retried[0] <= 3:
                        print(
                            f"open refused: {error.code().name} {error.details()}", file=sys.stderr
                        )
                    await asyncio.sleep(0.5)
                    continue
                name = error.code().name
                failures[name] = failures.get(name, 0) + 1
                if seen == 0:
                    opening.release()
                    one_open()
                return

    tasks = [asyncio.create_task(watch(n, job_id)) for n, job_id in enumerate(job_ids)]
    await first.wait()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    window[0], window[1] = await loop.run_in_executor(None, _window_from_stdin)
    await asyncio.sleep(max(0.0, window[1] - time.time()) + 0.2)
    result = {"deliveries": counts[0], "lags": lags, "failures": failures, "retried": retried[0]}
    print(json.dumps(result), flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(grace=None)


def run_watchers(server: str, job_ids_file: str, nice: int) -> None:
    if nice:
        # Watchers are remote in service: on a shared machine, a lower priority keeps the
        # load generator from taking the scheduler's cores.
        os.nice(nice)
    job_ids = Path(job_ids_file).read_text().split()
    asyncio.run(_watchers(server, job_ids))


# -- the probe: one agent stream, timed ------------------------------------------------------


async def _probe(server: str, heartbeat_interval_s: float, progress_interval_s: float) -> None:
    channel = grpc.aio.insecure_channel(server)
    outgoing: asyncio.Queue[ex.ConnectRequest] = asyncio.Queue()

    async def requests() -> Any:
        while True:
            yield await outgoing.get()

    call = executor_service_pb2_grpc.ExecutorServiceStub(channel).Connect(requests())
    capabilities = agent_capabilities_pb2.AgentCapabilities(actions=["probe"], slots=1)
    outgoing.put_nowait(
        ex.ConnectRequest(hello=ex.Hello(agent_id="probe", capabilities=capabilities))
    )
    outgoing.put_nowait(ex.ConnectRequest(credit=ex.Credit(slots=1)))
    assignment: ex.Assignment | None = None
    heartbeats_sent: list[float] = []  # acks come back in order
    reports_sent: dict[int, float] = {}
    heartbeat_lat: list[tuple[float, float]] = []
    progress_lat: list[tuple[float, float]] = []
    stale = [0]
    ready = asyncio.Event()

    async def read() -> None:
        nonlocal assignment
        async for message in call:
            now = time.time()
            kind = message.WhichOneof("kind")
            messages = message.batch.responses if kind == "batch" else [message]
            for inner in messages:
                kind = inner.WhichOneof("kind")
                if kind == "assignment":
                    assignment = inner.assignment
                    ready.set()
                elif kind == "heartbeat_ack":
                    sent = heartbeats_sent.pop(0)
                    heartbeat_lat.append((sent, now - sent))
                    stale[0] += len(inner.heartbeat_ack.stale_attempts)
                elif kind == "report_ack":
                    sent = reports_sent.pop(inner.report_ack.report_id)
                    progress_lat.append((sent, now - sent))

    reader = asyncio.create_task(read())
    print("ready", flush=True)
    await asyncio.wait_for(ready.wait(), 60)
    assert assignment is not None
    running = ex.RunningAttempt(
        job_id=assignment.job_id, task_id=assignment.todo.id, attempt=assignment.attempt
    )

    async def heartbeats() -> None:
        while True:
            heartbeats_sent.append(time.time())
            outgoing.put_nowait(
                ex.ConnectRequest(heartbeat=ex.Heartbeat(running_attempts=[running]))
            )
            await asyncio.sleep(heartbeat_interval_s)

    async def progress() -> None:
        report_id = 0
        while True:
            report_id += 1
            reports_sent[report_id] = time.time()
            outgoing.put_nowait(
                ex.ConnectRequest(
                    report_id=report_id,
                    progress=ex.Progress(
                        job_id=running.job_id,
                        task_id=running.task_id,
                        attempt=running.attempt,
                        message=f"probe {report_id}",
                    ),
                )
            )
            await asyncio.sleep(progress_interval_s)

    # From now on, so that the attempt keeps its lease while the watchers open.
    senders = [asyncio.create_task(heartbeats()), asyncio.create_task(progress())]
    loop = asyncio.get_running_loop()
    start, end = await loop.run_in_executor(None, _window_from_stdin)
    await asyncio.sleep(max(0.0, end - time.time()) + 1.0)
    for task in senders:
        task.cancel()
    unanswered = [time.time() - sent for sent in heartbeats_sent if start <= sent < end]
    result = {
        "heartbeat": [lat for sent, lat in heartbeat_lat if start <= sent < end],
        "progress": [lat for sent, lat in progress_lat if start <= sent < end],
        "unanswered_heartbeats": len(unanswered),
        "unanswered_reports": sum(1 for sent in reports_sent.values() if start <= sent < end),
        "stale": stale[0],
        "acks_total": len(heartbeat_lat),
        "oldest_unanswered_s": max([time.time() - sent for sent in heartbeats_sent], default=0),
    }
    print(json.dumps(result), flush=True)
    reader.cancel()
    call.cancel()
    await channel.close(grace=None)


def run_probe(server: str, heartbeat_interval_s: float, progress_interval_s: float) -> None:
    asyncio.run(_probe(server, heartbeat_interval_s, progress_interval_s))


# -- the main process ------------------------------------------------------------------------


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _expect(process: subprocess.Popen[str], word: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != word:
        raise RuntimeError(f"expected {word!r} from a bench process, got {line!r}")


async def _schedule(server: str, jobs: int, rate: float, go_file: Path) -> list[str]:
    tick = todo_pb2.ToDo(id="tick", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="tick")
    tick.params.update({"interval_s": 1.0 / rate, "go_file": str(go_file)})
    probe = todo_pb2.ToDo(id="probe", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="probe")
    async with SchedulerClient(server, timeout_s=60) as client:
        job_ids = []
        for _ in range(jobs):
            response = await client.schedule_job(
                job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[tick]))
            )
            job_ids.append(response.job.job_id)
        await client.schedule_job(job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[probe])))
        # Every tick task runs (waiting for the go file) before the watchers open.
        for job_id in job_ids:
            async for event in client.watch_job(job_id):
                if event.task_state_changed.to_state == job_pb2.TASK_STATE_RUNNING:
                    break
        return job_ids


async def _cancel_all(server: str, job_ids: list[str]) -> None:
    async with SchedulerClient(server, timeout_s=60) as client:
        for job_id in job_ids:
            with contextlib.suppress(Exception):
                await client.cancel_job(job_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["main", "producer", "watchers", "probe"], default="main")
    parser.add_argument("--server", default="")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--rate", type=float, default=5.0, help="progress events/s per job")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="niceness of the watcher client processes (e.g. 19: they take only idle CPU)",
    )
    parser.add_argument("--heartbeat-interval", type=float, default=0.1)
    parser.add_argument("--progress-interval", type=float, default=0.2)
    parser.add_argument("--job-ids-file", default="")
    parser.add_argument("--slots", type=int, default=0)
    parser.add_argument(
        "--serve-script", default="", help="a script to run instead of `cpa serve` (profiling)"
    )
    arguments = parser.parse_args()
    if arguments.role == "producer":
        return run_producer(arguments.server, arguments.slots)
    if arguments.role == "watchers":
        return run_watchers(arguments.server, arguments.job_ids_file, arguments.client_nice)
    if arguments.role == "probe":
        return run_probe(
            arguments.server, arguments.heartbeat_interval, arguments.progress_interval
        )
    bench(arguments)


def bench(arguments: argparse.Namespace) -> None:
    env = {
        **os.environ,
        "CPA_LOG_LEVEL": "WARNING",
        # Authentication off (loopback only), as in bench_throughput: its cost is bench_auth's.
        "CPA_INSECURE_LOCAL": "true",
        "CPA_RATE_LIMITS_ENABLED": "false",
        "CPA_AGENT_LOG_LEVEL": "WARNING",
        # A lease long enough that a slow ack never loses an attempt during the bench.
        "CPA_LEASE_DURATION_S": "120",
    }
    python = platform.python_version()
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {python}")
    print(f"calibration loop: {calibration_ms():.0f} ms")
    data_dir = tempfile.mkdtemp(prefix="cpa-bench-watchers-")
    serve = ["-m", "cpa_cli", "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir]
    if arguments.serve_script:  # e.g. a scheduler under a profiler
        serve = [arguments.serve_script]
    server = subprocess.Popen(
        [sys.executable, *serve],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    children: list[subprocess.Popen[str]] = [server]
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "serving on" not in line:
            raise RuntimeError(f"scheduler did not start: {line!r}")
        address = line.rsplit(" ", 1)[1].strip()
        producer = _spawn(
            ["--role", "producer", "--server", address, "--slots", str(arguments.jobs)], env
        )
        children.append(producer)
        probe = _spawn(
            [
                "--role",
                "probe",
                "--server",
                address,
                "--heartbeat-interval",
                str(arguments.heartbeat_interval),
                "--progress-interval",
                str(arguments.progress_interval),
            ],
            env,
        )
        children.append(probe)
        _expect(probe, "ready")
        go_file = Path(data_dir) / "go"
        job_ids = asyncio.run(_schedule(address, arguments.jobs, arguments.rate, go_file))
        watched = [job_ids[n % len(job_ids)] for n in range(arguments.watchers)]
        clients = []
        for n in range(arguments.client_processes):
            share = watched[n :: arguments.client_processes]
            ids_file = Path(data_dir) / f"watch-{n}.txt"
            ids_file.write_text("\n".join(share))
            client = _spawn(
                [
                    *("--role", "watchers", "--server", address),
                    *("--job-ids-file", str(ids_file), "--client-nice", str(arguments.client_nice)),
                ],
                env,
            )
            clients.append(client)
            children.append(client)
        opening = time.monotonic()
        for client in clients:
            _expect(client, "ready")
        print(f"{arguments.watchers} watchers open in {time.monotonic() - opening:.1f}s")
        go_file.touch()
        start = time.time() + arguments.warmup
        end = start + arguments.seconds
        for process in [probe, *clients]:
            assert process.stdin is not None
            process.stdin.write(f"{start} {end}\n")
            process.stdin.flush()
        meter = CpuMeter(
            {
                "scheduler": [server.pid],
                "producer": [producer.pid],
                "watchers": [c.pid for c in clients],
                "probe": [probe.pid],
            },
            distributed=False,
        )
        time.sleep(max(0.0, start - time.time()))
        meter.start()
        time.sleep(max(0.0, end - time.time()))
        meter.stop()
        results = []
        for process in [probe, *clients]:
            assert process.stdout is not None
            results.append(json.loads(process.stdout.readline()))
        asyncio.run(_cancel_all(address, job_ids))
    finally:
        for process in reversed(children):
            process.terminate()
        for process in children:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    probe_result, watcher_results = results[0], results[1:]
    deliveries = sum(r["deliveries"] for r in watcher_results)
    lags = [lag for r in watcher_results for lag in r["lags"]]
    failures: dict[str, int] = {}
    for r in watcher_results:
        for name, count in r["failures"].items():
            failures[name] = failures.get(name, 0) + count
    seconds = arguments.seconds
    offered = arguments.watchers * arguments.rate
    scheduler_cpu = meter.used_s["scheduler"]
    print(
        f"watchers {arguments.watchers} on {arguments.jobs} jobs at {arguments.rate:g} events/s "
        f"(offered {offered:.0f} deliveries/s), {seconds:g}s measured"
    )
    retried = sum(r["retried"] for r in watcher_results)
    print(
        f"deliveries: {deliveries / seconds:.0f}/s; failed streams: {failures or 'none'}; "
        f"opens retried: {retried}"
    )
    print(f"delivery lag (event created -> watcher): {_summary_ms(lags)}")
    print(
        f"scheduler CPU: {scheduler_cpu / seconds:.2f} cores, "
        f"{scheduler_cpu / max(1, deliveries) * 1e6:.1f} us per delivered event"
    )
    print(
        "other CPU (cores): "
        + ", ".join(
            f"{role} {used / seconds:.2f}"
            for role, used in meter.used_s.items()
            if role != "scheduler"
        )
    )
    print(f"heartbeat ack: {_summary_ms(probe_result['heartbeat'])}")
    print(f"progress ack:  {_summary_ms(probe_result['progress'])}")
    print(
        f"unanswered in the window: {probe_result['unanswered_heartbeats']} heartbeats, "
        f"{probe_result['unanswered_reports']} reports; stale attempts: {probe_result['stale']}; "
        f"heartbeat acks in all {probe_result['acks_total']}, oldest unanswered "
        f"{probe_result['oldest_unanswered_s']:.1f}s"
    )


if __name__ == "__main__":
    main()
