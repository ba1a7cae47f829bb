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
import contextlib
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench.server_cpu and tests/fixtures

from bench.bench_throughput import (  # noqa: E402
    ADMIN_URL,
    ONE_TASK,
    REDIS_URL,
    Started,
    calibration_ms,
)
from bench.server_cpu import Operation, Workload, measure  # noqa: E402
from cpa.scheduler.v1 import scheduler_service_pb2 as pb  # noqa: E402
from cpa.scheduler.v1 import scheduler_service_pb2_grpc  # noqa: E402
from tests.fixtures.cluster import fresh_backends  # noqa: E402

# High enough that no call of the bench is refused: only the limiter's work is measured.
NEVER_REFUSED = str(10**9)


async def _get_job(channel: grpc.aio.Channel, started: Started) -> Operation:
    stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
    created = await stub.ScheduleJob(pb.ScheduleJobRequest(spec=ONE_TASK))
    request = pb.GetJobRequest(job_id=created.job.job_id)
    return lambda: stub.GetJob(request)


GET_JOB = Workload(prepare=_get_job)


def _run(
    label: str, env: dict[str, str], *, calls: int, concurrency: int, distributed: bool
) -> tuple[float, float]:
    """One server run; returns (scheduler CPU µs per call, Redis CPU µs per call)."""
    measured = measure(
        env, GET_JOB, operations=calls, concurrency=concurrency, distributed=distributed
    )
    print(measured.line(label, distributed=distributed))
    return measured.server_us_per_call, measured.redis_us_per_call


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
