"""What telemetry costs: end-to-end throughput of one-task jobs with it all off, with Prometheus
metrics on (scraped once a second), and with metrics and tracing at 10 % and at 100 %
sampling, back to back in one run (docs/PERFORMANCE.md, "Tracing").

Each configuration starts its own `cpa serve` (embedded SQLite) and benchmark agent
(bench_agent.py) as processes, as bench_throughput.py does, with the replica and the agent
exporting over OTLP/gRPC to a receiver in this process that counts the spans (a collector's
work stays out of the figures, the export's is in them). The configurations are run in turn,
`--rounds` times, and each one's median is printed with its cost against off: in throughput,
and in CPU per job of the scheduler and of the agent (read from /proc around the measured jobs;
steadier than throughput on a small machine, where the submitters share the cores).

    python bench/bench_telemetry.py [--jobs 2000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import (  # noqa: E402
    trace_service_pb2,
    trace_service_pb2_grpc,
)

from bench.bench_metrics import _free_port, _scrape_forever  # noqa: E402
from bench.bench_throughput import (  # noqa: E402
    ONE_TASK,
    CpuMeter,
    _wait_agents,
    processes,
    throughput,
)
from cpa_client import SchedulerClient  # noqa: E402

# name: (metrics on, the tracing sampling ratio or None: tracing off).
CONFIGURATIONS: dict[str, tuple[bool, float | None]] = {
    "off": (False, None),
    "metrics": (True, None),
    "metrics + tracing 10 %": (True, 0.1),
    "metrics + tracing 100 %": (True, 1.0),
}


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP receiver that only counts what it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        self.names: dict[str, int] = {}

    def Export(  # noqa: N802 - the OTLP service's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for spans in request.resource_spans:
            for scope in spans.scope_spans:
                self.spans += len(scope.spans)
                for span in scope.spans:
                    self.names[span.name] = self.names.get(span.name, 0) + 1
        return trace_service_pb2.ExportTraceServiceResponse()


def _env(ratio: float | None, endpoint: str) -> dict[str, str]:
    if ratio is None:
        return {}
    return {
        "CPA_TRACING_ENABLED": "true",
        "CPA_TRACING_ENDPOINT": endpoint,
        "CPA_TRACING_SAMPLING_RATIO": str(ratio),
        "CPA_AGENT_TRACING_ENABLED": "true",
        "CPA_AGENT_TRACING_ENDPOINT": endpoint,
        "CPA_AGENT_TRACING_SAMPLING_RATIO": str(ratio),
        # Room for every span of the run: none dropped, so the export's whole cost is measured.
        "OTEL_BSP_MAX_QUEUE_SIZE": "200000",
    }


@dataclass(frozen=True)
class Figures:
    jobs_per_s: float
    scheduler_us_per_job: float
    agent_us_per_job: float


async def _one(
    metrics: bool, ratio: float | None, endpoint: str, jobs: int, concurrency: int
) -> Figures:
    """Jobs per second end to end and CPU per job for one configuration, on fresh processes."""
    env = _env(ratio, endpoint)
    port = _free_port()
    if metrics:  # the replica's endpoint, scraped as Prometheus would
        env["CPA_METRICS_ADDRESS"] = f"127.0.0.1:{port}"
    with processes(replicas=1, agents_per_replica=1, slots=64, backend_env=env) as started:
        client = SchedulerClient(started.addresses[0], timeout_s=60)
        scrapes: list[int] = []
        scraper = asyncio.create_task(_scrape_forever(port, scrapes)) if metrics else None
        try:
            await _wait_agents(client, 1)
            await throughput([client], 200, 8, ONE_TASK)  # warm-up
            meter = CpuMeter(started.pids, distributed=False)
            result = await throughput([client], jobs, concurrency, ONE_TASK, meter)
        finally:
            if scraper is not None:
                scraper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper
            await client.close()
    done = result["jobs"]
    return Figures(
        jobs_per_s=float(result["end_to_end_per_s"]),
        scheduler_us_per_job=1e6 * meter.used_s["scheduler"] / done,
        agent_us_per_job=1e6 * meter.used_s["agents"] / done,
    )


async def run(arguments: argparse.Namespace) -> None:
    counter = SpanCounter()
    # On threads of its own: the bench's event loop blocks while processes start and stop,
    # when the exporters flush.
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)  # type: ignore[no-untyped-call]
    endpoint = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    figures: dict[str, list[Figures]] = {name: [] for name in CONFIGURATIONS}
    spans: dict[str, int] = dict.fromkeys(CONFIGURATIONS, 0)
    try:
        for _ in range(arguments.rounds):
            for name, (metrics, ratio) in CONFIGURATIONS.items():
                before = counter.spans
                one = await _one(metrics, ratio, endpoint, arguments.jobs, arguments.concurrency)
                figures[name].append(one)
                spans[name] += counter.spans - before
                print(
                    f"  {name}: {one.jobs_per_s:.0f} jobs/s, scheduler "
                    f"{one.scheduler_us_per_job:.0f} µs/job, "
                    f"agent {one.agent_us_per_job:.0f} µs/job",
                    flush=True,
                )
    finally:
        server.stop(0)
    if arguments.verbose:
        print(counter.names)

    def median(name: str, field: str) -> float:
        return float(statistics.median(getattr(one, field) for one in figures[name]))

    print(
        f"{arguments.jobs} one-task jobs, {arguments.concurrency} submitters, median of "
        f"{arguments.rounds} rounds (cost against off):"
    )
    for name in figures:
        rate, off_rate = median(name, "jobs_per_s"), median("off", "jobs_per_s")
        cpu = {
            field: (median(name, field), median("off", field))
            for field in ("scheduler_us_per_job", "agent_us_per_job")
        }
        per_job = spans[name] / (arguments.rounds * (arguments.jobs + 200))
        print(
            f"{name:>23}: {rate:6.0f} jobs/s ({100 * (off_rate - rate) / off_rate:+.1f} %)   "
            + "   ".join(
                f"{field.split('_')[0]} {value:5.0f} µs/job ({100 * (value - off) / off:+.1f} %)"
                for field, (value, off) in cpu.items()
            )
            + f"   {per_job:.1f} spans exported per job"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="print the spans by name")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
