"""Task sessions over real sockets (embedded mode): affinity, the end of a session, recovery
from a lost agent, cancel; and bad session keys refused (see domain/sessions.py)."""

from __future__ import annotations

import grpc
import pytest

from cpa_client import CpaError, SchedulerClient

from .conftest import Agents, todo, todos_spec
from .session_probe import (
    Recorder,
    affinity_and_end,
    cancel_closes,
    restart_on_loss,
    restart_when_gone_between_steps,
)


async def test_a_sessions_tasks_run_on_one_agent_one_at_a_time_and_it_hears_the_end(
    client: SchedulerClient, agents: Agents
) -> None:
    await affinity_and_end(client, agents, Recorder())


async def test_a_session_whose_agent_dies_runs_again_from_its_first_task_elsewhere(
    client: SchedulerClient, agents: Agents
) -> None:
    await restart_on_loss(client, agents, Recorder())


async def test_a_session_whose_agent_left_between_steps_restarts_after_a_lease(
    client: SchedulerClient, agents: Agents
) -> None:
    await restart_when_gone_between_steps(client, agents, Recorder())


async def test_a_job_cancelled_mid_session_closes_the_session_on_its_agent(
    client: SchedulerClient, agents: Agents
) -> None:
    await cancel_closes(client, agents, Recorder())


@pytest.mark.parametrize(
    "session",
    ["no spaces", "-leading", "x" * 64, "line\n", "tab\t", "ü", "a/b", "' OR 1=1 --", "\x00"],
)
async def test_a_bad_session_key_is_refused_naming_the_field(
    client: SchedulerClient, session: str
) -> None:
    with pytest.raises(CpaError) as caught:
        await client.schedule_job(todos_spec(todo("a", "echo", session=session)))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_FIELD"
    assert [v.field for v in caught.value.field_violations] == ["spec.todos.todos[0].session"]
