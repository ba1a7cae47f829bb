"""Welcome.idle_heartbeat_interval: an agent running no attempt heartbeats at the idle interval,
one running an attempt at heartbeat_interval, and a welcome without it keeps the one interval.

Lower bounds on the gaps are exact (a sleep never ends early); the one upper bound compares
against several idle intervals, so a slow machine cannot make it pass or fail by accident.
"""

from __future__ import annotations

import asyncio
import itertools

from .conftest import ConnectAgent
from .scripted_scheduler import ScriptedSession, attempt, todo

HEARTBEAT_S = 0.05
IDLE_S = 1.0


async def _heartbeats(session: ScriptedSession, count: int) -> list[tuple[float, list[str]]]:
    """The next `count` heartbeats: arrival time and the jobs of the attempts they list."""
    loop = asyncio.get_running_loop()
    seen = []
    for _ in range(count):
        heartbeat = await session.next_heartbeat()
        seen.append((loop.time(), [a.job_id for a in heartbeat.running_attempts]))
    return seen


def _gaps(heartbeats: list[tuple[float, list[str]]]) -> list[float]:
    return [b[0] - a[0] for a, b in itertools.pairwise(heartbeats)]


async def test_an_idle_agent_heartbeats_at_the_idle_interval_and_a_busy_one_at_the_other(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent(
        heartbeat_interval_s=HEARTBEAT_S, idle_heartbeat_interval_s=IDLE_S
    )
    await session.expect("credit")

    idle = await _heartbeats(session, 3)
    assert all(jobs == [] for _, jobs in idle)
    assert min(_gaps(idle)) >= 0.9 * IDLE_S

    session.assign("job-1", todo("wait", params={"seconds": 30}))
    # The sleep under way when the attempt started may be an idle one; after it, the short one.
    first_busy = await session.next_heartbeat(timeout_s=2 * IDLE_S + 5)
    assert first_busy.running_attempts == [attempt("job-1")]
    busy = await _heartbeats(session, 5)
    assert all(jobs == ["job-1"] for _, jobs in busy)
    # Four idle gaps would take at least 3.6 s; four busy ones take 0.2 s on a quiet machine.
    assert busy[-1][0] - busy[0][0] < 3 * IDLE_S
    assert running.agent.sessions_started == 1


async def test_without_an_idle_interval_the_agent_keeps_the_heartbeat_interval(
    connect_agent: ConnectAgent,
) -> None:
    running, session = await connect_agent(heartbeat_interval_s=HEARTBEAT_S)
    await session.expect("credit")
    idle = await _heartbeats(session, 6)
    # Five gaps of the idle interval would take 5 s: these are heartbeat intervals.
    assert idle[-1][0] - idle[0][0] < 3 * IDLE_S
    assert min(_gaps(idle)) >= 0.9 * HEARTBEAT_S
    assert running.agent.sessions_started == 1


async def test_an_idle_agent_whose_server_falls_silent_gives_the_stream_up(
    connect_agent: ConnectAgent,
) -> None:
    # Silence is judged against the interval in use: idle, the agent waits three idle
    # intervals, then reconnects.
    running, session = await connect_agent(
        heartbeat_interval_s=HEARTBEAT_S, idle_heartbeat_interval_s=0.3
    )
    await session.expect("credit")
    loop = asyncio.get_running_loop()
    session.auto_ack_heartbeats = False
    silent_from = loop.time()
    await asyncio.wait_for(session.ended.wait(), timeout=20)
    # The last ack came at most one idle interval before; the agent waits three from it.
    assert loop.time() - silent_from >= 2 * 0.3
    assert running.agent.sessions_started == 1


async def test_an_attempt_cuts_an_idle_sleep_longer_than_a_lease_short(
    connect_agent: ConnectAgent,
) -> None:
    # An idle interval may be longer than a lease (CPA_IDLE_HEARTBEAT_INTERVAL_S up to 300 s):
    # a new attempt's lease runs from its assignment, so its first heartbeat cannot wait for
    # the idle sleep to end. Assigned just after an idle heartbeat, the old rule's first busy
    # heartbeat came a whole idle interval (60 s) later.
    long_idle_s = 60.0
    running, session = await connect_agent(
        heartbeat_interval_s=HEARTBEAT_S, idle_heartbeat_interval_s=long_idle_s
    )
    await session.expect("credit")
    loop = asyncio.get_running_loop()
    assigned_at = loop.time()
    session.assign("job-1", todo("wait", params={"seconds": 30}))
    first_busy = await session.next_heartbeat(timeout_s=long_idle_s / 4)
    assert first_busy.running_attempts == [attempt("job-1")]
    assert loop.time() - assigned_at < long_idle_s / 4
    assert running.agent.sessions_started == 1
