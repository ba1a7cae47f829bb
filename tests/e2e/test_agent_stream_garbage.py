"""Garbage on the agent stream: bytes that are no ConnectRequest, and messages that decode but
make no sense, are INVALID_ARGUMENT with one log line, never INTERNAL or a traceback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from cpa.executor.v1 import executor_service_pb2 as ex
from cpa_client import CpaError

from .conftest import EVENT_TIMEOUT_S, Scheduler
from .raw_agent import RawAgentStream

CONNECT = "/cpa.executor.v1.ExecutorService/Connect"
# A field 1 (report_id, varint) whose varint never ends: no protobuf parser accepts it.
UNDECODABLE = b"\x08" + b"\xff" * 12


async def _status_of(target: str, *messages: bytes) -> CpaError:
    """Sends `messages` as raw bytes on one Connect call; the status it ends with."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(CONNECT, request_serializer=None, response_deserializer=None)

        async def requests() -> AsyncIterator[bytes]:
            for message in messages:
                yield message
            await asyncio.Event().wait()  # keep the call open: the server must end it

        stream = call(requests(), timeout=EVENT_TIMEOUT_S)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
        return CpaError.from_rpc_error(caught.value)


def _hello(agent_id: str) -> bytes:
    hello = ex.Hello(agent_id=agent_id)
    hello.capabilities.slots = 1
    return ex.ConnectRequest(hello=hello).SerializeToString()


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([UNDECODABLE], id="undecodable-first"),
        pytest.param([_hello("g1"), UNDECODABLE], id="undecodable-after-hello"),
        pytest.param([ex.ConnectRequest().SerializeToString()], id="no-kind-first"),
        pytest.param(
            [ex.ConnectRequest(credit=ex.Credit(slots=1)).SerializeToString()],
            id="credit-first",
        ),
    ],
)
async def test_garbage_is_invalid_argument_with_one_log_line(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture, messages: list[bytes]
) -> None:
    caplog.set_level(logging.INFO)

    error = await _status_of(scheduler.target, *messages)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason in ("MALFORMED_MESSAGE", "MISSING_FIELD"), error
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert tracebacks == []
    assert all(r.levelno < logging.ERROR for r in caplog.records)


async def test_the_server_serves_agents_after_garbage(
    scheduler: Scheduler, raw_stream: RawAgentStream
) -> None:
    await _status_of(scheduler.target, UNDECODABLE)
    welcome = await raw_stream.hello("after-garbage")
    assert welcome.session_id
