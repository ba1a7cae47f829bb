"""Streams that end: outbox re-send, adoption, stale attempts, backoff and the watchdog."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from cpa_agent import AttemptKey
from cpa_agent.reconnect import full_jitter_backoff_s

from .conftest import ConnectAgent, StartAgent, StartScheduler
from .scripted_scheduler import ScriptedScheduler, ScriptedSession, attempt, todo

_QUIET = ("heartbeat", "progress")


async def _quiet_until_barrier(session: ScriptedSession) -> None:
    """The agent sent nothing (no ack, no credit) before answering a barrier."""
    assert (await session.barrier(ignore=_QUIET)).before == []


class _FailureCounter(logging.Handler):
    """Counts the agent's failed connects and wakes a waiter at a threshold (no sleeping)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.failures = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("stream to "):
            self.failures += 1
            for count, waiter in self._waiters:
                if self.failures >= count and not waiter.done():
                    waiter.set_result(None)

    async def wait_for(self, count: int, *, timeout_s: float = 5.0) -> None:
        if self.failures >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((count, waiter))
        await asyncio.wait_for(waiter, timeout_s)


@pytest.fixture
def connect_failures() -> Iterator[_FailureCounter]:
    counter = _FailureCounter()
    logger = logging.getLogger("cpa_agent.connection")
    logger.addHandler(counter)
    yield counter
    logger.removeHandler(counter)


