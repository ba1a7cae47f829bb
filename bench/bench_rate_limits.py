"""What rate limiting costs per call: the scheduler's CPU per call with the limiter off and on.

Starts `cpa serve` twice (limits off, then on with limits high enough never to refuse), sends the
same N cheap unary calls (GetJob of one job) from C concurrent callers over real gRPC, and prints
per run: calls/s, the scheduler process' CPU microseconds per call (from /proc), and the
difference the limiter makes. With --distributed the buckets live in Redis (one Lua script call
per call); Redis' own CPU per call is printed too. Figures from a busy or shared machine are
indicative only: compare runs of one sitting, and mind the calibration line.

    python bench/bench_rate_limits.py [--calls 5000] [--concurrency 16] [--distributed]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench_throughput's processes and CPU meter

from bench.bench_throughput import (  # noqa: E402
    ADMIN_URL,
    ONE_TASK,
    REDIS_URL,
    CpuMeter,
    calibration_ms,
    processes,
)
from cpa.scheduler.v1 import scheduler_service_pb2 as pb  # noqa: E402
from cpa.scheduler.v1 import scheduler_service_pb2_grpc  # noqa: E402
from tests.fixtures.cluster import fresh_backends  # noqa: E402

# High enough that no call of the bench is refused: only the limiter's work is measured.
NEVER_REFUSED = str(10**9)


async def _calls(address: str, *, calls: int, concurrency: int) -> float:
    """Sends `calls` GetJob calls from `concurrency` callers; returns the seconds taken."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        created = await stub.ScheduleJob(pb.ScheduleJobRequest(spec=ONE_TASK))
        request = pb.GetJobRequest(job_id=created.job.job_id)
        for _ in range(200):  # warm-up: connections, caches, the script loaded into Redis
            await stub.GetJob(request)
        remaining = calls

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await stub.GetJob(request)

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.monotonic() - started


def _run(
    label: str, env: dict[str, str], *, calls: int, concurrency: int, distributed: bool
) -> tuple[float, float]:
    """One server run; returns (scheduler CPU µs per call, Redis CPU µs per call)."""
    with processes(replicas=1, agents_per_replica=0, slots=1, backend_env=env) as started:
        meter = CpuMeter(started.pids, distributed=distributed)
        meter.start()
        elapsed = asyncio.run(_calls(started.addresses[0], calls=calls, concurrency=concurrency))
        meter.stop()
    server_us = meter.used_s["scheduler"] / calls * 1e6
    redis_us = meter.used_s.get("redis", 0.0) / calls * 1e6
    print(
        f"{label:>12}: {calls / elapsed:8.0f} calls/s   scheduler {server_us:7.1f} µs CPU/call"
        + (f"   redis {redis_us:6.1f} µs CPU/call" if distributed else "")
    )
    return server_us, redis_us


@contextlib.contextmanager
def _backend_env(distributed: bool) -> Iterator[dict[str, str]]:
    if not distributed:
        yield {}
        return
    with fresh_backends(ADMIN_URL, REDIS_URL, prefix="cpa_bench_rl") as backends:
        yield backends.env()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--distributed", action="store_true", help="buckets in Redis")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, calibration {calibration_ms():.0f} ms "
        f"(lower is a faster machine), {args.calls} GetJob calls, {args.concurrency} callers, "
        f"{'distributed (Redis buckets)' if args.distributed else 'embedded (in-process buckets)'}"
    )
    with _backend_env(args.distributed) as env:
        off, _ = _run(
            "limits off",
            {**env, "CPA_RATE_LIMITS_ENABLED": "false"},
            calls=args.calls,
            concurrency=args.concurrency,
            distributed=args.distributed,
        )
        on, _ = _run(
            "limits on",
            {
                **env,
                "CPA_RATE_LIMITS_ENABLED": "true",
                "CPA_RATE_LIMIT_PER_KEY": NEVER_REFUSED,
                "CPA_RATE_LIMIT_PER_IP": NEVER_REFUSED,
            },
            calls=args.calls,
            concurrency=args.concurrency,
            distributed=args.distributed,
        )
    print(
        f"the limiter's cost: {on - off:+.1f} µs CPU/call ({(on - off) / off:+.1%} of the server's)"
    )


if __name__ == "__main__":
    main()
