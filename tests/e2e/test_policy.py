"""Tenant policies through the real gRPC server (docs/POLICY.md): refused at submission with
PERMISSION_DENIED / POLICY_VIOLATION naming ToDo, rule and field (ScheduleJob, BatchScheduleJobs,
LAM refuse), at RetryJob, and at dispatch when the policy was tightened after submission."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from cpa.common.v1 import error_pb2
from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient
from cpa_scheduler.settings import Settings
from tests.fixtures.history import eventually

from .conftest import Agents, Scheduler, finished, todo, todos_spec

# The embedded server's callers act for tenant "default" (no x-cpa-tenant metadata).
POLICY = """
description: the default tenant may browse its portal and mail its own domain
actions:
  deny: [shell.exec]
urls:
  allow: [portal.example.com]
callback_urls:
  allow: [hooks.example.com]
mail:
  allow_domains: [example.com]
pii:
  default_action: refuse
  rules:
    - field: params.to
      detectors: [email]
      action: allow
    - field: params.body
      action: redact
"""

GOTO_EVIL = {"op": "goto", "url": "https://evil.example.net/login"}


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "default.yaml").write_text(POLICY)
    return directory


@pytest.fixture
def scheduler_settings(tmp_path: Path, policy_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", policy_dir=policy_dir, policy_reload_interval_s=0.05
    )


async def refused(call: Awaitable[object]) -> CpaError:
    with pytest.raises(CpaError) as caught:
        await call
    error = caught.value
    assert (error.code, error.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "POLICY_VIOLATION",
    ), error.message
    # The field is named in ErrorInfo and as a BadRequest violation.
    assert [v.field for v in error.field_violations] == [error.metadata["field"]]
    return error


async def test_schedule_job_refused_naming_todo_rule_and_field(client: SchedulerClient) -> None:
    spec = todos_spec(todo("ok", "noop"), todo("login", "playwright", params=GOTO_EVIL))
    error = await refused(client.schedule_job(spec))
    assert error.metadata["field"] == "spec.todos.todos[1].params.url"
    assert error.metadata["rule"] == "urls.allow"
    assert error.metadata["todo"] == "login"
    assert error.metadata["todo_field"] == "params.url"
    assert "evil.example.net" in error.message
    assert [job async for job in client.list_jobs()] == []  # nothing was created

    allowed = todos_spec(
        todo("login", "playwright", params={"op": "goto", "url": "https://portal.example.com"})
    )
    assert (await client.schedule_job(allowed)).created


@pytest.mark.parametrize(
    ("spec", "field", "rule"),
    [
        (
            todos_spec(todo("x", "shell.exec")),
            "spec.todos.todos[0].action",
            "actions.deny",
        ),
        (
            todos_spec(todo("m", "send_mail", params={"to": ["a@example.com", "b@gmail.com"]})),
            "spec.todos.todos[0].params.to[1]",
            "mail.allow_domains",
        ),
        (
            todos_spec(todo("e", "echo", params={"note": "IBAN DE89370400440532013000"})),
            "spec.todos.todos[0].params.note",
            "pii.default_action",
        ),
        (
            todos_spec(todo("e", "noop"), callback_url="https://evil.example.net/hook"),
            "spec.callback_url",
            "callback_urls.allow",
        ),
        (
            # Text with PII is refused before it is routed.
            job_pb2.JobSpec(text="forward invoice 42 to DE89 3704 0044 0532 0130 00"),
            "spec.text",
            "pii.default_action",
        ),
    ],
)
async def test_each_rule_refuses_at_submission(
    client: SchedulerClient, spec: job_pb2.JobSpec, field: str, rule: str
) -> None:
    error = await refused(client.schedule_job(spec))
    assert (error.metadata["field"], error.metadata["rule"]) == (field, rule)
    assert "DE89" not in error.message  # a PII value is never echoed


async def test_allowed_rules_let_the_job_run(client: SchedulerClient, agents: Agents) -> None:
    await agents.start("a1")
    spec = todos_spec(
        # A mistyped IBAN is no PII; the recipients' addresses are allowed in params.to.
        todo("e", "echo", params={"note": "DE88370400440532013000"}),
        todo("m", "noop", params={"to": ["a@example.com"]}),
        callback_url="https://hooks.example.com/cpa",
    )
    job = (await client.schedule_job(spec)).job
    assert (await finished(client, job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED


async def test_batch_with_one_refused_request_creates_nothing(client: SchedulerClient) -> None:
    ok = todos_spec(todo("a", "noop"))
    bad = todos_spec(todo("a", "playwright", params=GOTO_EVIL))
    error = await refused(client.batch_schedule_jobs([ok, bad]))
    assert error.metadata["field"] == "requests[1].spec.todos.todos[0].params.url"
    assert [job async for job in client.list_jobs()] == []


async def test_lam_request_gets_refuse_with_reason_and_field(client: SchedulerClient) -> None:
    message = lam.LamMessage(
        id="m-1",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        request=lam.RequestBody(todos=[todo("login", "playwright", params=GOTO_EVIL)]),
    )
    reply = await client.send_message(message)
    assert reply.performative == lam.PERFORMATIVE_REFUSE
    assert reply.refuse.reason == error_pb2.ERROR_REASON_POLICY_VIOLATION
    assert reply.refuse.field == "request.todos[0].params.url"
    assert "urls.allow" in reply.refuse.message
    assert "'login'" in reply.refuse.message

    reply_to = lam.LamMessage(
        id="m-2",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        request=lam.RequestBody(todos=[todo("a", "noop")]),
        expected=lam.Expectation(reply_to="https://evil.example.net/lam"),
    )
    reply = await client.send_message(reply_to)
    assert reply.performative == lam.PERFORMATIVE_REFUSE
    assert reply.refuse.field == "expected.reply_to"

    text = lam.LamMessage(
        id="m-3",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        request=lam.RequestBody(text="my card is 4111 1111 1111 1111"),
    )
    reply = await client.send_message(text)
    assert reply.performative == lam.PERFORMATIVE_REFUSE
    assert reply.refuse.field == "request.text"
    assert "4111" not in reply.refuse.message


async def tighten(scheduler: Scheduler, policy_dir: Path, text: str) -> None:
    """Rewrite the default tenant's policy and wait until the server reloaded it."""
    before = scheduler.server.policies.get("default")
    (policy_dir / "default.yaml").write_text(text)
    await eventually(
        lambda: scheduler.server.policies.get("default") is not before,
        what="the server to reload the changed policy",
    )


