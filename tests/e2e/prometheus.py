"""A real Prometheus (Debian's) on loopback for the metrics tests: started with a scrape config
the test writes, queried over its HTTP API, stopped at the end. Missing binaries skip the test
outside CI and fail it under CI=true (`make prometheus` installs them)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
AMTOOL = "/usr/bin/amtool"
READY_TIMEOUT_S = 60.0


def tool(path: str) -> str:
    """`path` if installed; else skip (fail under CI=true)."""
    if shutil.which(path) is None:
        message = f"{path} is missing: run 'make prometheus'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prometheus:
    """A running Prometheus; `query` answers an instant query as {labels: value}."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _get(self, path: str, **params: str) -> object:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[frozenset[tuple[str, str]], float]:
        data = self._get("/api/v1/query", query=promql)
        assert isinstance(data, dict)
        return {
            frozenset((k, v) for k, v in sample["metric"].items() if k != "__name__"): float(
                sample["value"][1]
            )
            for sample in data["result"]
        }

    def value(self, promql: str) -> float | None:
        """The single value of `promql` (None when it has no sample)."""
        result = self.query(promql)
        assert len(result) <= 1, (promql, result)
        return next(iter(result.values()), None)

    def targets_up(self) -> int:
        data = self._get("/api/v1/targets")
        assert isinstance(data, dict)
        return sum(target["health"] == "up" for target in data["activeTargets"])

    async def wait_for(self, promql: str, expected: float, timeout_s: float = 30.0) -> None:
        """Poll (bounded) until `promql` has the value `expected`; fail with the last seen."""
        deadline = time.monotonic() + timeout_s
        seen: float | None = None
        while time.monotonic() < deadline:
            seen = await asyncio.to_thread(self.value, promql)
            if seen == expected:
                return
            await asyncio.sleep(0.2)  # polling a condition, bounded by the deadline
        raise AssertionError(f"{promql}: expected {expected}, last seen {seen}")


@contextmanager
def prometheus(tmp_path: Path, targets: Mapping[str, str]) -> Iterator[Prometheus]:
    """Prometheus scraping each job's target (host:port) every 200 ms, ready when it yields."""
    binary = tool(PROMETHEUS)
    config = tmp_path / "prometheus.yml"
    scrape = "\n".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']"
        for job, target in targets.items()
    )
    config.write_text(
        f"global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\nscrape_configs:\n{scrape}\n"
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise AssertionError((tmp_path / "prometheus.log").read_text()[-4000:])
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not get ready"
            time.sleep(0.1)  # polling its readiness, bounded by the deadline
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
