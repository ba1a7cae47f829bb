"""The scheduler's CPU per call for one closed-loop workload, the measure that the benches of an
optional layer (bench_rate_limits.py, bench_auth.py) compare between a run with the layer off and
one with it on: `cpa serve` started with the run's environment, a warm-up (not measured), then
C callers repeating one operation until N are done, the scheduler process' CPU read from /proc
around them (bench_throughput.py's CpuMeter)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from bench.bench_throughput import CpuMeter, Started, processes

# One operation of the workload: a few calls (`Workload.calls_per_operation`).
Operation = Callable[[], Awaitable[object]]
# Given the channel to the started scheduler (and the run's processes: data dirs, for a key),
# prepares what the operation needs and returns it.
Prepare = Callable[[grpc.aio.Channel, Started], Awaitable[Operation]]


@dataclass(frozen=True)
class Workload:
    prepare: Prepare
    calls_per_operation: int = 1
    warmup_operations: int = 200


@dataclass(frozen=True)
class Measured:
    calls_per_s: float
    server_us_per_call: float  # the scheduler process' CPU
    redis_us_per_call: float  # Redis' (the distributed mode), else 0

    def line(self, label: str, *, distributed: bool) -> str:
        return (
            f"{label:>22}: {self.calls_per_s:8.0f} calls/s   scheduler "
            f"{self.server_us_per_call:7.1f} µs CPU/call"
            + (f"   redis {self.redis_us_per_call:6.1f} µs CPU/call" if distributed else "")
        )


async def _closed_loop(
    address: str,
    started: Started,
    workload: Workload,
    meter: CpuMeter,
    *,
    operations: int,
    concurrency: int,
) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        operation = await workload.prepare(channel, started)
        for _ in range(workload.warmup_operations):  # connections, caches, Redis' script
            await operation()
        remaining = operations

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await operation()

        meter.start()
        begun = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.monotonic() - begun
        meter.stop()
        return elapsed


def measure(
    env: dict[str, str],
    workload: Workload,
    *,
    operations: int,
    concurrency: int,
    distributed: bool = False,
) -> Measured:
    """One `cpa serve` run with `env`: the scheduler's (and Redis') CPU per call."""
    with processes(replicas=1, agents_per_replica=0, slots=1, backend_env=env) as started:
        meter = CpuMeter(started.pids, distributed=distributed)
        elapsed = asyncio.run(
            _closed_loop(
                started.addresses[0],
                started,
                workload,
                meter,
                operations=operations,
                concurrency=concurrency,
            )
        )
    calls = operations * workload.calls_per_operation
    return Measured(
        calls_per_s=calls / elapsed,
        server_us_per_call=meter.used_s["scheduler"] / calls * 1e6,
        redis_us_per_call=meter.used_s.get("redis", 0.0) / calls * 1e6,
    )
