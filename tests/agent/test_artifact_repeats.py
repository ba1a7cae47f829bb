"""An artifact call that fails with CANCELLED while the agent's session lives is made again on
that same session once the server has spoken on it (proof that it lives), without a reconnect.
(A call cut with the connection itself, made again on the next session: tests/e2e/
test_artifact_cuts.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from cpa_agent import ExecutionContext, builtin_registry

from .conftest import ConnectAgent
from .scripted_scheduler import DEFAULT_WAIT_S, ScriptedScheduler, todo


class Saver:
    action = "save"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        info = await ctx.artifacts.save("a.txt", "text/plain", b"twelve bytes")
        return {"artifact_id": info.artifact_id}


async def test_a_cancelled_upload_is_made_again_on_the_session_the_server_spoke_on(
    connect_agent: ConnectAgent, scheduler: ScriptedScheduler
) -> None:
    registry = builtin_registry()
    registry.register(Saver())
    # Heartbeats far apart: the server speaks only when the test says (and the agent does not
    # give the session up meanwhile).
    running, session = await connect_agent(registry=registry, heartbeat_interval_s=30.0)
    await session.expect("credit")
    scheduler.upload_aborts.append(grpc.StatusCode.CANCELLED)
    session.assign("job-1", todo("save"))
    first = await asyncio.wait_for(scheduler.uploads.get(), DEFAULT_WAIT_S)

    await session.barrier()  # the server speaks on the session
    again = await asyncio.wait_for(scheduler.uploads.get(), DEFAULT_WAIT_S)

    assert again == first  # the same session id, for the same attempt
    result = await session.expect("result")
    assert result.result.outputs["artifact_id"] == "artifact-1", result
    assert running.agent.sessions_started == 1
