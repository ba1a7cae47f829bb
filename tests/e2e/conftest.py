"""Fixtures for end-to-end tests: a real scheduler on a loopback port, real agents, the SDK.

Everything talks over real gRPC sockets; short leases and heartbeats keep loss tests quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_event_pb2, job_pb2
from cpa_agent import Agent, AgentSettings, ExecutorRegistry, builtin_registry
from cpa_client import SchedulerClient
from cpa_scheduler.server import SchedulerServer
from cpa_scheduler.settings import Settings
from tests.fixtures.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from .raw_agent import RawAgentStream

# Short enough that a lost agent is noticed within a test, long enough for a loaded CI machine.
LEASE_S = 1.5
HEARTBEAT_S = 0.2
EVENT_TIMEOUT_S = 20.0


@dataclass
class Scheduler:
    """A running scheduler and how to reach it."""

    server: SchedulerServer
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def e2e_settings(tmp_path: Path, **changes: Any) -> Settings:
    """The scheduler's settings of these tests (short leases and heartbeats), with `changes`."""
    return Settings(
        **{
            "data_dir": tmp_path / "data",
            "lease_duration_s": LEASE_S,
            "heartbeat_interval_s": HEARTBEAT_S,
            "max_request_bytes": 256 * 1024,
            **changes,
        }
    )


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    return e2e_settings(tmp_path)


@pytest.fixture
async def scheduler(scheduler_settings: Settings) -> AsyncIterator[Scheduler]:
    server = SchedulerServer(scheduler_settings)
    port = await server.start("127.0.0.1:0")
    try:
        yield Scheduler(server=server, port=port)
    finally:
        await server.stop(grace_s=1.0)


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[SchedulerClient]:
    async with SchedulerClient(scheduler.target, timeout_s=EVENT_TIMEOUT_S) as sdk:
        yield sdk


@dataclass
class Agents:
    """Starts in-process agents against the scheduler and stops them at teardown."""

    target: str
    running: list[tuple[Agent, asyncio.Task[None]]] = field(default_factory=list)

    async def start(
        self, agent_id: str, *, registry: ExecutorRegistry | None = None, **settings: Any
    ) -> Agent:
        agent = Agent(
            settings=AgentSettings(server=self.target, agent_id=agent_id, **settings),
            registry=registry if registry is not None else builtin_registry(),
        )
        task = asyncio.create_task(agent.async_run())
        self.running.append((agent, task))
        await asyncio.wait_for(agent.connected.wait(), EVENT_TIMEOUT_S)
        return agent

    async def stop_all(self) -> None:
        for _agent, task in self.running:
            if not task.done():
                task.cancel()
        await asyncio.gather(*(task for _, task in self.running), return_exceptions=True)


@contextlib.asynccontextmanager
async def agent_pool(target: str) -> AsyncIterator[Agents]:
    """Agents that dial `target`, stopped on exit."""
    pool = Agents(target=target)
    try:
        yield pool
    finally:
        await pool.stop_all()


@pytest.fixture
async def agents(scheduler: Scheduler) -> AsyncIterator[Agents]:
    async with agent_pool(scheduler.target) as pool:
        yield pool


@pytest.fixture
async def proxy(scheduler: Scheduler) -> AsyncIterator[TcpProxy]:
    """A TCP proxy to the scheduler that can reset or blackhole its connections."""
    proxy = TcpProxy(target_host="127.0.0.1", target_port=scheduler.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def raw_stream(scheduler: Scheduler) -> AsyncIterator[RawAgentStream]:
    """A hand-driven agent stream (see raw_agent.py), closed at teardown."""
    from .raw_agent import RawAgentStream  # imports this module's EVENT_TIMEOUT_S

    stream = RawAgentStream(scheduler.target)
    try:
        yield stream
    finally:
        await stream.close()


@dataclass
class AgentProcesses:
    """Agents as real processes (`python -m cpa_agent`), for kill -9 tests."""

    target: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, agent_id: str, *, labels: str = "{}") -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "CPA_AGENT_SERVER": self.target,
            "CPA_AGENT_AGENT_ID": agent_id,
            "CPA_AGENT_LABELS": labels,
            "CPA_AGENT_SLOTS": "2",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "cpa_agent"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def agent_processes(scheduler: Scheduler) -> Iterator[AgentProcesses]:
    pool = AgentProcesses(target=scheduler.target)
    try:
        yield pool
    finally:
        pool.stop_all()


async def collect_events(
    client: SchedulerClient, job_id: str, *, after_sequence: int = 0
) -> list[job_event_pb2.JobEvent]:
    """Every event of the job until its terminal event (bounded by EVENT_TIMEOUT_S)."""

    async def run() -> list[job_event_pb2.JobEvent]:
        return [e async for e in client.watch_job(job_id, after_sequence=after_sequence)]

    return await asyncio.wait_for(run(), EVENT_TIMEOUT_S)


async def first_event(
    client: SchedulerClient,
    job_id: str,
    predicate: Callable[[job_event_pb2.JobEvent], bool],
) -> job_event_pb2.JobEvent:
    """The first event of the job (history included) that satisfies `predicate`."""

    async def run() -> job_event_pb2.JobEvent:
        async for event in client.watch_job(job_id):
            if predicate(event):
                return event
        raise AssertionError(f"job {job_id} ended without the expected event")

    return await asyncio.wait_for(run(), EVENT_TIMEOUT_S)


async def finished(client: SchedulerClient, job_id: str) -> job_pb2.Job:
    """The job after its terminal event."""
    await collect_events(client, job_id)
    return await client.get_job(job_id)


def task_reached(task_id: str, state: int) -> Callable[[job_event_pb2.JobEvent], bool]:
    def predicate(event: job_event_pb2.JobEvent) -> bool:
        change = event.task_state_changed
        return (
            event.WhichOneof("kind") == "task_state_changed"
            and change.task_id == task_id
            and change.to_state == state
        )

    return predicate


def todo(
    task_id: str,
    action: str,
    *,
    params: dict[str, Any] | None = None,
    depends_on: Sequence[str] = (),
    **fields: Any,
) -> todo_pb2.ToDo:
    """A ToDo for a built-in agent action (noop, echo, wait, fail) or a catalog action."""
    message = todo_pb2.ToDo(id=task_id, depends_on=list(depends_on), **fields)
    builtin = f"ACTION_TYPE_{action.upper()}"
    if builtin in todo_pb2.ActionType.DESCRIPTOR.values_by_name:
        message.action = todo_pb2.ActionType.Value(builtin)
    else:
        message.action = todo_pb2.ACTION_TYPE_CUSTOM
        message.custom_action = action
    if params:
        message.params.update(params)
    return message


def todos_spec(*todos: todo_pb2.ToDo, **fields: Any) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(todos=job_pb2.TodoList(todos=list(todos)), **fields)
