"""Fixtures for agent tests: scripted schedulers on loopback and agents pointed at them.

Every server and agent a test starts is stopped in teardown, whatever the test did.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cpa_agent import Agent, AgentSettings, ExecutorRegistry

from .scripted_scheduler import ScriptedScheduler, ScriptedSession

StartScheduler = Callable[..., Awaitable[ScriptedScheduler]]
StartAgent = Callable[..., "RunningAgent"]
ConnectAgent = Callable[..., Awaitable[tuple["RunningAgent", ScriptedSession]]]

# Fast reconnects and short waits keep the suite quick; tests override what they exercise.
_TEST_SETTINGS: dict[str, Any] = {
    "agent_id": "agent-1",
    "name": "test agent",
    "slots": 2,
    "labels": {"site": "test"},
    "capabilities": ["test:loopback"],
    "reconnect_initial_backoff_s": 0.01,
    "reconnect_max_backoff_s": 0.05,
    "connect_timeout_s": 2.0,
    "drain_timeout_s": 5.0,
}


@dataclass(frozen=True)
class RunningAgent:
    agent: Agent
    task: asyncio.Task[None]

    async def stopped(self, *, timeout_s: float = 5.0) -> None:
        """Waits until async_run() returned on its own."""
        await asyncio.wait_for(asyncio.shield(self.task), timeout_s)


@pytest.fixture(autouse=True)
async def no_unhandled_loop_errors() -> AsyncIterator[None]:
    """Fails a test whose tasks died unobserved ("exception was never retrieved", "destroyed")."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield
    gc.collect()  # surfaces pending tasks nobody references any more
    loop.set_exception_handler(None)
    assert not errors, [context.get("message") for context in errors]


@pytest.fixture
async def start_scheduler() -> AsyncIterator[StartScheduler]:
    schedulers: list[ScriptedScheduler] = []

    async def start(*, port: int = 0) -> ScriptedScheduler:
        scheduler = ScriptedScheduler()
        await scheduler.start(port=port)
        schedulers.append(scheduler)
        return scheduler

    yield start
    for scheduler in schedulers:
        await scheduler.stop()


@pytest.fixture
async def scheduler(start_scheduler: StartScheduler) -> ScriptedScheduler:
    return await start_scheduler()


@pytest.fixture
async def start_agent() -> AsyncIterator[StartAgent]:
    running: list[RunningAgent] = []

    def start(
        port: int,
        *,
        registry: ExecutorRegistry | None = None,
        handle_signals: bool = False,
        **settings: Any,
    ) -> RunningAgent:
        agent_settings = AgentSettings(
            **{"server": f"127.0.0.1:{port}", **_TEST_SETTINGS, **settings}
        )
        agent = Agent(settings=agent_settings, registry=registry)
        task = asyncio.create_task(agent.async_run(handle_signals=handle_signals))
        handle = RunningAgent(agent=agent, task=task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.task.cancel()
        await asyncio.wait([handle.task])
        if not handle.task.cancelled() and (error := handle.task.exception()) is not None:
            raise error


@pytest.fixture
def connect_agent(scheduler: ScriptedScheduler, start_agent: StartAgent) -> ConnectAgent:
    """Starts an agent against `scheduler` and welcomes its first session."""

    async def connect(
        *,
        heartbeat_interval_s: float = 0.1,
        idle_heartbeat_interval_s: float = 0.0,
        accepts_batches: bool = False,
        **settings: Any,
    ) -> tuple[RunningAgent, ScriptedSession]:
        running = start_agent(scheduler.port, **settings)
        session = await scheduler.next_session()
        session.welcome(
            heartbeat_interval_s=heartbeat_interval_s,
            idle_heartbeat_interval_s=idle_heartbeat_interval_s,
            accepts_batches=accepts_batches,
        )
        return running, session

    return connect
