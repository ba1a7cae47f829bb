"""Agent tokens: scoped to a tenant and to what the agent may advertise, checked at hello;
revoking one closes the live stream. Real agents (cpa_agent) and hand-driven streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from cpa.common.v1 import agent_capabilities_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.executor.v1 import executor_service_pb2_grpc
from cpa_agent import Agent, AgentSettings, builtin_registry
from cpa_client import CpaError

from .conftest import CACHE_TTL_S, SecureScheduler

WAIT_S = 20.0


async def _hello(
    target: str,
    token: str,
    *,
    actions: list[str],
    capabilities: list[str] | None = None,
    tenant: str = "",
) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall[ex.ConnectRequest, ex.ConnectResponse]]:
    channel = grpc.aio.insecure_channel(target)
    stub = executor_service_pb2_grpc.ExecutorServiceStub(channel)
    outgoing: asyncio.Queue[ex.ConnectRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[ex.ConnectRequest]:
        while True:
            yield await outgoing.get()

    call = stub.Connect(requests(), metadata=(("authorization", f"Bearer {token}"),))
    outgoing.put_nowait(
        ex.ConnectRequest(
            hello=ex.Hello(
                agent_id=f"probe-{time.monotonic_ns()}",
                tenant=tenant,
                capabilities=agent_capabilities_pb2.AgentCapabilities(
                    actions=actions, capabilities=capabilities or [], slots=1
                ),
            )
        )
    )
    return channel, call


async def _refusal(
    call: grpc.aio.StreamStreamCall[ex.ConnectRequest, ex.ConnectResponse],
) -> CpaError:
    """The error the stream ends with (it must end with one, within WAIT_S)."""
    try:
        async with asyncio.timeout(WAIT_S):
            while isinstance(await call.read(), ex.ConnectResponse):
                pass
    except grpc.aio.AioRpcError as error:
        return CpaError.from_rpc_error(error)
    raise AssertionError("the stream ended with status OK")


async def test_a_hello_advertising_more_than_the_token_allows_is_refused(
    secure: SecureScheduler,
) -> None:
    _, token = await secure.key("agent", actions=["noop", "browser.*"], capabilities=["gpu"])
    cases = [
        (["noop", "browser.goto", "fail"], [], "hello.capabilities.actions[2]", "'fail'"),
        (["noop"], ["gpu", "chromium"], "hello.capabilities.capabilities[1]", "'chromium'"),
    ]
    for actions, capabilities, field, named in cases:
        channel, call = await _hello(
            secure.target, token, actions=actions, capabilities=capabilities
        )
        try:
            error = await _refusal(call)
        finally:
            await channel.close(grace=None)
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "CAPABILITY_NOT_ALLOWED",
        )
        assert error.metadata.get("field") == field
        assert named in error.message


async def test_a_hello_within_the_token_is_welcomed_in_the_tokens_tenant(
    secure: SecureScheduler,
) -> None:
    _, token = await secure.key("agent", tenant="acme", actions=["noop", "browser.*"])
    channel, call = await _hello(secure.target, token, actions=["noop", "browser.goto"])
    try:
        first = await asyncio.wait_for(call.read(), WAIT_S)
        assert isinstance(first, ex.ConnectResponse)
        assert first.WhichOneof("kind") == "welcome"
        _, viewer = await secure.key("viewer", tenant="acme")
        async with secure.client(viewer) as client:
            agents = [agent async for agent in client.list_agents()]
        assert [agent.tenant for agent in agents] == ["acme"]
    finally:
        call.cancel()
        await channel.close(grace=None)
    # Naming another tenant than the token's is refused.
    channel, call = await _hello(secure.target, token, actions=["noop"], tenant="globex")
    try:
        error = await _refusal(call)
    finally:
        await channel.close(grace=None)
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.metadata.get("field") == "hello.tenant"


async def test_an_agent_token_opens_no_scheduler_calls(secure: SecureScheduler) -> None:
    _, token = await secure.key("agent", actions=["*"])
    async with secure.client(token) as client:
        with pytest.raises(CpaError) as caught:
            await client.get_job("anything")
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "jobs.read" in caught.value.message


async def test_revoking_a_token_ends_its_stream_with_credential_revoked(
    secure: SecureScheduler,
) -> None:
    key_id, token = await secure.key("agent", actions=["*"])
    channel, call = await _hello(secure.target, token, actions=["noop"])
    try:
        first = await asyncio.wait_for(call.read(), WAIT_S)
        assert isinstance(first, ex.ConnectResponse)
        assert first.WhichOneof("kind") == "welcome"
        revoked_at = time.monotonic()
        await secure.revoke(key_id)
        error = await _refusal(call)
        closed_after_s = time.monotonic() - revoked_at
    finally:
        await channel.close(grace=None)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_REVOKED")
    # The replica that revoked it closes the stream at once (other replicas within the TTL:
    # tests/security/test_revocation_replicas.py shows it for WatchJob, the same watch).
    assert closed_after_s < CACHE_TTL_S
    # A new stream on the token is refused at once.
    channel, call = await _hello(secure.target, token, actions=["noop"])
    try:
        error = await _refusal(call)
    finally:
        await channel.close(grace=None)
    assert error.reason == "CREDENTIAL_REVOKED"


async def test_the_agent_sends_its_token_and_loses_its_session_when_revoked(
    secure: SecureScheduler,
) -> None:
    key_id, token = await secure.key("agent", actions=["*"])
    agent = Agent(
        settings=AgentSettings(
            server=secure.target,
            agent_id="revoked-agent",
            token=token,
            reconnect_max_backoff_s=0.2,
        ),
        registry=builtin_registry(),
    )
    running = asyncio.create_task(agent.async_run())
    try:
        await asyncio.wait_for(agent.connected.wait(), WAIT_S)
        await secure.revoke(key_id)
        async with asyncio.timeout(WAIT_S):
            # No event says "disconnected": look at `connected` until it clears (deadline above).
            while agent.connected.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert agent.sessions_started == 1
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
