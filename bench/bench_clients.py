"""Per-call throughput of the two SDKs against one scheduler, in the same run: the Python SDK
(`cpa_client.SchedulerClient`, grpc.aio) and the TypeScript client (clients/typescript,
`SchedulerClient` on Connect for Node, run by its `bench/schedule.ts`).

Starts one `cpa serve` (embedded SQLite store, authentication on with its local admin key,
rate limits off) and no agent. At each concurrency C, each client makes N ScheduleJob calls
from C concurrent callers (one-task jobs whose action nobody serves, so they stay queued and
only the call is measured; a fresh request_id each, as both SDKs send by default), then N
GetJob calls (FULL view) on those jobs. Without `--request-ids` no call carries a request_id:
on the embedded store a ScheduleJob with one costs a scan of the jobs table (its partial index
is not used; docs/PERFORMANCE.md), which grows through the run and would swamp the clients'
difference. The clients take turns, in alternating order per
round, so a drift of the shared machine's load hits both. Prints calls/s, latency p50/p99 and
each client process's own CPU per call (the load generators compete with the scheduler for
the same cores).

    PYTHONPATH=server:executor_agent:cli:clients/python .venv/bin/python bench/bench_clients.py \
        [--calls 2000] [--concurrency 1 8 32] [--rounds 2] [--request-ids]

Needs Node 20+ and `npm ci` in clients/typescript.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TS_PACKAGE = ROOT / "clients" / "typescript"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench_throughput's calibration loop

from bench.bench_throughput import calibration_ms  # noqa: E402
from cpa.common.v1 import todo_pb2  # noqa: E402
from cpa.scheduler.v1 import job_pb2  # noqa: E402
from cpa_client import SchedulerClient  # noqa: E402

# The TypeScript bench's job: one task of an action no agent serves.
SPEC = job_pb2.JobSpec(
    todos=job_pb2.TodoList(
        todos=[
            todo_pb2.ToDo(id="t", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="bench_nobody")
        ]
    )
)


@contextmanager
def scheduler() -> Iterator[tuple[str, str]]:
    """`cpa serve` on a fresh data directory; (its address, its local admin key)."""
    data_dir = tempfile.mkdtemp(prefix="cpa-bench-clients-")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CPA_")},
        "CPA_LOG_LEVEL": "WARNING",
        "CPA_INSECURE_LOCAL": "false",
        "CPA_RATE_LIMITS_ENABLED": "false",
    }
    command = [sys.executable, "-m", "cpa_cli", "serve", "--listen", "127.0.0.1:0"]
    server = subprocess.Popen(
        [*command, "--data-dir", data_dir], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "serving on" not in line:
            raise RuntimeError(f"scheduler did not start: {line!r}")
        key = (Path(data_dir) / "local-admin.key").read_text(encoding="utf-8").strip()
        yield line.rsplit(" ", 1)[1].strip(), key
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _measure(
    rpc: str, calls: int, concurrency: int, call: Callable[[int], Awaitable[None]]
) -> dict[str, Any]:
    """`call(i)` for every i < calls from `concurrency` coroutines; the phase's figures, in the
    shape bench/schedule.ts prints."""
    latencies: list[float] = []
    counter = iter(range(calls))

    async def caller() -> None:
        for index in counter:  # shared: each index is taken once
            started = time.perf_counter()
            await call(index)
            latencies.append((time.perf_counter() - started) * 1000)

    cpu_before, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "client": "python",
        "rpc": rpc,
        "concurrency": concurrency,
        "calls": calls,
        "calls_per_s": calls / elapsed,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "client_cpu_ms_per_call": (time.process_time() - cpu_before) * 1000 / calls,
    }


def _request_id(with_ids: bool) -> str:
    return uuid.uuid4().hex if with_ids else ""


async def python_phases(
    address: str, key: str, calls: int, concurrency: int, with_ids: bool
) -> list[dict[str, Any]]:
    async with SchedulerClient(address, api_key=key) as client:
        await client.schedule_job(SPEC, request_id=_request_id(with_ids))  # warm-up
        job_ids = [""] * calls

        async def schedule(index: int) -> None:
            response = await client.schedule_job(SPEC, request_id=_request_id(with_ids))
            job_ids[index] = response.job.job_id

        async def get(index: int) -> None:
            await client.get_job(job_ids[index])

        return [
            await _measure("ScheduleJob", calls, concurrency, schedule),
            await _measure("GetJob", calls, concurrency, get),
        ]


def typescript_phases(
    address: str, key: str, calls: int, concurrency: int, with_ids: bool
) -> list[dict[str, Any]]:
    """One run of the compiled bench/schedule.ts against `address`: its JSON lines."""
    done = subprocess.run(
        ["node", "build/bench/schedule.js", str(calls), str(concurrency)],
        cwd=TS_PACKAGE,
        env={
            **os.environ,
            "CPA_TEST_SERVER": address,
            "CPA_TEST_CREDENTIAL": key,
            "CPA_BENCH_JSON": "1",
            "CPA_BENCH_REQUEST_IDS": "1" if with_ids else "0",
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per RPC, client and C")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--request-ids", action="store_true", help="a fresh request_id per ScheduleJob"
    )
    arguments = parser.parse_args()
    if shutil.which("node") is None or not (TS_PACKAGE / "node_modules").is_dir():
        sys.exit("needs Node 20+ and `npm ci` in clients/typescript")
    subprocess.run(["npx", "tsc", "-p", "tsconfig.test.json"], cwd=TS_PACKAGE, check=True)
    print(f"calibration loop: {calibration_ms():.0f} ms; load average {os.getloadavg()}")
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    calls, ids = arguments.calls, arguments.request_ids
    with scheduler() as (address, key):
        for round_number in range(arguments.rounds):
            for concurrency in arguments.concurrency:
                python = python_phases(address, key, calls, concurrency, ids)
                runners: list[Callable[[], list[dict[str, Any]]]] = [
                    functools.partial(asyncio.run, python),
                    functools.partial(typescript_phases, address, key, calls, concurrency, ids),
                ]
                if round_number % 2:
                    runners.reverse()
                for run in runners:
                    for phase in run():
                        results[(phase["rpc"], concurrency, phase["client"])].append(phase)
    print(
        f"\n{calls} calls per cell, {arguments.rounds} rounds (median; each round); "
        f"request ids: {'yes' if ids else 'no'}"
    )
    print("| RPC | callers | client | calls/s | p50 ms | p99 ms | client CPU ms/call |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for (rpc, concurrency, client), phases in sorted(
        results.items(), key=lambda item: (item[0][0] != "ScheduleJob", item[0][1], item[0][2])
    ):

        def cell(name: str, digits: int, phases: list[dict[str, Any]] = phases) -> str:
            values = [p[name] for p in phases]
            each = " / ".join(f"{v:.{digits}f}" for v in values)
            return f"{statistics.median(values):.{digits}f} ({each})"

        print(
            f"| {rpc} | {concurrency} | {client} | {cell('calls_per_s', 0)} | "
            f"{cell('p50_ms', 1)} | {cell('p99_ms', 1)} | {cell('client_cpu_ms_per_call', 3)} |"
        )


if __name__ == "__main__":
    main()
