"""Draining: the agent's own (request_drain, SIGTERM) and the server's (ServerDrain)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from cpa.common.v1 import error_pb2
from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent import AttemptKey, ExecutionContext, ExecutorRegistry, builtin_registry
from cpa_agent.reconnect import rotate_addresses

from .conftest import ConnectAgent, StartAgent, StartScheduler
from .scripted_scheduler import ScriptedScheduler, ScriptedSession, attempt, timestamp_in, todo

_QUIET = ("heartbeat", "progress")


class GateExecutor:
    """Runs until the test opens the gate: an attempt whose end the test decides."""

    action = "gate"

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        await self.opened.wait()
        return {"gate": "passed"}


def _registry_with(gate: GateExecutor) -> ExecutorRegistry:
    registry = builtin_registry()
    registry.register(gate)
    return registry


async def _taken_silently(session: ScriptedSession, *, running: int = 1) -> None:
    """Waits until the agent handled the assignments sent so far, which it must not have acked."""
    barrier = await session.barrier(ignore=_QUIET)
    assert barrier.before == []
    assert barrier.offer.cost == running


def _remaining_kinds(session: ScriptedSession) -> set[str | None]:
    kinds: set[str | None] = set()
    while not session.requests.empty():
        kinds.add(session.requests.get_nowait().WhichOneof("kind"))
    return kinds


async def test_drain_declines_new_work_lets_running_work_finish_and_returns(
    connect_agent: ConnectAgent,
) -> None:
    gate = GateExecutor()
    running, session = await connect_agent(registry=_registry_with(gate))
    await session.expect("credit")
    session.assign("job-1", todo("gate"))
    await _taken_silently(session)

    running.agent.request_drain("maintenance")

    drain = await session.expect("drain")
    assert drain.drain.reason == "maintenance"
    session.assign("job-2", todo("noop"))
    declined = (await session.expect("assignment_ack")).assignment_ack
    assert (declined.job_id, declined.accepted, declined.reason) == (
        "job-2",
        False,
        "AGENT_DRAINING",
    )
    gate.opened.set()
    report = await session.expect("result")
    assert dict(report.result.outputs) == {"gate": "passed"}
    # It waits for the ack before it goes.
    assert not running.task.done()
    session.ack(report.report_id)
    await running.stopped()
    await asyncio.wait_for(session.agent_half_closed.wait(), 5.0)
    assert "credit" not in _remaining_kinds(session)


async def test_drain_timeout_hands_running_attempts_back_as_agent_shutdown(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent(drain_timeout_s=0.2)
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))
    await _taken_silently(session)

    running.agent.request_drain()

    await session.expect("drain", ignore=_QUIET)
    report = await session.expect("result", ignore=_QUIET)
    error = report.result.error
    assert (error.code, error.retryable) == ("AGENT_SHUTDOWN", True)
    assert error.reason == error_pb2.ERROR_REASON_AGENT_DRAINING
    assert not report.result.cancelled
    session.ack(report.report_id)
    await running.stopped()


async def test_sigterm_drains_an_agent_that_handles_signals(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    running = start_agent(scheduler.port, handle_signals=True)
    session = await scheduler.next_session()
    session.welcome()
    await session.expect("credit")

    os.kill(os.getpid(), signal.SIGTERM)

    assert (await session.expect("drain")).drain.reason == "received SIGTERM"
    await running.stopped()


async def test_server_drain_lets_work_finish_then_reconnects(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    gate = GateExecutor()
    running, session = await connect_agent(registry=_registry_with(gate))
    await session.expect("credit")
    session.assign("job-1", todo("gate"))
    await _taken_silently(session)

    session.send(pb.ConnectResponse(drain=pb.ServerDrain(reason="rolling update")))
    session.assign("job-2", todo("noop"))

    declined = (await session.expect("assignment_ack")).assignment_ack
    assert (declined.accepted, declined.reason) == (False, "SERVER_DRAINING")
    gate.opened.set()
    report = await session.expect("result")
    session.ack(report.report_id)
    second = await scheduler.next_session()
    assert list(second.hello.running_attempts) == []
    await asyncio.wait_for(session.agent_half_closed.wait(), 5.0)
    assert "credit" not in _remaining_kinds(session)
    second.welcome()
    assert (await second.expect("credit")).credit.slots == 2
    assert not running.agent.draining


async def test_server_drain_deadline_reconnects_with_attempts_still_running(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    _, session = await connect_agent()
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))
    await _taken_silently(session)

    session.send(pb.ConnectResponse(drain=pb.ServerDrain(deadline=timestamp_in(0.1))))

    second = await scheduler.next_session()
    assert list(second.hello.running_attempts) == [attempt("job-1")]


@pytest.mark.parametrize("drained_by", ["agent", "server"])
async def test_a_repeated_assignment_while_draining_is_ignored_not_declined(
    connect_agent: ConnectAgent, drained_by: str
) -> None:
    gate = GateExecutor()
    running, session = await connect_agent(registry=_registry_with(gate))
    await session.expect("credit")
    session.assign("job-1", todo("gate"))
    await _taken_silently(session)
    if drained_by == "agent":
        running.agent.request_drain("maintenance")
        await session.expect("drain")
    else:
        session.send(pb.ConnectResponse(drain=pb.ServerDrain(reason="rolling update")))

    session.assign("job-1", todo("gate"))

    # A decline would make the server queue again a task that is still running here.
    assert (await session.barrier()).before == []
    assert running.agent.running_attempts == {AttemptKey("job-1", "t1", 1)}
    gate.opened.set()
    report = await session.expect("result")
    assert dict(report.result.outputs) == {"gate": "passed"}
    session.ack(report.report_id)
    await asyncio.wait_for(session.agent_half_closed.wait(), 5.0)
    assert _remaining_kinds(session) <= {"heartbeat"}


async def test_after_a_server_drain_or_refusal_the_agent_tries_the_next_replica_first(
    start_scheduler: StartScheduler, start_agent: StartAgent
) -> None:
    first, second = await start_scheduler(), await start_scheduler()
    start_agent(first.port, server=f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}")
    session = await first.next_session()  # pick_first: the first address
    session.welcome()
    await session.expect("credit")

    session.send(pb.ConnectResponse(drain=pb.ServerDrain(reason="rolling update")))

    # Idle, the agent leaves; `first` still accepts streams, yet the next one goes to `second`.
    moved = await second.next_session()
    await asyncio.wait_for(session.agent_half_closed.wait(), 5.0)
    assert first.sessions.empty()
    moved.drop()  # refused before a welcome, as a replica shutting down does

    back = await first.next_session()
    back.welcome()
    assert (await back.expect("credit")).credit.slots == 2


@pytest.mark.parametrize(
    ("target", "rotated"),
    [
        ("ipv4:10.0.0.1:1,10.0.0.2:2,10.0.0.3:3", "ipv4:10.0.0.2:2,10.0.0.3:3,10.0.0.1:1"),
        ("ipv6:[::1]:1,[::2]:2", "ipv6:[::2]:2,[::1]:1"),
        ("ipv4:10.0.0.1:1", "ipv4:10.0.0.1:1"),
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("dns:///scheduler:50051", "dns:///scheduler:50051"),
    ],
)
def test_rotate_addresses(target: str, rotated: str) -> None:
    assert rotate_addresses(target) == rotated