async def test_unacked_result_is_resent_after_reconnect_and_hello_lists_running_attempts(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    running, session = await connect_agent()
    await session.expect("credit")
    session.assign("job-slow", todo("wait", params={"seconds": 30}))
    session.assign("job-echo", todo("echo", params={"n": 1}))
    sent = await session.expect("result", ignore=_QUIET)
    assert sent.result.job_id == "job-echo"
    await _quiet_until_barrier(session)

    session.drop()  # before acking the result

    second = await scheduler.next_session()
    assert list(second.hello.running_attempts) == [attempt("job-slow")]
    assert running.agent.unacked_results == (AttemptKey("job-echo", "t1", 1),)
    second.welcome(adopted=[attempt("job-slow")], session_id="session-2")
    resent = await second.expect("result", ignore=_QUIET)
    assert resent.result == sent.result
    assert resent.report_id > 0
    # Only the slot the running wait leaves free; the re-sent result earns no extra credit.
    assert (await second.expect("credit", ignore=_QUIET)).credit.slots == 1
    second.ack(resent.report_id)

    # Once acked it is gone: the next session re-sends nothing and starts with its credit.
    second.drop()
    third = await scheduler.next_session()
    third.welcome(adopted=[attempt("job-slow")], session_id="session-3")
    assert (await third.expect("credit", ignore=_QUIET)).credit.slots == 1
    assert not running.agent.unacked_results


async def test_each_hello_names_the_session_of_the_last_welcome(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    # The first hello has no session to name; after that, the server can tell a reconnect of
    # this process (which takes its half-dead session over) from a second process with its id.
    running, session = await connect_agent()  # welcomed as "session-1"
    assert session.hello.resume_session_id == ""

    session.drop()
    second = await scheduler.next_session()
    assert second.hello.resume_session_id == "session-1"
    second.drop()  # before any welcome: the last one heard is still session-1
    third = await scheduler.next_session()
    assert third.hello.resume_session_id == "session-1"
    third.welcome(session_id="session-3")
    await third.expect("credit", ignore=_QUIET)
    third.drop()
    fourth = await scheduler.next_session()
    assert fourth.hello.resume_session_id == "session-3"
    assert not running.task.done()


async def test_a_refused_result_is_dropped_from_the_outbox(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    running, session = await connect_agent()
    await session.expect("credit")
    session.assign("job-1", todo("noop"))
    sent = await session.expect("result")
    assert running.agent.unacked_results == (AttemptKey("job-1", "t1", 1),)

    session.ack(sent.report_id, accepted=False)

    # Handled before the barrier: dropped, and no credit (the result returned the slot).
    await _quiet_until_barrier(session)
    assert not running.agent.unacked_results
    session.drop()

    second = await scheduler.next_session()
    second.welcome()
    assert (await second.expect("credit", ignore=_QUIET)).credit.slots == 2
    assert not running.agent.unacked_results


async def test_attempts_the_welcome_does_not_adopt_are_stopped_and_not_reported(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    running, session = await connect_agent(slots=3)
    await session.expect("credit")
    for job_id in ("job-a", "job-b"):
        session.assign(job_id, todo("wait", params={"seconds": 30}))
    await _quiet_until_barrier(session)
    session.drop()

    second = await scheduler.next_session()
    assert list(second.hello.running_attempts) == [attempt("job-a"), attempt("job-b")]
    second.welcome(adopted=[attempt("job-a")])

    assert (await second.expect("credit", ignore=_QUIET)).credit.slots == 2
    assert running.agent.running_attempts == {AttemptKey("job-a", "t1", 1)}
    heartbeat = await second.next_heartbeat()
    assert list(heartbeat.running_attempts) == [attempt("job-a")]
    # The first result on the stream is job-a's: job-b was stopped without a report.
    second.cancel("job-a")
    result = (await second.expect("result", ignore=_QUIET)).result
    assert (result.job_id, result.cancelled) == ("job-a", True)


async def test_stale_attempts_in_a_heartbeat_ack_are_stopped_and_not_reported(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent()
    await session.expect("credit")
    session.assign("job-1", todo("wait", params={"seconds": 30}))
    await _quiet_until_barrier(session)

    session.stale_attempts = [attempt("job-1")]

    # The freed slot's credit comes back at once, since no result will carry it.
    assert (await session.expect("credit", ignore=_QUIET)).credit.slots == 1
    assert running.agent.running_attempts == frozenset()
    heartbeat = await session.next_heartbeat()
    assert list(heartbeat.running_attempts) == []
    session.assign("job-2", todo("noop"))
    result = (await session.expect("result", ignore=_QUIET)).result
    assert result.job_id == "job-2"
    await _quiet_until_barrier(session)


async def test_agent_keeps_retrying_until_the_server_comes_up(
    start_scheduler: StartScheduler,
    start_agent: StartAgent,
    connect_failures: _FailureCounter,
) -> None:
    down = await start_scheduler()
    port = down.port
    await down.stop()
    running = start_agent(port)
    await connect_failures.wait_for(2)

    up = await start_scheduler(port=port)

    session = await up.next_session()
    assert session.hello.agent_id == "agent-1"
    session.welcome()
    assert (await session.expect("credit")).credit.slots == 2
    await asyncio.wait_for(running.agent.connected.wait(), 5.0)


async def test_a_silent_server_counts_as_dead_and_the_agent_reconnects(
    scheduler: ScriptedScheduler, connect_agent: ConnectAgent
) -> None:
    running, session = await connect_agent(heartbeat_interval_s=0.05)
    session.auto_ack_heartbeats = False

    second = await scheduler.next_session()

    assert second.hello.agent_id == "agent-1"
    await asyncio.wait_for(session.ended.wait(), 5.0)
    assert not running.agent.connected.is_set()


def test_backoff_is_full_jitter_up_to_a_growing_capped_bound() -> None:
    def upper(low: float, high: float) -> float:
        return high

    bounds = [
        full_jitter_backoff_s(failures, initial_s=0.1, max_s=1.0, uniform=upper)
        for failures in range(6)
    ]

    assert bounds == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert full_jitter_backoff_s(10_000, initial_s=0.1, max_s=5.0, uniform=upper) == 5.0
    assert 0.0 <= full_jitter_backoff_s(3, initial_s=0.1, max_s=1.0) <= 0.8


async def test_a_first_message_other_than_welcome_ends_the_session(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    start_agent(scheduler.port)
    session = await scheduler.next_session()

    session.assign("job-1", todo("noop"))

    second = await scheduler.next_session()
    assert second.hello.agent_id == "agent-1"
    await asyncio.wait_for(session.ended.wait(), 5.0)


async def test_no_welcome_within_the_connect_timeout_ends_the_session(
    scheduler: ScriptedScheduler, start_agent: StartAgent
) -> None:
    running = start_agent(scheduler.port, connect_timeout_s=0.2)
    await scheduler.next_session()

    second = await scheduler.next_session()

    assert second.hello.agent_id == "agent-1"
    assert not running.agent.connected.is_set()
