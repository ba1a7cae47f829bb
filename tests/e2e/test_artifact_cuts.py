"""An artifact call cut with the agent's connection (a TCP reset through tests/fixtures/
tcp_proxy.py, in the middle of the bytes) is made again on a session that lives: the agent's
next one, which adopted the attempt. Not at once on the session the reset ended, whose id the
scheduler no longer knows (it would refuse the upload: FAILED_PRECONDITION, ATTEMPT_NOT_HELD)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa_agent import ExecutionContext
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings
from tests.fixtures.artifact_executors import artifact_registry, content
from tests.fixtures.tcp_proxy import TcpProxy

from .conftest import (
    EVENT_TIMEOUT_S,
    Agents,
    agent_pool,
    e2e_settings,
    finished,
    todo,
    todos_spec,
)

SIZE = 3 * 1024 * 1024 - 5  # three chunks, just under the limit
# Far more than heartbeats and their acks carry in a test's time: these bytes are the artifact's.
CUT_AFTER_BYTES = 256 * 1024


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    return e2e_settings(tmp_path, artifact_max_bytes=SIZE)


@pytest.fixture
async def agents(proxy: TcpProxy) -> AsyncIterator[Agents]:
    """Agents that reach the scheduler through the proxy."""
    async with agent_pool(proxy.address) as pool:
        yield pool


class Gated:
    """`action`: says it started, waits for the test, then does `body` (a save or a read)."""

    def __init__(self, action: str, body: str) -> None:
        self.action = action
        self._body = body
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self.started.set()
        await self.gate.wait()
        if self._body == "save":
            info = await ctx.artifacts.save("report.bin", "application/octet-stream", content(SIZE))
        else:
            info, data = await ctx.artifacts.read_input("doc")
            assert hashlib.sha256(data).hexdigest() == info.sha256
        return {"sha256": info.sha256, "artifact_id": info.artifact_id}


async def run_cut(
    client: SchedulerClient,
    job_id: str,
    agents: Agents,
    proxy: TcpProxy,
    gated: Gated,
    *,
    to_target: bool,
    partition: bool = False,
) -> S.Job:
    """Starts the agent through the proxy; once `gated` runs, arms the cut (or, with
    `partition`, a blackhole healed when the agent dials again) and lets it go. Returns the job
    once it ended, after checking that the agent did connect again."""
    registry = artifact_registry()
    registry.register(gated)
    agent = await agents.start(
        "cut-agent",
        registry=registry,
        reconnect_initial_backoff_s=0.05,
        reconnect_max_backoff_s=0.2,
    )
    await asyncio.wait_for(gated.started.wait(), EVENT_TIMEOUT_S)
    sessions_before = agent.sessions_started
    then = proxy.blackhole if partition else proxy.cut
    proxy.after_bytes(CUT_AFTER_BYTES, to_target=to_target, then=then)
    gated.gate.set()
    await asyncio.wait_for(proxy.tripped.wait(), EVENT_TIMEOUT_S)
    if partition:
        # The agent gives the silent session up (three heartbeats) and dials again.
        proxy.accepted_one.clear()
        await asyncio.wait_for(proxy.accepted_one.wait(), EVENT_TIMEOUT_S)
        proxy.heal()
    job = await finished(client, job_id)
    assert agent.sessions_started > sessions_before
    return job


@pytest.mark.parametrize(
    "partition",
    [
        pytest.param(False, id="reset"),
        # The agent ends the session itself (no server message for three heartbeats): closing
        # its channel cancels the upload's call (grpc.aio raises CancelledError, not an
        # RpcError), which is not the attempt's cancellation.
        pytest.param(True, id="silent"),
    ],
)
async def test_an_upload_cut_with_the_connection_is_stored_on_the_next_session(
    client: SchedulerClient, agents: Agents, proxy: TcpProxy, partition: bool
) -> None:
    gated = Gated("save_gated", "save")
    once = todo_pb2.RetryPolicy(max_attempts=1)
    response = await client.schedule_job(todos_spec(todo("t", "save_gated", retry_policy=once)))
    job_id = response.job.job_id

    job = await run_cut(client, job_id, agents, proxy, gated, to_target=True, partition=partition)

    assert job.state == S.JOB_STATE_SUCCEEDED, [t.attempts for t in job.tasks]
    (task,) = job.tasks
    assert [(a.number, a.state) for a in task.attempts] == [(1, S.ATTEMPT_STATE_SUCCEEDED)]
    expected_sha = hashlib.sha256(content(SIZE)).hexdigest()
    stored = await client.list_artifacts(job_id)
    assert [(a.name, a.attempt, a.size_bytes, a.sha256) for a in stored] == [
        ("report.bin", 1, SIZE, expected_sha)
    ]
    assert dict(task.outputs) == {"sha256": expected_sha, "artifact_id": stored[0].artifact_id}


async def test_a_download_cut_with_the_connection_is_made_again(
    client: SchedulerClient, agents: Agents, proxy: TcpProxy
) -> None:
    gated = Gated("read_gated", "read")
    once = todo_pb2.RetryPolicy(max_attempts=1)
    response = await client.schedule_job(
        todos_spec(
            todo("make", "store_file", params={"name": "doc.bin", "size": SIZE}),
            todo(
                "use",
                "read_gated",
                depends_on=["make"],
                inputs={"doc": todo_pb2.OutputReference(task_id="make", artifact_name="doc.bin")},
                retry_policy=once,
            ),
        )
    )
    job_id = response.job.job_id

    job = await run_cut(client, job_id, agents, proxy, gated, to_target=False)

    assert job.state == S.JOB_STATE_SUCCEEDED, [t.attempts for t in job.tasks]
    use = next(t for t in job.tasks if t.todo.id == "use")
    assert [(a.number, a.state) for a in use.attempts] == [(1, S.ATTEMPT_STATE_SUCCEEDED)]
    assert use.outputs["sha256"] == hashlib.sha256(content(SIZE)).hexdigest()
