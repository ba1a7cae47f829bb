"""bench/bench_gateway.py still runs: scheduler, agent and a real Envoy, every path exercised.

A smoke test with tiny counts: it checks the bench completes and prints its tables, never its
figures (benchmarks are read, not asserted). The bench fails by itself when a path misbehaves:
a REST call that is not 200, an end-to-end job that does not succeed, or a WatchJob stream (gRPC
or SSE) whose event count differs from the job's stored events.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_gateway.py"
TINY = (
    *("--jobs", "30", "--paced-jobs", "10", "--rate", "50", "--e2e-jobs", "10"),
    *("--concurrency", "3", "--watchers", "2", "--replays", "1", "--watch-jobs", "2"),
    *("--tasks", "3", "--rounds", "1", "--idle-seconds", "0.1"),
)
PATHS = ("gRPC direct", "gRPC via Envoy", "REST via Envoy")


def test_bench_gateway_runs_every_path_and_prints_its_tables() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), *TINY],
        capture_output=True,
        text=True,
        timeout=50,
        env=os.environ,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for section in ("1. submissions, closed loop", "2. submissions paced", "3. end to end"):
        assert section in out, out
    assert "4. WatchJob delivery" in out, out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    # Four tables: a header, a rule and one row per path (the SSE row is marked as such).
    assert len(rows) == 4 * (2 + len(PATHS)), out
    assert sum(row.startswith("| path ") for row in rows) == 4, out
    for path in PATHS:
        assert sum(row.startswith(f"| {path} ") for row in rows) == 4, out
    assert "| REST via Envoy (SSE) " in out, out
    assert out.count("Envoy adds") == 4, out
