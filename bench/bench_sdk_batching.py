"""Submissions per second through the Python SDK, in one run against one embedded scheduler:
  1. 32 coroutines each calling schedule_job in a loop, with the SDK's transparent batching
     (one batch in flight, the default; and two);
  2. explicit BatchScheduleJobs of 20 (batch_schedule_jobs) from a few coroutines;
  3. the same 32 coroutines with batching off (one ScheduleJob per job).
No agent runs: jobs stay pending, so only the submission path is measured. The cases take turns
(1, 2, 3, 1, 2, 3...) so a drift of the shared machine weighs on each alike; the best round
of each is printed with the median.

    python bench/bench_sdk_batching.py [--jobs 3000] [--rounds 3] [--callers 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench_throughput's processes

from bench.bench_throughput import ONE_TASK, calibration_ms, processes  # noqa: E402
from cpa_client import SchedulerClient  # noqa: E402
from cpa_client.batching import DEFAULT_LINGER_S, DEFAULT_MAX_BATCH  # noqa: E402


async def _callers(jobs: int, callers: int, call: Callable[[], Awaitable[int]]) -> float:
    """Jobs per second of `callers` coroutines calling `call` (which creates some jobs)
    until `jobs` were created."""
    remaining = jobs

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            created = await call()  # not `remaining -= await ...`: that reads before awaiting
            remaining -= created

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return (jobs - remaining) / (time.perf_counter() - started)


async def _one(client: SchedulerClient) -> int:
    await client.schedule_job(ONE_TASK)
    return 1


async def _case(
    address: str, case: str, *, jobs: int, callers: int, batchers: int, settings: dict[str, float]
) -> tuple[float, int]:
    """Jobs per second of one case against a fresh scheduler, and the batches it sent."""
    kind, _, number = case.partition("-")
    if kind == "batching":
        client = SchedulerClient(
            address,
            timeout_s=120,
            max_batches_in_flight=int(number),
            batch_linger_s=settings.get("batch_linger_s", DEFAULT_LINGER_S),
            max_batch=int(settings.get("max_batch", DEFAULT_MAX_BATCH)),
        )
    else:
        client = SchedulerClient(address, timeout_s=120, batch_linger_s=0)
    batch = [ONE_TASK] * 20

    async def explicit() -> int:
        return len(await client.batch_schedule_jobs(batch))

    async def measure(n: int) -> float:
        if kind == "explicit":
            return await _callers(n, batchers, explicit)
        return await _callers(n, callers, lambda: _one(client))

    try:
        await measure(100)  # warm-up: the connection, the server's caches and SQLite pages
        return await measure(jobs), client.batches_sent
    finally:
        await client.close()


def run(
    *, jobs: int, rounds: int, callers: int, batchers: list[int], settings: dict[str, float]
) -> None:
    # A fresh scheduler per case and round: a pending job (no agent runs) makes the next
    # submission dearer, so cases sharing a server would be measured unlike each other.
    names = {
        **{
            f"batching-{n}": f"{callers} callers x schedule_job, batching on, {n} in flight"
            for n in (1, 2)
        },
        **{f"explicit-{n}": f"explicit BatchScheduleJobs of 20, {n} callers" for n in batchers},
        "off": f"{callers} callers x schedule_job, batching off",
    }
    figures: dict[str, list[float]] = {case: [] for case in names}
    batches = 0
    for _ in range(rounds):
        for case in names:  # taking turns: a drift of the shared machine weighs on each alike
            with processes(replicas=1, agents_per_replica=0, slots=1, backend_env={}) as started:
                rate, sent = asyncio.run(
                    _case(
                        started.addresses[0],
                        case,
                        jobs=jobs,
                        callers=callers,
                        batchers=int(case.rpartition("-")[2]) if "explicit" in case else 0,
                        settings=settings,
                    )
                )
            figures[case].append(rate)
            batches += sent
    print(f"{'case':62} {'best':>6} {'median':>6}  jobs/s; {jobs} jobs x {rounds} rounds")
    for case, values in figures.items():
        print(f"{names[case]:62} {max(values):6.0f} {statistics.median(values):6.0f}")
    print(f"BatchScheduleJobs calls made by the batching clients: {batches}; settings {settings}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument(
        "--batchers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="coroutines sending explicit batches of 20 (a case per number)",
    )
    parser.add_argument("--linger-s", type=float, help="the SDK's batch_linger_s (default 2 ms)")
    parser.add_argument("--max-batch", type=int, help="the SDK's max_batch")
    args = parser.parse_args()
    settings: dict[str, float] = {}
    if args.linger_s is not None:
        settings["batch_linger_s"] = args.linger_s
    if args.max_batch is not None:
        settings["max_batch"] = args.max_batch
    print(
        f"{platform.node()} python {platform.python_version()};",
        f"calibration {calibration_ms():.0f} ms",
    )
    # Authentication off (loopback only): the credential check is not what is measured here.
    os.environ["CPA_INSECURE_LOCAL"] = "true"
    run(
        jobs=args.jobs,
        rounds=args.rounds,
        callers=args.callers,
        batchers=args.batchers,
        settings=settings,
    )


if __name__ == "__main__":
    main()
