"""What Prometheus metrics cost: end-to-end throughput and the scheduler's CPU per job with
metrics off and on (CPA_METRICS_ADDRESS set), in the same run, rounds alternating off/on.

Each round starts `cpa serve` (embedded SQLite store) and a benchmark agent as processes
(bench_throughput.processes) and runs one-task jobs from C submitters (bench_throughput.
throughput). With metrics on the server counts every committed transition, times store
transactions and RPCs, and serves /metrics; the bench scrapes it once a second, as a Prometheus
with a short interval would. The goal (issue 17): metrics on cost ≤ 5 %. On a shared machine
compare the medians of the rounds, and mind the calibration line.

`--paired`: in each round the off and the on server run at the same time, each with its own
agent and submitters, so both see the same load from whatever else runs on the machine; the
figure is the median of the rounds' on/off ratios of scheduler CPU per job. Sequential rounds
on a shared 2-core machine vary by ±10 % from one to the next, more than the cost measured;
the pairs cancel most of that.

    python bench/bench_metrics.py [--jobs 2000] [--concurrency 32] [--rounds 3] [--paired]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import socket
import statistics
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench.bench_throughput and tests/fixtures

from bench.bench_throughput import (  # noqa: E402
    ONE_TASK,
    CpuMeter,
    _wait_agents,
    calibration_ms,
    processes,
    throughput,
)
from cpa_client import SchedulerClient  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _scrape_forever(port: int, scrapes: list[int]) -> None:
    url = f"http://127.0.0.1:{port}/metrics"
    while True:
        await asyncio.sleep(1.0)
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        scrapes.append(len(body))


async def one_round(
    arguments: argparse.Namespace, *, metrics: bool, ready: asyncio.Barrier | None = None
) -> dict[str, float]:
    """One server (metrics off or on) and its agent, a warm-up, then the measured jobs; with
    `ready`, the measured part starts when every server of the round is warm."""
    port = _free_port()
    env = {"CPA_METRICS_ADDRESS": f"127.0.0.1:{port}"} if metrics else {}
    with processes(replicas=1, agents_per_replica=1, slots=arguments.slots, backend_env=env) as up:
        client = SchedulerClient(up.addresses[0], timeout_s=60)
        meter = CpuMeter(up.pids, distributed=False)
        scrapes: list[int] = []
        scraper = asyncio.create_task(_scrape_forever(port, scrapes)) if metrics else None
        try:
            await _wait_agents(client, 1)
            await throughput([client], 200, 8, ONE_TASK)  # warm-up
            if ready is not None:
                await ready.wait()
            result = await throughput(
                [client], arguments.jobs, arguments.concurrency, ONE_TASK, meter
            )
        finally:
            if scraper is not None:
                scraper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper
            await client.close()
    result["scheduler_cpu_ms_per_job"] = 1000 * meter.used_s["scheduler"] / result["jobs"]
    result["scrapes"] = len(scrapes)
    result["scrape_bytes"] = scrapes[-1] if scrapes else 0
    return result


async def run_paired(arguments: argparse.Namespace) -> None:
    ratios: list[float] = []
    for n in range(arguments.rounds):
        ready = asyncio.Barrier(2)
        off, on = await asyncio.gather(
            one_round(arguments, metrics=False, ready=ready),
            one_round(arguments, metrics=True, ready=ready),
        )
        ratios.append(on["scheduler_cpu_ms_per_job"] / off["scheduler_cpu_ms_per_job"])
        print(
            f"round {n + 1}: scheduler CPU off {off['scheduler_cpu_ms_per_job']:.3f}, on "
            f"{on['scheduler_cpu_ms_per_job']:.3f} ms/job ({100 * (ratios[-1] - 1):+.1f} %); "
            f"{off['end_to_end_per_s']:.0f} / {on['end_to_end_per_s']:.0f} jobs/s, "
            f"{on['scrapes']:.0f} scrapes",
            flush=True,
        )
    print(
        f"{arguments.jobs} one-task jobs per server and round, {arguments.concurrency} submitters "
        f"each, 1 agent x {arguments.slots} slots each, embedded store, off and on at once"
    )
    print(
        f"metrics on: scheduler CPU per job {100 * (statistics.median(ratios) - 1):+.1f} % "
        f"(median of {len(ratios)} rounds; rounds {100 * (min(ratios) - 1):+.1f} to "
        f"{100 * (max(ratios) - 1):+.1f} %, on dearer in {sum(r > 1 for r in ratios)})"
    )


async def run(arguments: argparse.Namespace) -> None:
    if arguments.paired:
        await run_paired(arguments)
        return
    calibration = calibration_ms()
    rounds: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for n in range(arguments.rounds):
        for metrics in (False, True) if n % 2 == 0 else (True, False):
            result = await one_round(arguments, metrics=metrics)
            rounds[metrics].append(result)
            print(
                f"round {n + 1} metrics {'on ' if metrics else 'off'}: "
                f"{result['end_to_end_per_s']:.0f} jobs/s, scheduler CPU "
                f"{result['scheduler_cpu_ms_per_job']:.3f} ms/job, "
                f"p50 {result['job_p50_ms']:.1f} ms"
                + (
                    f", {result['scrapes']:.0f} scrapes of {result['scrape_bytes']:.0f} B"
                    if metrics
                    else ""
                ),
                flush=True,
            )
    calibration = (calibration + calibration_ms()) / 2
    print(f"machine: {platform.platform()}, Python {platform.python_version()}")
    print(
        f"{arguments.jobs} one-task jobs per round, {arguments.concurrency} submitters, "
        f"1 agent x {arguments.slots} slots, embedded store; calibration loop {calibration:.0f} ms"
    )
    medians = {
        metrics: {
            key: statistics.median(r[key] for r in results)
            for key in ("end_to_end_per_s", "scheduler_cpu_ms_per_job", "job_p50_ms")
        }
        for metrics, results in rounds.items()
    }
    off, on = medians[False], medians[True]
    print(
        f"median off: {off['end_to_end_per_s']:.0f} jobs/s, {off['scheduler_cpu_ms_per_job']:.3f} "
        f"ms CPU/job; on: {on['end_to_end_per_s']:.0f} jobs/s, "
        f"{on['scheduler_cpu_ms_per_job']:.3f} ms CPU/job"
    )
    rate = on["end_to_end_per_s"] / off["end_to_end_per_s"] - 1
    cpu = on["scheduler_cpu_ms_per_job"] / off["scheduler_cpu_ms_per_job"] - 1
    print(f"metrics on: throughput {100 * rate:+.1f} %, scheduler CPU per job {100 * cpu:+.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--paired", action="store_true", help="off and on at the same time in each round"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
