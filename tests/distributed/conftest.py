"""A cluster of real processes: scheduler replicas on PostgreSQL + Redis, and agents.

Each test gets its own database and Redis key prefix. Processes are killed at teardown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Short leases: a lost agent or replica is noticed within a test.
LEASE_S = "2"
HEARTBEAT_S = "0.3"


@dataclass
class Replica:
    process: subprocess.Popen[str]
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Cluster:
    database_url: str
    redis_url: str
    redis_prefix: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def _env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "CPA_DATABASE_URL": self.database_url,
            "CPA_REDIS_URL": self.redis_url,
            "CPA_REDIS_KEY_PREFIX": self.redis_prefix,
            "CPA_LEASE_DURATION_S": LEASE_S,
            "CPA_HEARTBEAT_INTERVAL_S": HEARTBEAT_S,
            "CPA_QUEUE_CLAIM_IDLE_S": "1",
            "CPA_RECONCILE_INTERVAL_S": "0.5",
            "CPA_LOG_LEVEL": "WARNING",
            **extra,
        }

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "cpa_cli", "migrate", "--database-url", self.database_url],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def replica(self, name: str, *, port: int = 0) -> Replica:
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - read after the process ends
            "w+", prefix=f"cpa-{name}-", suffix=".log", delete=False
        )
        self.logs.append(log.name)
        process = subprocess.Popen(
            [sys.executable, "-m", "cpa_cli", "serve", "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=self._env(CPA_REPLICA_ID=name),
        )
        log.close()
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if "serving on" not in line:
            process.wait(timeout=10)
            raise AssertionError(f"replica {name} did not start:\n{Path(log.name).read_text()}")
        return Replica(process=process, port=int(line.rsplit(":", 1)[1]))

    def agent(self, agent_id: str, *replicas: Replica, labels: str = "{}") -> subprocess.Popen[str]:
        """An agent that connects to the first reachable of `replicas` (gRPC pick_first)."""
        target = "ipv4:" + ",".join(r.target for r in replicas)
        process = subprocess.Popen(
            [sys.executable, "-m", "cpa_agent"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env={
                **os.environ,
                "CPA_AGENT_SERVER": target,
                "CPA_AGENT_AGENT_ID": agent_id,
                "CPA_AGENT_SLOTS": "4",
                "CPA_AGENT_LABELS": labels,
                "CPA_AGENT_RECONNECT_MAX_BACKOFF_S": "0.5",
            },
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
        for log in self.logs:
            Path(log).unlink(missing_ok=True)


@pytest.fixture
def cluster(postgres_database: str, redis_server_url: str, redis_prefix: str) -> Iterator[Cluster]:
    started = Cluster(
        database_url=postgres_database, redis_url=redis_server_url, redis_prefix=redis_prefix
    )
    started.migrate()
    try:
        yield started
    finally:
        started.stop_all()
