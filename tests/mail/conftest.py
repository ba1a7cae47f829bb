"""Fixtures for the mail executor: the loopback Graph and token endpoint over real HTTPS, mail
settings pointing at it, and the real executors (real MSAL, real aiohttp)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cpa.common.v1 import todo_pb2
from cpa_agent.executors.base import ExecutionContext, Executor
from cpa_agent.executors.mail import executors
from cpa_agent.executors.testing import MemoryArtifacts
from cpa_cli.demo.graph_server import LoopbackGraph
from tests.fixtures.mail import ACCOUNTING, MAILBOX, settings_for

__all__ = ["ACCOUNTING", "MAILBOX", "settings_for"]

MakeMail = Callable[..., dict[str, Executor]]


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[LoopbackGraph]:
    async with LoopbackGraph(tmp_path / "tls", mailboxes=(MAILBOX, ACCOUNTING)) as server:
        yield server


@pytest.fixture
async def make_mail(graph: LoopbackGraph) -> AsyncIterator[MakeMail]:
    """Builds the mail executors (by action) with settings overrides; closes them after."""
    made: list[Executor] = []

    def make(**overrides: Any) -> dict[str, Executor]:
        built = executors(settings_for(graph, **overrides))
        made.extend(built)
        return {executor.action: executor for executor in built}

    yield make
    for executor in made:
        await executor.aclose()  # type: ignore[attr-defined]


@pytest.fixture
def mail(make_mail: MakeMail) -> dict[str, Executor]:
    return make_mail()


def context(
    action: str,
    params: Mapping[str, Any],
    *,
    artifacts: MemoryArtifacts | None = None,
    artifact_inputs: Mapping[str, str] | None = None,
    deadline: datetime | None = None,
) -> ExecutionContext:
    """An attempt's context; `artifact_inputs` binds input names to upstream artifact names
    (ToDo.inputs.<name>.artifact_name), as the scheduler sends them."""
    todo = todo_pb2.ToDo(id="mail", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action=action)
    if action == "send_mail":
        todo = todo_pb2.ToDo(id="mail", action=todo_pb2.ACTION_TYPE_SEND_MAIL)
    for name, artifact in (artifact_inputs or {}).items():
        todo.inputs[name].task_id = "download"
        todo.inputs[name].artifact_name = artifact
    todo.params.update(dict(params))
    return ExecutionContext(
        job_id="job-1",
        task_id="mail",
        attempt=1,
        todo=todo,
        params=dict(params),
        inputs={},
        deadline=deadline,
        artifacts=artifacts or MemoryArtifacts(),
    )
