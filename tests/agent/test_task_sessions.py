"""The agent's side of task sessions: the session reaches the executor, and close_session is
called on every executor that defines it when the scheduler ends the session (SessionEnded) or
the agent learns its attempt of the session is over (stale, cancelled); a failing close is
logged and the agent goes on."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent import ExecutionContext, ExecutorRegistry, builtin_registry

from .conftest import ConnectAgent
from .scripted_scheduler import ScriptedSession, attempt, todo

_QUIET = ("heartbeat", "progress")


class Keeper:
    """Holds a "context" per (job, session); blocks while params.block is true."""

    def __init__(self, action: str, *, fail_close: bool = False) -> None:
        self.action = action
        self.sessions_seen: list[str] = []
        self.closed: list[tuple[str, str]] = []
        self.closed_event = asyncio.Event()
        self._fail_close = fail_close

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self.sessions_seen.append(ctx.session)
        if ctx.params.get("block"):
            await asyncio.Event().wait()
        return {"session": ctx.session}

    async def close_session(self, job_id: str, session: str) -> None:
        self.closed.append((job_id, session))
        self.closed_event.set()
        if self._fail_close:
            raise RuntimeError("the browser is gone")


def _registry(*keepers: Keeper) -> ExecutorRegistry:
    registry = builtin_registry()  # noop/echo/wait/fail have no close_session: skipped
    for keeper in keepers:
        registry.register(keeper)
    return registry


def _session_todo(action: str, session: str, **params: Any) -> Any:
    message = todo(action, params=params)
    message.session = session
    return message


async def _closed(keeper: Keeper) -> None:
    await asyncio.wait_for(keeper.closed_event.wait(), 5.0)
    keeper.closed_event.clear()


async def test_session_reaches_the_executor_and_session_ended_closes_it_everywhere(
    connect_agent: ConnectAgent, caplog: pytest.LogCaptureFixture
) -> None:
    keeper, broken = Keeper("keep"), Keeper("broken", fail_close=True)
    running, session = await connect_agent(registry=_registry(keeper, broken))
    await session.expect("credit")
    session.assign("job-1", _session_todo("keep", "portal"))
    result = (await session.expect("result", ignore=_QUIET)).result
    assert dict(result.outputs) == {"session": "portal"}
    assert keeper.sessions_seen == ["portal"]

    with caplog.at_level(logging.ERROR, logger="cpa_agent.sessions"):
        session.send(
            pb.ConnectResponse(
                session_ended=pb.SessionEnded(job_id="job-1", session="portal", reason="completed")
            )
        )
        await _closed(keeper)
        await _closed(broken)
    assert keeper.closed == [("job-1", "portal")]
    assert broken.closed == [("job-1", "portal")]
    assert "close_session(job-1, 'portal') failed" in caplog.text  # logged, not raised

    # The agent goes on: the next assignment runs and reports.
    session.assign("job-2", todo("noop"), attempt=1)
    assert (await session.expect("result", ignore=_QUIET)).result.job_id == "job-2"
    assert not running.task.done()


async def test_a_stale_attempt_of_a_session_closes_that_session(
    connect_agent: ConnectAgent,
) -> None:
    keeper = Keeper("keep")
    _, session = await connect_agent(registry=_registry(keeper))
    await session.expect("credit")
    session.assign("job-1", _session_todo("keep", "portal", block=True))
    await _until_running(session)
    session.stale_attempts = [attempt("job-1")]
    await _closed(keeper)
    assert keeper.closed == [("job-1", "portal")]


async def test_a_cancelled_attempt_of_a_session_closes_it_after_it_stopped(
    connect_agent: ConnectAgent,
) -> None:
    keeper = Keeper("keep")
    _, session = await connect_agent(registry=_registry(keeper))
    await session.expect("credit")
    session.assign("job-1", _session_todo("keep", "portal", block=True))
    await _until_running(session)
    session.cancel("job-1")
    result = (await session.expect("result", ignore=_QUIET)).result
    assert result.cancelled
    await _closed(keeper)
    assert keeper.closed == [("job-1", "portal")]


async def test_a_task_without_a_session_closes_nothing(connect_agent: ConnectAgent) -> None:
    keeper = Keeper("keep")
    _, session = await connect_agent(registry=_registry(keeper))
    await session.expect("credit")
    session.assign("job-1", todo("keep", params={"block": True}))
    await _until_running(session)
    session.cancel("job-1")
    assert (await session.expect("result", ignore=_QUIET)).result.cancelled
    # A SessionEnded naming no session is ignored as well.
    session.send(pb.ConnectResponse(session_ended=pb.SessionEnded(job_id="job-1", session="")))
    session.assign("job-2", todo("noop"))
    assert (await session.expect("result", ignore=_QUIET)).result.job_id == "job-2"
    assert keeper.closed == []


async def _until_running(session: ScriptedSession) -> None:
    """The assignment is running on the agent (a heartbeat lists it)."""
    while True:
        heartbeat = await session.next_heartbeat()
        if heartbeat.running_attempts:
            return
