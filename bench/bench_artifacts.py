"""Artifact upload and download throughput through the embedded scheduler on loopback.

Starts `cpa serve` (embedded: SQLite + files under a temporary data directory) as a process.
This process plays the agent: one hand-driven Connect stream holds a running attempt, and
uploads artifacts of SIZE MiB through UploadArtifact in 1 MiB chunks (what the agent's
ArtifactAccess sends), each of different bytes (no deduplication); then a caller downloads each
through SchedulerService.DownloadArtifact, checked by sha256 (what `cpa artifacts get` does).
Prints MiB/s of each (goal: >= 100 MiB/s).

    python bench/bench_artifacts.py [--size-mib 32] [--count 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import grpc

from cpa.common.v1 import agent_capabilities_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from cpa_client.artifact_chunks import split

MIB = 1024 * 1024


def _start_server(data_dir: str, max_bytes: int) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "CPA_LOG_LEVEL": "WARNING",
        "CPA_RATE_LIMITS_ENABLED": "false",
        "CPA_ARTIFACT_MAX_BYTES": str(max_bytes),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cpa_cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if "serving on" not in line:
        server.kill()
        raise RuntimeError(f"scheduler did not start: {line!r}")
    return server, line.rsplit(" ", 1)[1].strip()


async def run(address: str, size: int, count: int) -> tuple[float, float]:
    outgoing: asyncio.Queue[ex.ConnectRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[ex.ConnectRequest]:
        while True:
            yield await outgoing.get()

    async with grpc.aio.insecure_channel(address) as channel, SchedulerClient(address) as client:
        stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
        call = stub.Connect(requests())
        capabilities = agent_capabilities_pb2.AgentCapabilities(actions=["hold"], slots=1)
        outgoing.put_nowait(
            ex.ConnectRequest(hello=ex.Hello(agent_id="bench", capabilities=capabilities))
        )
        welcome = await call.read()
        assert isinstance(welcome, ex.ConnectResponse)
        session_id = welcome.welcome.session_id
        outgoing.put_nowait(ex.ConnectRequest(credit=ex.Credit(slots=1)))
        todo = todo_pb2.ToDo(id="t", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="hold")
        job_id = (
            await client.schedule_job(job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo])))
        ).job.job_id
        while True:
            message = await call.read()
            assert isinstance(message, ex.ConnectResponse)
            if message.WhichOneof("kind") == "assignment":
                break
        contents = [os.urandom(size) for _ in range(count)]

        def upload(index: int, data: bytes) -> Iterator[ex.UploadArtifactRequest]:
            header = ex.UploadArtifactHeader(
                job_id=job_id,
                task_id="t",
                attempt=1,
                session_id=session_id,
                name=f"file-{index}.bin",
                media_type="application/octet-stream",
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
            yield ex.UploadArtifactRequest(header=header)
            for chunk in split(data):
                yield ex.UploadArtifactRequest(chunk=chunk)

        ids = []
        started = time.perf_counter()
        for index, data in enumerate(contents):
            response = await stub.UploadArtifact(upload(index, data))
            ids.append(response.artifact.artifact_id)
        upload_s = time.perf_counter() - started

        started = time.perf_counter()
        for artifact_id, data in zip(ids, contents, strict=True):
            _, read = await client.read_artifact(job_id, artifact_id)
            assert len(read) == len(data)
        download_s = time.perf_counter() - started
        call.cancel()
    total_mib = size * count / MIB
    return total_mib / upload_s, total_mib / download_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--count", type=int, default=5)
    arguments = parser.parse_args()
    size = arguments.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="cpa-bench-artifacts-") as data_dir:
        server, address = _start_server(data_dir, max(size, 50 * MIB))
        try:
            upload, download = asyncio.run(run(address, size, arguments.count))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"artifacts: {arguments.count} x {arguments.size_mib} MiB through the embedded scheduler")
    print(f"  upload   (UploadArtifact, 1 MiB chunks, sha256 checked, fsync): {upload:7.1f} MiB/s")
    print(
        f"  download (DownloadArtifact, sha256 checked by the client):      {download:7.1f} MiB/s"
    )


if __name__ == "__main__":
    main()
