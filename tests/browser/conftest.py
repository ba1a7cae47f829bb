"""Fixtures of the browser executor tests: real Chromium (Debian's), the loopback portal, and a
way to run one task the way the agent's runner would (a context with MemoryArtifacts and
StaticSecrets). Under CI=true a missing Chromium fails these tests; elsewhere they are skipped."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pytest

from cpa.common.v1 import todo_pb2
from cpa_agent.executors.base import ExecutionContext, Executor, ExecutorError
from cpa_agent.executors.browser import (
    BrowserPool,
    BrowserSettings,
    PlaywrightExecutor,
    UiActionExecutor,
    browser_executors,
    chromium_missing,
)
from cpa_agent.executors.params import INVALID_PARAMS, InvalidParams
from cpa_agent.executors.testing import MemoryArtifacts, StaticSecrets, make_context
from cpa_agent.runner import action_name
from tests.fixtures.browser_portal import PASSWORD, Portal, running_portal

JOB = "job-1"
PASSWORD_REF = "env:PORTAL_PASSWORD"
CREDENTIALS = {"portal_password": PASSWORD_REF}


def chromium_settings(**overrides: Any) -> BrowserSettings:
    """Settings for the machine's Chromium; skips (fails under CI=true) when it is missing."""
    settings = BrowserSettings(**overrides)
    reason = chromium_missing(settings)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return settings


@pytest.fixture
def portal() -> Iterator[Portal]:
    with running_portal() as running:
        yield running


@dataclass
class Outcome:
    """What one task left behind besides its outputs."""

    artifacts: MemoryArtifacts
    progress: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return sorted(self.artifacts.saved)

    def data(self, name: str) -> bytes:
        return self.artifacts.saved[name][1]


@dataclass
class Browser:
    """The four browser executors of one agent (one pool) and a way to run tasks on them."""

    executors: dict[str, PlaywrightExecutor | UiActionExecutor]

    @property
    def pool(self) -> BrowserPool:
        return self.executors["playwright"].pool

    def context(
        self,
        *,
        action: str = "playwright",
        params: Mapping[str, Any] | None = None,
        todo: todo_pb2.ToDo | None = None,
        session: str = "browser",
        job_id: str = JOB,
        outcome: Outcome | None = None,
        deadline: datetime | None = None,
        secrets: Mapping[str, str] | None = None,
        attempt: int = 1,
    ) -> tuple[Executor, ExecutionContext, Outcome]:
        """The executor of the task and its context, as the agent's runner builds it (params
        validated with the executor's params_model: ExecutorError INVALID_PARAMS otherwise)."""
        outcome = outcome if outcome is not None else Outcome(MemoryArtifacts())
        if todo is None:
            todo = todo_pb2.ToDo(id="t1", action=todo_pb2.ACTION_TYPE_PLAYWRIGHT)
            todo.params.update(dict(params or {}))
        executor = self.executors[action_name(todo)]

        async def progress(percent: float | None, message: str) -> None:
            outcome.progress.append(message)

        try:
            ctx = make_context(
                executor,
                todo=todo,
                attempt=attempt,
                credential_refs=CREDENTIALS,
                secrets=StaticSecrets(secrets if secrets is not None else {PASSWORD_REF: PASSWORD}),
                artifacts=outcome.artifacts,
                session=session,
                deadline=deadline,
                on_progress=progress,
            )
        except InvalidParams as invalid:
            # What the runner reports for it (AttemptRunner.run).
            raise ExecutorError(
                INVALID_PARAMS, str(invalid), retryable=False, details=invalid.details()
            ) from None
        return executor, replace(ctx, job_id=job_id), outcome

    async def run(self, **kwargs: Any) -> tuple[dict[str, Any], Outcome]:
        """Runs one task (see `context` for the arguments); returns outputs and evidence."""
        executor, ctx, outcome = self.context(**kwargs)
        return await executor.run(ctx), outcome


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executors = browser_executors(chromium_settings(op_timeout_s=5.0))
    kit = Browser({executor.action: executor for executor in executors})
    try:
        yield kit
    finally:
        await executors[0].aclose()


def login_steps(
    portal: Portal, *, secret: str = "portal_password", verify_timeout_s: float = 10.0
) -> dict[str, Any]:
    """The login of the portal as playwright steps, ending with a check that it worked (which
    waits `verify_timeout_s` for the page after the login: a wrong password's test waits it
    out)."""
    return {
        "steps": [
            {"op": "goto", "url": portal.url("/login")},
            {"op": "fill", "selector": {"css": "#user"}, "value": "alice"},
            {"op": "fill", "selector": {"css": "#password"}, "secret": secret},
            {"op": "click", "selector": {"role": "button", "name": "Sign in"}},
            {
                "op": "verify",
                "selector": {"css": "#welcome"},
                "text": "Invoices of alice",
                "timeout_s": verify_timeout_s,
            },
        ]
    }
