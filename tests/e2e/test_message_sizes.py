"""Message sizes on the agent stream over real sockets: an output, an assignment or a batch too
large for its receiver fails its task with a clear reason (or is split) and never wedges the
stream: the agent stays on its first session and later work runs.

The server takes requests of up to 256 KiB (its gRPC receive limit is 1 MiB more); the agent's
receive limit and the server's assignment budget keep their 4 MiB defaults unless a test says
otherwise. Leases are longer than elsewhere in e2e: these tests count attempts and sessions, and
a lease lost on a loaded machine would add one of each.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cpa.common.v1 import agent_capabilities_pb2, error_pb2, todo_pb2
from cpa.executor.v1 import executor_service_pb2 as ex
from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa_agent import Agent, ExecutionContext, ExecutorRegistry, builtin_registry
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import EVENT_TIMEOUT_S, HEARTBEAT_S, Agents, finished, todo, todos_spec
from .raw_agent import RawAgentStream

KIB = 1024
MIB = 1024 * KIB
# Just under the e2e server's report budget (256 KiB): a result this big is still sent.
UNDER_REPORT_BUDGET = 240 * KIB


@pytest.fixture
def scheduler_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        lease_duration_s=10.0,
        heartbeat_interval_s=HEARTBEAT_S,
        max_request_bytes=256 * KIB,
    )


class _Blob:
    """Returns `params.bytes` bytes of output (under key "blob"), once `gate` is open;
    `all_started` is set once `expected` attempts started."""

    action = "blob"

    def __init__(self, *, expected: int = 1) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self._expected = expected
        self._started = 0
        self.all_started = asyncio.Event()

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self._started += 1
        if self._started >= self._expected:
            self.all_started.set()
        await self.gate.wait()
        return {"blob": "x" * int(ctx.params["bytes"])}


def _registry(blob: _Blob) -> ExecutorRegistry:
    registry = builtin_registry()
    registry.register(blob)
    return registry


def _error_of(job: S.Job, task_id: str) -> error_pb2.TaskError:
    (task,) = [task for task in job.tasks if task.todo.id == task_id]
    return task.error


async def _later_job_succeeds(client: SchedulerClient) -> None:
    later = await client.schedule_job(todos_spec(todo("after", "noop")))
    assert (await finished(client, later.job.job_id)).state == S.JOB_STATE_SUCCEEDED


def _only_session(agent: Agent) -> None:
    """The agent is on the session it opened first: nothing made it reconnect."""
    assert agent.sessions_started == 1
    assert agent.connected.is_set()
    assert agent.unacked_results == ()


async def test_the_welcome_tells_the_budgets_the_smaller_receive_limit_winning(
    raw_stream: RawAgentStream,
) -> None:
    capabilities = agent_capabilities_pb2.AgentCapabilities(actions=["noop"], slots=1)
    hello = ex.Hello(agent_id="small", capabilities=capabilities, max_receive_bytes=MIB)
    raw_stream.send(ex.ConnectRequest(hello=hello))

    welcome = (await raw_stream.read_until("welcome")).welcome

    assert welcome.max_report_bytes == 256 * KIB  # the server's max_request_bytes
    assert welcome.max_assignment_bytes == MIB  # the agent's, smaller than the server's 4 MiB


async def test_an_output_over_the_report_budget_fails_its_task_and_the_stream_stays_up(
    client: SchedulerClient, agents: Agents
) -> None:
    # One slot: the later job runs only if the failed attempt handed its slot back.
    blob = _Blob()
    agent = await agents.start("agent-1", registry=_registry(blob), slots=1)
    retrying = todo_pb2.RetryPolicy(max_attempts=3)
    # 6 MiB: larger than the server's report budget and its gRPC receive limit.
    response = await client.schedule_job(
        todos_spec(todo("big", "blob", params={"bytes": 6 * MIB}, retry_policy=retrying))
    )

    job = await finished(client, response.job.job_id)

    assert job.state == S.JOB_STATE_FAILED
    error = _error_of(job, "big")
    assert (error.code, error.reason, error.retryable) == (
        "OUTPUT_TOO_LARGE",
        error_pb2.ERROR_REASON_OUTPUT_TOO_LARGE,
        False,
    )
    assert "262144" in error.message  # the limit (the welcome's max_report_bytes)
    (task,) = job.tasks
    assert len(task.attempts) == 1  # not retried
    _only_session(agent)
    await _later_job_succeeds(client)
    _only_session(agent)


async def test_results_ending_together_go_in_batches_the_server_accepts(
    client: SchedulerClient, agents: Agents
) -> None:
    # Each result fits the report budget; eight of them in one batch would not (nor the
    # server's gRPC limit): the agent splits them by bytes.
    blob = _Blob(expected=8)
    blob.gate.clear()
    agent = await agents.start("agent-1", registry=_registry(blob), slots=8)
    response = await client.schedule_job(
        todos_spec(*(todo(f"t{n}", "blob", params={"bytes": 200 * KIB}) for n in range(8)))
    )
    job_id = response.job.job_id
    await asyncio.wait_for(blob.all_started.wait(), EVENT_TIMEOUT_S)
    blob.gate.set()  # all eight end at once

    job = await finished(client, job_id)

    assert job.state == S.JOB_STATE_SUCCEEDED
    assert all(len(task.attempts) == 1 for task in job.tasks)
    _only_session(agent)


def _fan_in(inputs: int) -> S.JobSpec:
    """`big` outputs a value just under the report budget; `sink` takes it `inputs` times."""
    references = {
        f"v{n}": todo_pb2.OutputReference(task_id="big", output_key="blob") for n in range(inputs)
    }
    return todos_spec(
        todo("big", "blob", params={"bytes": UNDER_REPORT_BUDGET}),
        todo(
            "sink",
            "noop",
            depends_on=["big"],
            inputs=references,
            retry_policy=todo_pb2.RetryPolicy(max_attempts=3),
        ),
    )


async def test_an_assignment_over_its_budget_fails_its_task_unsent(
    client: SchedulerClient, agents: Agents
) -> None:
    # 18 x 240 KiB: over the 4 MiB assignment budget, and over the agent's 4 MiB receive limit.
    agent = await agents.start("agent-1", registry=_registry(_Blob()), slots=1)
    response = await client.schedule_job(_fan_in(18))

    job = await finished(client, response.job.job_id)

    assert job.state == S.JOB_STATE_FAILED
    error = _error_of(job, "sink")
    assert (error.code, error.reason, error.retryable) == (
        "ASSIGNMENT_TOO_LARGE",
        error_pb2.ERROR_REASON_ASSIGNMENT_TOO_LARGE,
        False,
    )
    assert str(4 * MIB) in error.message
    (sink,) = [task for task in job.tasks if task.todo.id == "sink"]
    assert len(sink.attempts) == 1  # not retried
    _only_session(agent)
    await _later_job_succeeds(client)
    _only_session(agent)


async def test_an_assignment_over_what_the_agent_accepts_fails_with_the_agents_limit(
    client: SchedulerClient, agents: Agents
) -> None:
    # The agent takes at most 1 MiB (its hello says so); the server's budget is 4 MiB.
    agent = await agents.start(
        "agent-1", registry=_registry(_Blob()), max_receive_bytes=MIB, slots=1
    )
    response = await client.schedule_job(_fan_in(5))  # 1.2 MiB

    job = await finished(client, response.job.job_id)

    error = _error_of(job, "sink")
    assert error.reason == error_pb2.ERROR_REASON_ASSIGNMENT_TOO_LARGE
    assert str(MIB) in error.message
    _only_session(agent)
    await _later_job_succeeds(client)


async def test_assignments_sent_together_are_batched_within_what_the_agent_accepts(
    client: SchedulerClient, agents: Agents
) -> None:
    # Four 50 KiB assignments go out at once (jobs created together are placed at once); the
    # agent takes 128 KiB at most: the server cuts them into batches that fit.
    agent = await agents.start("agent-1", max_receive_bytes=128 * KIB, slots=4)
    specs = [todos_spec(todo("t", "echo", params={"pad": "y" * 50 * KIB})) for _ in range(4)]

    created = await client.batch_schedule_jobs(specs)

    for answer in created:
        assert (await finished(client, answer.job.job_id)).state == S.JOB_STATE_SUCCEEDED
    _only_session(agent)
