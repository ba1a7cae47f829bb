"""Desktop actions (open_app, uia) on Linux: no agent offers them, so their tasks wait and say
why, and fail naming the action once their schedule-to-start timeout passes. Nothing fakes them.
"""

from __future__ import annotations

import sys

import pytest
from google.protobuf import duration_pb2

from cpa.common.v1 import error_pb2
from cpa.scheduler.v1 import job_pb2
from cpa_agent import entry_point_registry
from cpa_client import SchedulerClient

from .conftest import Agents, finished, first_event, task_reached, todo, todos_spec

pytestmark = pytest.mark.skipif(
    sys.platform.startswith("win"), reason="on Windows an agent may offer desktop actions"
)


async def test_a_uia_task_waits_saying_no_agent_offers_uia(
    client: SchedulerClient, agents: Agents
) -> None:
    # The agent `cpa agent` would run: every installed entry point.
    await agents.start("linux-agent", registry=entry_point_registry())
    spec = todos_spec(
        todo("warm_up", "noop"),
        todo("press_ok", "uia", params={"automation_id": "OkButton"}),
    )

    job_id = (await client.schedule_job(spec)).job.job_id
    await first_event(client, job_id, task_reached("warm_up", job_pb2.TASK_STATE_SUCCEEDED))
    job = await client.get_job(job_id)

    [agent] = [agent async for agent in client.list_agents()]
    assert not {"uia", "open_app"} & set(agent.capabilities.actions)
    tasks = {task.todo.id: task for task in job.tasks}
    assert job.state == job_pb2.JOB_STATE_RUNNING
    assert tasks["press_ok"].state == job_pb2.TASK_STATE_QUEUED
    assert tasks["press_ok"].waiting_reason == "no connected agent offers action 'uia'"
    await client.cancel_job(job_id)


async def test_a_uia_task_fails_at_its_schedule_to_start_timeout_naming_uia(
    client: SchedulerClient, agents: Agents
) -> None:
    await agents.start("linux-agent", registry=entry_point_registry())
    timeout = duration_pb2.Duration()
    timeout.FromMilliseconds(500)
    spec = todos_spec(todo("start_erp", "open_app", schedule_to_start_timeout=timeout))

    job = await finished(client, (await client.schedule_job(spec)).job.job_id)

    assert job.state == job_pb2.JOB_STATE_FAILED
    [task] = job.tasks
    assert task.error.reason == error_pb2.ERROR_REASON_SCHEDULE_TO_START_TIMEOUT
    assert "no connected agent offers action 'open_app'" in task.error.message
    assert list(task.attempts) == []
