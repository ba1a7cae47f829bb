"""The Redis agent directory: every replica lists every replica's agents, records of a replica
that stops announcing expire, and cancels reach the replica that holds the agent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from cpa_scheduler.dispatch import AgentProfile, CancelMessage, ControlMessage, SessionRegistry
from cpa_scheduler.dispatch.directory import AgentRecord
from cpa_scheduler.dispatch.redis_directory import (
    RedisAgentDirectory,
    agent_record_from_data,
    agent_record_to_data,
    cancel_from_data,
    cancel_to_data,
)
from cpa_scheduler.domain import AgentState, AttemptRef

from .conftest import DEADLINE_S, DirectoryFactory, FakeStream, make_session, wait_until

CANCEL = CancelMessage(attempt=AttemptRef("job-1", "t1", 2), reason="job cancelled")


def registry(*sessions: tuple[str, str]) -> SessionRegistry:
    registry = SessionRegistry()
    for agent_id, tenant in sessions:
        registry.add(make_session(agent_id, tenant))
    return registry


async def agent_ids(directory: RedisAgentDirectory, tenant: str) -> list[tuple[str, str]]:
    return [(r.agent_id, r.replica_id) for r in await directory.list_agents(tenant)]


def deliver_to(sessions: SessionRegistry) -> Callable[[ControlMessage, str, str], None]:
    """What the server wires as on_cancel: hand the cancel to the local session."""

    def on_cancel(cancel: ControlMessage, tenant: str, agent_id: str) -> None:
        session = sessions.get(tenant, agent_id)
        if session is not None:
            session.deliver(cancel)

    return on_cancel


async def test_each_replica_lists_the_agents_of_every_replica(
    directories: DirectoryFactory,
) -> None:
    agent_1, agent_2, agent_3 = (
        make_session("agent-1", "tenant-1"),
        make_session("agent-2", "tenant-2"),
        make_session("agent-3", "tenant-1"),
    )
    sessions_a, sessions_b = SessionRegistry(), SessionRegistry()
    sessions_a.add(agent_3)
    sessions_b.add(agent_1)
    sessions_b.add(agent_2)
    a = await directories("replica-a", sessions_a)
    b = await directories("replica-b", sessions_b)
    await a.announce()
    await b.announce()

    expected = [
        AgentRecord.of(agent_1, replica_id="replica-b"),
        AgentRecord.of(agent_3, replica_id="replica-a"),
    ]
    assert await a.list_agents("tenant-1") == expected
    assert await b.list_agents("tenant-1") == expected
    assert await agent_ids(a, "tenant-2") == [("agent-2", "replica-b")]
    assert await a.list_agents("tenant-3") == []


async def test_announce_now_makes_a_new_agent_visible_without_waiting_an_interval(
    directories: DirectoryFactory,
) -> None:
    sessions_a = SessionRegistry()
    a = await directories("replica-a", sessions_a, announce_interval_s=60.0)
    b = await directories("replica-b", SessionRegistry())

    sessions_a.add(make_session("agent-1", "tenant-1"))
    a.announce_now()

    async def visible() -> bool:
        return await agent_ids(b, "tenant-1") == [("agent-1", "replica-a")]

    await wait_until(visible, what="replica b lists the new agent")


async def test_agent_that_left_is_no_longer_listed(directories: DirectoryFactory) -> None:
    sessions_a = registry(("agent-1", "tenant-1"), ("agent-2", "tenant-1"))
    a = await directories("replica-a", sessions_a)
    b = await directories("replica-b", SessionRegistry())
    await a.announce()
    session = sessions_a.get("tenant-1", "agent-1")
    assert session is not None

    sessions_a.remove(session)
    await a.announce()

    assert await agent_ids(b, "tenant-1") == [("agent-2", "replica-a")]


async def test_agents_of_a_replica_that_stops_announcing_expire(
    directories: DirectoryFactory, redis_client: Redis, redis_prefix: str
) -> None:
    # Never started: it announces once, as a replica does right before it dies.
    dead = await directories(
        "replica-a", registry(("agent-1", "tenant-1")), announce_interval_s=0.1, start=False
    )
    b = await directories("replica-b", SessionRegistry())
    await dead.announce()
    assert await agent_ids(b, "tenant-1") == [("agent-1", "replica-a")]

    async def expired() -> bool:
        return await b.list_agents("tenant-1") == []

    await wait_until(expired, what="the dead replica's agent expired")
    assert await redis_client.keys(f"{redis_prefix}:*") == []  # nothing of it lingers


async def test_agent_that_moved_to_another_replica_is_not_withdrawn_by_the_old_one(
    directories: DirectoryFactory,
) -> None:
    sessions_a, sessions_b = registry(("agent-1", "tenant-1")), SessionRegistry()
    a = await directories("replica-a", sessions_a)
    b = await directories("replica-b", sessions_b)
    await a.announce()

    # The agent reconnects to b before a notices that its old stream ended.
    session = sessions_a.get("tenant-1", "agent-1")
    assert session is not None
    sessions_b.add(make_session("agent-1", "tenant-1"))
    await b.announce()
    sessions_a.remove(session)
    await a.announce()

    assert await agent_ids(a, "tenant-1") == [("agent-1", "replica-b")]


async def test_close_withdraws_the_replicas_agents(directories: DirectoryFactory) -> None:
    a = await directories("replica-a", registry(("agent-1", "tenant-1")))
    b = await directories("replica-b", SessionRegistry())
    await a.announce()

    await a.close()

    assert await b.list_agents("tenant-1") == []


async def test_cancel_reaches_an_agent_held_by_another_replica(
    directories: DirectoryFactory,
) -> None:
    stream = FakeStream()
    sessions_b = SessionRegistry()
    sessions_b.add(make_session("agent-1", "tenant-1", stream))
    a = await directories("replica-a", SessionRegistry())
    b = await directories("replica-b", sessions_b)
    b.on_cancel = deliver_to(sessions_b)
    await b.announce()

    assert await a.route_cancel("tenant-1", "agent-1", CANCEL) is True

    await asyncio.wait_for(stream.arrived.wait(), DEADLINE_S)
    assert stream.sent == [CANCEL]


async def test_cancel_for_a_local_agent_is_delivered_directly(
    directories: DirectoryFactory,
) -> None:
    stream = FakeStream()
    sessions = SessionRegistry()
    sessions.add(make_session("agent-1", "tenant-1", stream))
    a = await directories("replica-a", sessions)

    assert await a.route_cancel("tenant-1", "agent-1", CANCEL) is True
    assert stream.sent == [CANCEL]


async def test_cancel_for_an_agent_nobody_holds_is_not_routed(
    directories: DirectoryFactory,
) -> None:
    a = await directories("replica-a", SessionRegistry())
    # A replica that died: its record has not expired yet, but nobody listens for it.
    dead = await directories("replica-dead", registry(("agent-2", "tenant-1")), start=False)
    await dead.announce()

    assert await a.route_cancel("tenant-1", "agent-1", CANCEL) is False
    assert await a.route_cancel("tenant-1", "agent-2", CANCEL) is False


def test_record_and_cancel_survive_json() -> None:
    record = AgentRecord.of(make_session("agent-1", "tenant-1"), replica_id="replica-a")
    draining = AgentRecord(
        profile=AgentProfile(agent_id="agent-2", tenant="tenant-1"),
        replica_id="replica-b",
        state=AgentState.DRAINING,
        connect_time=record.connect_time,
        last_seen_time=record.last_seen_time,
    )

    for original in (record, draining):
        assert agent_record_from_data(agent_record_to_data(original)) == original
    assert cancel_from_data(cancel_to_data(CANCEL)) == CANCEL


async def test_announce_interval_must_be_positive() -> None:
    client = Redis()  # never connects
    try:
        with pytest.raises(ValueError, match="announce_interval_s"):
            RedisAgentDirectory(client, SessionRegistry(), replica_id="r", announce_interval_s=0)
    finally:
        await client.aclose()


async def test_close_stops_a_directory_that_is_busy_announcing(
    redis_client: Redis, redis_prefix: str
) -> None:
    # redis-py can lose a cancel that lands mid-command; close() must still end the loops.
    for _ in range(20):
        directory = RedisAgentDirectory(
            redis_client,
            registry(("agent-1", "tenant-1")),
            replica_id="replica-a",
            announce_interval_s=0.001,
            prefix=redis_prefix,
        )
        await directory.start()
        await directory.announce()
        await asyncio.wait_for(directory.close(), DEADLINE_S)


async def test_two_tenants_may_use_the_same_agent_id(directories: DirectoryFactory) -> None:
    stream_1, stream_2 = FakeStream(), FakeStream()
    sessions_b = SessionRegistry()
    sessions_b.add(make_session("agent-1", "tenant-1", stream_1))
    sessions_b.add(make_session("agent-1", "tenant-2", stream_2))
    a = await directories("replica-a", SessionRegistry())
    b = await directories("replica-b", sessions_b)
    b.on_cancel = deliver_to(sessions_b)
    await b.announce()

    # Each tenant lists its own agent; neither record replaced the other.
    assert await agent_ids(a, "tenant-1") == [("agent-1", "replica-b")]
    assert await agent_ids(a, "tenant-2") == [("agent-1", "replica-b")]
    # A cancel reaches the agent of the job's tenant only.
    assert await a.route_cancel("tenant-2", "agent-1", CANCEL) is True
    await asyncio.wait_for(stream_2.arrived.wait(), DEADLINE_S)
    assert (stream_1.sent, stream_2.sent) == ([], [CANCEL])
