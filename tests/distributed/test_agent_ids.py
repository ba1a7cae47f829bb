"""Agent ids across replicas: a live id held by one replica is refused by another, unless the
hello names that session (a reconnect), which then moves over and is closed where it was."""

from __future__ import annotations

import grpc

from cpa_client import CpaError, SchedulerClient
from tests.e2e.raw_agent import RawAgentStream
from tests.fixtures.cluster import Cluster
from tests.fixtures.history import TIMEOUT_S, agents_connected


async def test_a_live_agent_id_of_another_replica_is_refused_unless_its_session_is_named(
    cluster: Cluster,
) -> None:
    first, second = cluster.replica("r1"), cluster.replica("r2")
    holder = RawAgentStream(first.target)
    duplicate = RawAgentStream(second.target)
    reconnect = RawAgentStream(second.target)
    try:
        welcome = await holder.hello("agent-1")
        async with SchedulerClient(second.target, timeout_s=TIMEOUT_S) as client:
            await agents_connected(client, "agent-1")  # r2 sees r1's record

        duplicate.send_hello("agent-1")
        try:
            while await duplicate.read() is not None:
                pass
            raise AssertionError("the duplicate was welcomed")
        except grpc.aio.AioRpcError as failure:
            error = CpaError.from_rpc_error(failure)
        assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "AGENT_ID_IN_USE")
        assert "'r1'" in error.message
        await holder.heartbeat_ack()  # untouched

        # The agent reconnects to r2 naming its session on r1: welcomed, and r1 closes the old.
        await reconnect.hello("agent-1", resume_session_id=welcome.session_id)
        assert await holder.read() is None
    finally:
        for stream in (holder, duplicate, reconnect):
            await stream.close()