async def test_dispatch_refuses_a_task_the_policy_forbids_since_submission(
    client: SchedulerClient, agents: Agents, scheduler: Scheduler, policy_dir: Path
) -> None:
    # No agent yet: the task waits QUEUED while the policy changes under it.
    job = (await client.schedule_job(todos_spec(todo("e", "echo"), todo("n", "noop")))).job
    await tighten(scheduler, policy_dir, POLICY.replace("[shell.exec]", "[shell.exec, echo]"))
    await agents.start("a1")
    done = await finished(client, job.job_id)
    assert done.state == job_pb2.JOB_STATE_FAILED
    task = next(t for t in done.tasks if t.todo.id == "e")
    assert task.state == job_pb2.TASK_STATE_FAILED
    assert task.error.reason == error_pb2.ERROR_REASON_POLICY_VIOLATION
    assert not task.error.retryable
    assert "actions.deny" in task.error.message
    assert len(task.attempts) == 0  # it never ran
    # The task that the policy allows ran.
    assert next(t for t in done.tasks if t.todo.id == "n").state == job_pb2.TASK_STATE_SUCCEEDED


async def test_retry_refused_when_the_policy_now_forbids_a_task(
    client: SchedulerClient, agents: Agents, scheduler: Scheduler, policy_dir: Path
) -> None:
    await agents.start("a1")
    failing = todo("f", "fail", params={"code": "BOOM", "message": "no", "retryable": False})
    job = (await client.schedule_job(todos_spec(failing))).job
    assert (await finished(client, job.job_id)).state == job_pb2.JOB_STATE_FAILED
    await tighten(scheduler, policy_dir, POLICY.replace("[shell.exec]", "[fail]"))

    error = await refused(client.retry_job(job.job_id))
    assert error.metadata["field"] == "job_id"
    assert (error.metadata["rule"], error.metadata["todo"]) == ("actions.deny", "f")
    assert (await client.get_job(job.job_id)).state == job_pb2.JOB_STATE_FAILED
    # RetryJobs passes over it, saying why.
    response = await client.retry_jobs()
    assert list(response.job_ids) == []
    assert [(s.job_id, s.reason) for s in response.skipped_jobs] == [
        (job.job_id, error_pb2.ERROR_REASON_POLICY_VIOLATION)
    ]


async def test_redacted_values_are_hidden_in_views_and_reach_the_agent(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("a1")
    body = "pay 12 EUR to DE89 3704 0044 0532 0130 00, thanks"
    spec = todos_spec(todo("e", "echo", params={"to": ["a@example.com"], "body": body}))
    created = (await client.schedule_job(spec, view=job_pb2.JOB_VIEW_FULL)).job
    shown = created.tasks[0].todo.params["body"]
    assert shown == "pay 12 EUR to [REDACTED:IBAN], thanks"
    # Allowed there: shown.
    assert json_format.MessageToDict(created.tasks[0].todo.params)["to"] == ["a@example.com"]
    done = await finished(client, created.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert done.tasks[0].todo.params["body"] == shown  # GetJob (FULL by default) hides it too
    # The agent received the real value: echo returned it as its output (outputs are the
    # agent's, not redacted: docs/POLICY.md).
    assert done.tasks[0].outputs["body"] == body
    listed = [job async for job in client.list_jobs(view=job_pb2.JOB_VIEW_FULL)]
    assert [j.tasks[0].todo.params["body"] for j in listed] == [shown]
