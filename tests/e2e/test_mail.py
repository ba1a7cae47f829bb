"""The mail executor behind a real scheduler and agent over gRPC, against the loopback Graph
over HTTPS with real MSAL: a send_mail ToDo ends with the mail delivered; a wrong client secret
fails the task for good with Entra's description, and the secret is nowhere the scheduler sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from cpa.scheduler.v1 import job_pb2 as S  # noqa: N812 - short alias for enum-heavy asserts
from cpa_agent import ExecutorRegistry, builtin_registry
from cpa_agent.executors.base import Executor
from cpa_agent.executors.mail import executors
from cpa_cli.demo.graph_server import LoopbackGraph
from cpa_client import SchedulerClient
from tests.fixtures.mail import ACCOUNTING, MAILBOX, settings_for

from .conftest import Agents, collect_events, finished, todo, todos_spec


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[LoopbackGraph]:
    async with LoopbackGraph(tmp_path / "tls", mailboxes=(MAILBOX, ACCOUNTING)) as server:
        yield server


async def start_mail_agent(
    agents: Agents, graph: LoopbackGraph, made: list[Executor], **overrides: object
) -> None:
    registry: ExecutorRegistry = builtin_registry()
    for executor in executors(settings_for(graph, **overrides)):
        registry.register(executor)
        made.append(executor)
    await agents.start("mail-agent", registry=registry)


@pytest.fixture
async def made() -> AsyncIterator[list[Executor]]:
    executors_made: list[Executor] = []
    yield executors_made
    for executor in executors_made:
        await executor.aclose()  # type: ignore[attr-defined]


async def test_a_send_mail_task_is_delivered_through_scheduler_agent_and_graph(
    client: SchedulerClient, agents: Agents, graph: LoopbackGraph, made: list[Executor]
) -> None:
    await start_mail_agent(agents, graph, made)
    # Graph throttles the first try: the agent waits it out within the attempt.
    graph.fail_next(1, status=429, retry_after=0.2, endpoint="sendMail")

    response = await client.schedule_job(
        todos_spec(
            todo(
                "notify",
                "send_mail",
                params={
                    "to": [ACCOUNTING],
                    "subject": "Invoice forwarded",
                    "body": "The November invoice is in the portal.",
                },
            )
        )
    )
    job = await finished(client, response.job.job_id)

    assert job.state == S.JOB_STATE_SUCCEEDED
    [task] = job.tasks
    assert len(task.attempts) == 1
    outputs = json_format.MessageToDict(task.outputs)
    assert outputs["sent"] is True
    assert outputs["to"] == [ACCOUNTING]
    [delivered] = graph.delivered
    assert (delivered.mailbox, delivered.to) == (MAILBOX, (ACCOUNTING,))
    assert delivered.subject == "Invoice forwarded"
    assert delivered.body == "The November invoice is in the portal."
    assert [call.status for call in graph.calls("sendMail")] == [429, 202]


async def test_a_wrong_client_secret_fails_the_task_for_good_and_never_reaches_the_scheduler(
    client: SchedulerClient,
    agents: Agents,
    graph: LoopbackGraph,
    made: list[Executor],
    tmp_path: Path,
) -> None:
    wrong = "Wr0ng~Secret.Value-e2e-5d2a"
    await start_mail_agent(agents, graph, made, client_secret=wrong)

    response = await client.schedule_job(
        todos_spec(
            todo(
                "notify",
                "send_mail",
                params={"to": ACCOUNTING, "subject": "x"},
                retry_policy={"max_attempts": 3},
            )
        )
    )
    job_id = response.job.job_id
    events = await collect_events(client, job_id)
    job = await client.get_job(job_id)

    assert job.state == S.JOB_STATE_FAILED
    [task] = job.tasks
    assert len(task.attempts) == 1  # not retryable: no second attempt
    assert task.error.code == "invalid_client"
    assert "AADSTS7000215: Invalid client secret provided" in task.error.message
    assert not task.error.retryable
    assert graph.delivered == []
    # Neither secret is in anything the scheduler answered or stored.
    seen = job.SerializeToString() + b"".join(e.SerializeToString() for e in events)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    for secret in (wrong, graph.client_secret):
        assert secret.encode() not in seen
        assert secret.encode() not in stored
