"""Credential references travel from the caller to the agent; secret values never leave it.

A real scheduler (SQLite) and a real agent over loopback gRPC: the agent resolves one secret from
its environment and one from a file in its secrets directory, and its executor tries to leak
both everywhere an attempt reports. Afterwards neither value is in any event, any view of the
job, any log line, or any byte of the store's files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from cpa.lam.v1 import lam_message_pb2 as lam
from cpa.scheduler.v1 import job_pb2
from cpa_agent import ExecutionContext, ExecutorError, ExecutorRegistry, builtin_registry
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings

from .conftest import Agents, collect_events, finished, todo, todos_spec

PORTAL_PASSWORD = "Portal-Pa55-e2e-7f3a"
API_KEY = "api-key-from-file-91c4"


class _Login:
    """Resolves every credential it was given and tries to leak the values: in progress, in
    outputs (values and keys), and, when params.fail is set, in an error's message and details."""

    action = "login"

    def __init__(self) -> None:
        self.seen_refs: list[dict[str, str]] = []

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        self.seen_refs.append(dict(ctx.credential_refs))
        values = {purpose: await ctx.secret(purpose) for purpose in sorted(ctx.credential_refs)}
        joined = " ".join(values.values())
        await ctx.progress(50.0, f"typing {joined}")
        if ctx.params.get("fail"):
            raise ExecutorError(
                "LOGIN_FAILED", f"portal refused {joined}", retryable=False, details=values
            )
        return {"typed": values, joined: "as a key"}


def _registry(login: _Login) -> ExecutorRegistry:
    registry = builtin_registry()
    registry.register(login)
    return registry


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "agent-secrets"
    directory.mkdir()
    (directory / "api.key").write_text(API_KEY + "\n", encoding="utf-8")
    monkeypatch.setenv("E2E_PORTAL_PASSWORD", PORTAL_PASSWORD)
    return directory


def _store_bytes(settings: Settings) -> bytes:
    """Every byte of the store's files (the database, its WAL and anything beside them)."""
    return b"".join(
        path.read_bytes() for path in sorted(settings.data_dir.rglob("*")) if path.is_file()
    )


def _leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        return [value for value in (PORTAL_PASSWORD, API_KEY) if value.encode() in text]
    return [value for value in (PORTAL_PASSWORD, API_KEY) if value in text]


@pytest.mark.parametrize("fail", [False, True])
async def test_secrets_resolve_on_the_agent_and_appear_nowhere_else(
    client: SchedulerClient,
    agents: Agents,
    scheduler_settings: Settings,
    secrets_dir: Path,
    caplog: pytest.LogCaptureFixture,
    fail: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    login = _Login()
    await agents.start("agent-1", registry=_registry(login), secrets_dir=secrets_dir)
    refs = {"portal": "env:E2E_PORTAL_PASSWORD", "api": "api.key"}

    response = await client.schedule_job(
        todos_spec(todo("login", "login", params={"fail": fail}, credential_refs=refs))
    )
    job_id = response.job.job_id
    events = await collect_events(client, job_id)
    job = await client.get_job(job_id, view=job_pb2.JOB_VIEW_FULL)

    assert login.seen_refs == [refs]
    task = job.tasks[0]
    assert dict(task.todo.credential_refs) == refs  # references are visible, values are not
    progress = [e.task_progress.message for e in events if e.HasField("task_progress")]
    assert "typing *** ***" in progress
    if fail:
        assert job.state == job_pb2.JOB_STATE_FAILED
        assert task.attempts[-1].error.message == "portal refused *** ***"
    else:
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        outputs = json_format.MessageToDict(task.outputs)
        assert outputs["typed"] == {"api": "***", "portal": "***"}
        assert outputs["*** ***"] == "as a key"
    assert _leaks(str(events)) == []
    assert _leaks(str(job)) == []
    assert _leaks(caplog.text) == []
    assert _leaks(_store_bytes(scheduler_settings)) == []


async def test_a_lam_requests_credentials_reach_every_task_the_todo_winning(
    client: SchedulerClient, agents: Agents, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2E_FROM_MESSAGE", "another-value")
    login = _Login()
    await agents.start("agent-1", registry=_registry(login), secrets_dir=secrets_dir)
    request = lam.LamMessage(
        id="m-creds",
        sender="agent://ops-bot",
        performative=lam.PERFORMATIVE_REQUEST,
        security=lam.Security(credential_refs={"portal": "env:E2E_FROM_MESSAGE", "api": "api.key"}),
        request=lam.RequestBody(
            todos=[
                todo("first", "login", credential_refs={"portal": "env:E2E_PORTAL_PASSWORD"}),
                todo("second", "login", depends_on=["first"]),
            ]
        ),
    )

    reply = await client.send_message(request)
    job = await finished(client, reply.agree.job_id)

    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
    assert login.seen_refs == [
        {"portal": "env:E2E_PORTAL_PASSWORD", "api": "api.key"},
        {"portal": "env:E2E_FROM_MESSAGE", "api": "api.key"},
    ]


async def test_a_lam_requests_bad_credential_reference_is_refused_naming_it(
    client: SchedulerClient,
) -> None:
    reply = await client.send_message(
        lam.LamMessage(
            id="m-bad-creds",
            sender="agent://ops-bot",
            performative=lam.PERFORMATIVE_REQUEST,
            security=lam.Security(credential_refs={"portal": "x" * 1025}),
            request=lam.RequestBody(todos=[todo("a", "noop")]),
        )
    )

    assert reply.performative == lam.PERFORMATIVE_REFUSE
    assert reply.refuse.field == "security.credential_refs[portal]"
    assert "1025 bytes; at most 1024" in reply.refuse.message


async def test_a_reference_the_agent_cannot_resolve_fails_the_task_for_good(
    client: SchedulerClient, agents: Agents, secrets_dir: Path
) -> None:
    await agents.start("agent-1", registry=_registry(_Login()), secrets_dir=secrets_dir)

    response = await client.schedule_job(
        todos_spec(todo("login", "login", credential_refs={"portal": "env:E2E_NOT_SET"}))
    )
    job = await finished(client, response.job.job_id)

    assert job.state == job_pb2.JOB_STATE_FAILED
    error = job.tasks[0].attempts[-1].error
    assert error.code == "CREDENTIAL_NOT_FOUND"
    assert len(job.tasks[0].attempts) == 1  # not retried
    assert "'env:E2E_NOT_SET'" in error.message
