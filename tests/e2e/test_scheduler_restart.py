"""The scheduler killed with SIGKILL mid-run: after a restart on the same store, every job ends
SUCCEEDED and no task has two successful attempts (agents reconnect on their own)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient

from .conftest import EVENT_TIMEOUT_S, collect_events, first_event, task_reached, todo, todos_spec


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Processes:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def serve(self, data_dir: Path, port: int) -> subprocess.Popen[str]:
        env = {**os.environ, "CPA_LEASE_DURATION_S": "2", "CPA_HEARTBEAT_INTERVAL_S": "0.3"}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cpa_cli",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving on" in line, line
        return process

    def agent(self, port: int) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "CPA_AGENT_SERVER": f"127.0.0.1:{port}",
            "CPA_AGENT_AGENT_ID": "steady",
            "CPA_AGENT_SLOTS": "4",
            "CPA_AGENT_RECONNECT_MAX_BACKOFF_S": "0.5",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "cpa_agent"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


async def test_kill_9_of_the_scheduler_loses_nothing(processes: Processes, tmp_path: Path) -> None:
    port = _free_port()
    server = processes.serve(tmp_path, port)
    processes.agent(port)
    job_ids = []
    async with SchedulerClient(f"127.0.0.1:{port}", timeout_s=EVENT_TIMEOUT_S) as client:
        for n in range(6):
            spec = todos_spec(
                todo("a", "wait", params={"seconds": 0.6}),
                todo("b", "echo", params={"n": n}, depends_on=["a"]),
            )
            job_ids.append((await client.schedule_job(spec)).job.job_id)
        await first_event(client, job_ids[0], task_reached("a", job_pb2.TASK_STATE_RUNNING))
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)

    processes.serve(tmp_path, port)
    async with SchedulerClient(f"127.0.0.1:{port}", timeout_s=EVENT_TIMEOUT_S) as client:
        for job_id in job_ids:
            await asyncio.wait_for(collect_events(client, job_id), 30)
            job = await client.get_job(job_id)
            assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
            for task in job.tasks:
                succeeded = [a for a in task.attempts if a.state == job_pb2.ATTEMPT_STATE_SUCCEEDED]
                assert len(succeeded) == 1, task
