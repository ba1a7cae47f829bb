"""Dispatch cost against the number of connected agents: N idle agent streams stay connected
while one-task jobs flow through a few real agents.

Starts `cpa serve` (embedded) and real benchmark agents (bench_agent.py) as processes, then
worker processes that each hold many raw Connect streams (hello, a credit, heartbeats at the
interval the welcome names; no executor). The idle streams offer an action no job asks for, so
they never get work but are sessions with free credits, like agents waiting for other work.
Prints per scale: the server's CPU per job (from /proc, while the jobs flow) and the same net of
the idle streams' upkeep (the server's CPU per second with no jobs, i.e. heartbeats, times the
flow's duration, taken off), that idle CPU per second, jobs/s, and heartbeat-ack latency p50/p99
as the idle streams saw it while the jobs flowed.

    python bench/bench_agents_scale.py [--idle 250 1000 5000] [--jobs 3000] [--workers 4]
                                       [--idle-heartbeat-s 7.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench.bench_throughput, and through it tests/fixtures

import grpc  # noqa: E402

from bench.bench_throughput import (  # noqa: E402
    ONE_TASK,
    CpuMeter,
    _percentile,
    _wait_agents,
    calibration_ms,
    processes,
    throughput,
)
from cpa.common.v1 import agent_capabilities_pb2  # noqa: E402
from cpa.executor.v1 import executor_service_pb2 as ex  # noqa: E402
from cpa.executor.v1 import executor_service_pb2_grpc  # noqa: E402
from cpa_client import SchedulerClient  # noqa: E402

# Streams per gRPC channel (one HTTP/2 connection) in a worker.
STREAMS_PER_CHANNEL = 100
# Streams a worker opens at once (it waits for their welcomes before the next wave).
CONNECT_WAVE = 100


# -- the worker: many idle streams in one process ---------------------------------------------


async def _idle_stream(
    stub: executor_service_pb2_grpc.ExecutorServiceAsyncStub,
    agent_id: str,
    welcomed: asyncio.Event,
    latencies: list[float],
    recording: asyncio.Event,
) -> None:
    outgoing: asyncio.Queue[ex.ConnectRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[ex.ConnectRequest]:
        while True:
            yield await outgoing.get()

    capabilities = agent_capabilities_pb2.AgentCapabilities(actions=["idle-only"], slots=4)
    outgoing.put_nowait(
        ex.ConnectRequest(hello=ex.Hello(agent_id=agent_id, capabilities=capabilities))
    )
    call = stub.Connect(requests())
    sent_at: list[float] = []
    interval_s = 3.0
    async for message in call:
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            welcome = message.welcome
            interval_s = welcome.heartbeat_interval.ToNanoseconds() / 1e9
            # These streams never run an attempt: the idle interval, when the server names one.
            interval_s = max(interval_s, welcome.idle_heartbeat_interval.ToNanoseconds() / 1e9)
            outgoing.put_nowait(ex.ConnectRequest(credit=ex.Credit(slots=4)))
            welcomed.set()
            break
    else:
        raise RuntimeError(f"{agent_id}: no welcome")

    async def beat() -> None:
        # Spread the streams' heartbeats over the interval, as independent agents are.
        await asyncio.sleep(interval_s * (hash(agent_id) % 1000) / 1000)
        while True:
            sent_at.append(time.monotonic())
            outgoing.put_nowait(ex.ConnectRequest(heartbeat=ex.Heartbeat()))
            await asyncio.sleep(interval_s)

    beater = asyncio.create_task(beat())
    try:
        async for message in call:
            if message.WhichOneof("kind") == "heartbeat_ack" and sent_at:
                latency_ms = (time.monotonic() - sent_at.pop(0)) * 1000
                if recording.is_set():
                    latencies.append(latency_ms)
    finally:
        beater.cancel()


async def _worker(target: str, prefix: str, count: int) -> None:
    """Holds `count` idle streams; prints "ready" once all are welcomed, starts recording ack
    latencies at "go" on stdin and prints them as JSON at "stop"."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(-(-count // STREAMS_PER_CHANNEL))]
    stubs: list[executor_service_pb2_grpc.ExecutorServiceAsyncStub] = [
        executor_service_pb2_grpc.ExecutorServiceStub(c) for c in channels
    ]
    latencies: list[float] = []
    recording = asyncio.Event()
    welcomes = [asyncio.Event() for _ in range(count)]
    streams = []
    # In waves: thousands of hellos at once overrun gRPC's pending-call limits (issue 11.15).
    for start in range(0, count, CONNECT_WAVE):
        wave = range(start, min(count, start + CONNECT_WAVE))
        streams += [
            asyncio.create_task(
                _idle_stream(
                    stubs[n // STREAMS_PER_CHANNEL],
                    f"{prefix}-{n}",
                    welcomes[n],
                    latencies,
                    recording,
                )
            )
            for n in wave
        ]
        async with asyncio.timeout(60):
            await asyncio.gather(*(welcomes[n].wait() for n in wave))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while (line := (await reader.readline()).decode().strip()) != "stop":
        if line == "go":
            latencies.clear()
            recording.set()
        elif not line:
            break
    print(json.dumps(latencies), flush=True)
    for stream in streams:
        stream.cancel()
    for channel in channels:
        await channel.close(grace=None)


# -- the driver --------------------------------------------------------------------------------


def _start_workers(target: str, idle: int, workers: int) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "CPA_RATE_LIMITS_ENABLED": "false"}
    started = []
    per_worker = [idle // workers + (1 if n < idle % workers else 0) for n in range(workers)]
    for n, count in enumerate(per_worker):
        if count == 0:
            continue
        started.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", target, f"idle{n}", str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    for process in started:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"an idle worker did not start: {line!r}")
    return started


def _tell(workers: list[subprocess.Popen[str]], line: str) -> None:
    for process in workers:
        assert process.stdin is not None
        process.stdin.write(line + "\n")
        process.stdin.flush()


async def run_scale(idle: int, arguments: argparse.Namespace) -> dict[str, float]:
    with processes(
        replicas=1,
        agents_per_replica=arguments.agents,
        slots=arguments.slots,
        backend_env={"CPA_IDLE_HEARTBEAT_INTERVAL_S": str(arguments.idle_heartbeat_s)},
    ) as started:
        target = started.addresses[0]
        server_pid = started.pids["scheduler"][0]
        workers = _start_workers(target, idle, arguments.workers) if idle else []
        try:
            async with SchedulerClient(target, timeout_s=60) as client:
                await _wait_agents(client, idle + arguments.agents)
                clients = [client]
                # Warm-up: the first jobs pay for imports and caches.
                await throughput(clients, 200, 8, ONE_TASK)
                quiet = CpuMeter({"scheduler": [server_pid]}, distributed=False)
                quiet.start()
                await asyncio.sleep(arguments.quiet_s)
                quiet.stop()
                _tell(workers, "go")
                meter = CpuMeter({"scheduler": [server_pid]}, distributed=False)
                figures = await throughput(
                    clients, arguments.jobs, arguments.concurrency, ONE_TASK, meter
                )
            _tell(workers, "stop")
            latencies: list[float] = []
            for process in workers:
                assert process.stdout is not None
                latencies += json.loads(process.stdout.readline())
        finally:
            for process in workers:
                process.terminate()
            for process in workers:
                process.wait(timeout=15)
    idle_cpu_per_s = quiet.used_s["scheduler"] / quiet.elapsed_s
    return {
        "idle": idle,
        "cpu_per_job_ms": meter.used_s["scheduler"] / figures["jobs"] * 1000,
        # What the jobs cost beyond the idle streams' own upkeep (heartbeats) meanwhile.
        "net_cpu_per_job_ms": (meter.used_s["scheduler"] - idle_cpu_per_s * meter.elapsed_s)
        / figures["jobs"]
        * 1000,
        "idle_cpu_per_s_ms": idle_cpu_per_s * 1000,
        "jobs_per_s": figures["end_to_end_per_s"],
        "ack_p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "ack_p99_ms": _percentile(latencies, 99) if latencies else float("nan"),
        "acks": len(latencies),
    }


async def run(arguments: argparse.Namespace) -> None:
    print(f"calibration loop: {calibration_ms():.0f} ms (lower is a faster machine right now)")
    print(
        f"{arguments.jobs} one-task jobs, {arguments.concurrency} submitters, "
        f"{arguments.agents} real agent(s) x {arguments.slots} slots, idle heartbeat interval "
        f"{arguments.idle_heartbeat_s or 'as busy'}"
    )
    print(
        "idle streams | server CPU/job (net of idle) | server CPU/s idle | jobs/s "
        "| hb ack p50 / p99"
    )
    rows: dict[int, list[dict[str, float]]] = {idle: [] for idle in arguments.idle}
    # Rounds alternate the scales, so a drift of the machine's speed touches each alike.
    for _ in range(arguments.rounds):
        for idle in arguments.idle:
            started = time.monotonic()
            row = await run_scale(idle, arguments)
            rows[idle].append(row)
            print(
                f"{idle:>12} | {row['cpu_per_job_ms']:.2f} ms ({row['net_cpu_per_job_ms']:.2f} ms)"
                f" | {row['idle_cpu_per_s_ms']:>14.0f} ms | {row['jobs_per_s']:>6.0f}"
                f" | {row['ack_p50_ms']:.1f} / {row['ack_p99_ms']:.1f} ms"
                f"  ({row['acks']} acks, {time.monotonic() - started:.0f} s)",
                flush=True,
            )
    if arguments.rounds > 1 and len(arguments.idle) > 1:
        _ratios(rows, arguments.idle[0], arguments.idle[-1])


def _ratios(rows: dict[int, list[dict[str, float]]], low: int, high: int) -> None:
    """Medians over the rounds, and the largest scale's CPU per job against the smallest's."""

    def median(idle: int, key: str) -> float:
        return statistics.median(row[key] for row in rows[idle])

    for idle in (low, high):
        print(
            f"median {idle:>5} | {median(idle, 'cpu_per_job_ms'):.2f} ms"
            f" ({median(idle, 'net_cpu_per_job_ms'):.2f} ms)"
            f" | {median(idle, 'idle_cpu_per_s_ms'):.0f} ms | {median(idle, 'jobs_per_s'):.0f}"
        )
    for key, label in (("cpu_per_job_ms", "total"), ("net_cpu_per_job_ms", "net")):
        per_round = [h[key] / lo[key] for lo, h in zip(rows[low], rows[high], strict=True)]
        print(
            f"{high} / {low} idle streams, CPU per job ({label}): median of medians "
            f"{median(high, key) / median(low, key):.2f}x; per round "
            + ", ".join(f"{ratio:.2f}x" for ratio in per_round)
        )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        asyncio.run(_worker(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--agents", type=int, default=1, help="real agent processes")
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4, help="processes holding idle streams")
    parser.add_argument(
        "--rounds", type=int, default=1, help="times the scales are run, in turn (medians)"
    )
    parser.add_argument("--quiet-s", type=float, default=3.0, help="idle CPU sample window")
    parser.add_argument(
        "--idle-heartbeat-s",
        type=float,
        default=0.0,
        help="the server's CPA_IDLE_HEARTBEAT_INTERVAL_S (0: idle agents beat as busy ones)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
